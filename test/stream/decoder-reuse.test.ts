// StreamDecoder with reusePayloadBuffers (the migration loader's setting): large sections are gathered
// chunk by chunk into two reused buffers. Through any chunking it delivers exactly what the plain decoder
// delivers (each payload checked before the next push, as the option requires), and it refuses damage
// and truncation inside a gathered section the same way.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { concat } from '../../src/stream/bytes.ts';
import { type DecodedSection, StreamDecoder } from '../../src/stream/decoder.ts';
import { StreamEncoder } from '../../src/stream/encoder.ts';
import { StreamError } from '../../src/stream/errors.ts';
import { pageOf } from './support.ts';

interface Want {
  type: DecodedSection['type'];
  payload: Uint8Array;
}

/** A stream of one opaque entry: START, PARTs of the given sizes (some above the 64 KiB gather size), END. */
function build(sizes: readonly number[]): { bytes: Uint8Array; want: Want[] } {
  const e = new StreamEncoder();
  const h = { sectionId: 0, idstr: 'blob', instanceId: 0, versionId: 1 };
  const records: Uint8Array[] = [concat(e.header())];
  const want: Want[] = [];
  const add = (type: Want['type'], payload: Uint8Array) => {
    records.push(
      concat(type === 'start' ? e.start(h, [payload]) : type === 'end' ? e.end(0, [payload]) : e.part(0, [payload])),
    );
    want.push({ type, payload });
  };
  add('start', Uint8Array.of(1));
  sizes.forEach((n, i) => {
    const p = new Uint8Array(n);
    for (let at = 0; at < n; at += 4096) p.set(pageOf(i * 1000 + at).subarray(0, Math.min(4096, n - at)), at);
    add('part', p);
  });
  add('end', Uint8Array.of(2));
  records.push(concat(e.eof()));
  return { bytes: concat(records), want };
}

/** Pushes fresh copies of the chunks, checking each delivered payload at once; returns the error, if any. */
function feed(
  bytes: Uint8Array,
  chunkSizes: readonly number[],
  reuse: boolean,
  check: (s: DecodedSection, i: number) => void,
): { count: number; error: unknown } {
  const d = new StreamDecoder({ reusePayloadBuffers: reuse });
  let count = 0;
  let at = 0;
  let k = 0;
  try {
    while (at < bytes.byteLength) {
      const n = Math.max(1, chunkSizes[k++ % chunkSizes.length]!);
      for (const s of d.push(bytes.slice(at, at + n))) check(s, count++);
      at += n;
    }
    d.finish();
  } catch (error) {
    return { count, error };
  }
  return { count, error: null };
}

const sizesArb = fc.array(fc.oneof(fc.integer({ min: 0, max: 3000 }), fc.integer({ min: 65_000, max: 300_000 })), {
  minLength: 1,
  maxLength: 6,
});
const chunksArb = fc.array(fc.oneof(fc.integer({ min: 1, max: 5000 }), fc.integer({ min: 5000, max: 400_000 })), {
  minLength: 1,
  maxLength: 5,
});

describe('StreamDecoder, reusePayloadBuffers', () => {
  test('property: through any chunking, every section arrives intact, as the plain decoder delivers it', () => {
    fc.assert(
      fc.property(sizesArb, chunksArb, (sizes, chunks) => {
        const { bytes, want } = build(sizes);
        for (const reuse of [true, false]) {
          const r = feed(bytes, chunks, reuse, (s, i) => {
            assert.equal(s.seq, i);
            assert.equal(s.type, want[i]!.type);
            assert.deepEqual(s.payload, want[i]!.payload);
            assert.deepEqual(bytes.subarray(s.payloadOffset, s.payloadOffset + s.payload.byteLength), s.payload);
          });
          assert.equal(r.error, null);
          assert.equal(r.count, want.length);
        }
      }),
      { numRuns: 60 },
    );
  });

  test('socket-sized chunks (64 KiB) through 4 MiB sections', () => {
    const { bytes, want } = build([4 << 20, 4 << 20, 100, 4 << 20]);
    const r = feed(bytes, [65_536], true, (s, i) => assert.deepEqual(s.payload, want[i]!.payload));
    assert.equal(r.error, null);
    assert.equal(r.count, want.length);
  });

  test('property: a flipped byte inside a gathered section is refused as a checksum error of that section', () => {
    fc.assert(
      fc.property(fc.nat(), fc.integer({ min: 1, max: 255 }), chunksArb, (where, mask, chunks) => {
        const { bytes, want } = build([1000, 200_000, 1000]);
        // The 200 000-byte PART is the third section; flip a byte of its payload.
        const starts: number[] = [];
        feed(bytes, [bytes.byteLength], false, (s) => starts.push(s.payloadOffset));
        const at = starts[2]! + (where % 200_000);
        const bad = bytes.slice();
        bad[at]! ^= mask;
        const seen: number[] = [];
        const r = feed(bad, chunks, true, (s, i) => {
          seen.push(s.seq);
          assert.deepEqual(s.payload, want[i]!.payload, 'nothing damaged is delivered');
        });
        assert.deepEqual(seen, [0, 1], 'the sections before the damage, then nothing');
        assert.ok(r.error instanceof StreamError && r.error.code === 'checksum', `${r.error}`);
        assert.equal(r.error.section?.seq, 2);
      }),
      { numRuns: 50 },
    );
  });

  test('a stream cut inside a gathered section fails at finish() as truncated, saying where', () => {
    const { bytes } = build([1000, 200_000]);
    const starts: number[] = [];
    feed(bytes, [bytes.byteLength], false, (s) => starts.push(s.offset));
    const cut = starts[2]! + 150_000;
    const r = feed(bytes.subarray(0, cut), [65_536], true, () => {});
    assert.equal(r.count, 2);
    assert.ok(r.error instanceof StreamError && r.error.code === 'truncated', `${r.error}`);
    assert.match(r.error.message, new RegExp(`record that starts at byte ${starts[2]} \\(150000 bytes of it\\)`));
  });
});
