// StreamDecoder with reusePayloadBuffers (the migration loader's setting): large sections are gathered
// chunk by chunk into two reused buffers. Through any chunking it delivers exactly what the plain decoder
// delivers (each payload checked before the next push, as the option requires), and it refuses damage
// and truncation inside a gathered section the same way. The same holds when the decoder is a reader's
// sink (readTarget/received: bytes land in the buffers it names), through any read sizes. A gathered
// section's CRC is computed piece by piece as it arrives: damage anywhere up to its stored CRC is caught.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { concat } from '../../src/stream/bytes.ts';
import { type DecodedSection, StreamDecoder } from '../../src/stream/decoder.ts';
import { StreamEncoder } from '../../src/stream/encoder.ts';
import { StreamError } from '../../src/stream/errors.ts';
import { pageOf } from './support.ts';

/** A section's trailer: footer type, section id, sequence number, CRC-32C. */
const TRAILER = 1 + 4 + 4 + 4;

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

/**
 * The decoder as a reader's sink: each read fills a prefix of readTarget(), `readSizes` bytes at most.
 * The whole target is first scribbled over, as a read into a reused buffer may leave anything there, so
 * a decoder that kept unconsumed bytes in a buffer it names again would deliver damage.
 */
function feedSink(
  bytes: Uint8Array,
  readSizes: readonly number[],
  check: (s: DecodedSection, i: number) => void,
): { count: number; error: unknown; decoder: StreamDecoder } {
  const d = new StreamDecoder({ reusePayloadBuffers: true });
  let count = 0;
  let at = 0;
  let k = 0;
  try {
    while (at < bytes.byteLength) {
      const target = d.readTarget();
      target.fill(0xa5);
      const n = Math.min(target.byteLength, Math.max(1, readSizes[k++ % readSizes.length]!), bytes.byteLength - at);
      target.set(bytes.subarray(at, at + n));
      at += n;
      for (const s of d.received(n)) check(s, count++);
    }
    d.finish();
  } catch (error) {
    return { count, error, decoder: d };
  }
  return { count, error: null, decoder: d };
}

/** Checks each delivered section against the one built: order, kind, payload, and where it sat. */
function intact(bytes: Uint8Array, want: Want[]): (s: DecodedSection, i: number) => void {
  return (s, i) => {
    assert.equal(s.seq, i);
    assert.equal(s.type, want[i]!.type);
    assert.deepEqual(s.payload, want[i]!.payload);
    assert.deepEqual(bytes.subarray(s.payloadOffset, s.payloadOffset + s.payload.byteLength), s.payload);
  };
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
          const r = feed(bytes, chunks, reuse, intact(bytes, want));
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
        // The 200 000-byte PART is the third section; flip a byte of its payload or its trailer (footer
        // and stored CRC: the CRC computed as the section arrives stops short of the stored one).
        const starts: number[] = [];
        feed(bytes, [bytes.byteLength], false, (s) => starts.push(s.payloadOffset));
        const at = starts[2]! + (where % (200_000 + TRAILER));
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

  test('property: as a sink, through any read sizes, every section arrives intact, as push() delivers it', () => {
    fc.assert(
      fc.property(sizesArb, chunksArb, (sizes, reads) => {
        const { bytes, want } = build(sizes);
        const r = feedSink(bytes, reads, intact(bytes, want));
        assert.equal(r.error, null);
        assert.equal(r.count, want.length);
      }),
      { numRuns: 60 },
    );
  });

  test('as a sink, a large section is read straight into its gather buffer: the reads that fill it are its own', () => {
    const { bytes, want } = build([4 << 20, 100, 4 << 20]);
    const targets: number[] = [];
    const d = new StreamDecoder({ reusePayloadBuffers: true });
    let at = 0;
    let count = 0;
    while (at < bytes.byteLength) {
      const t = d.readTarget();
      targets.push(t.byteLength);
      const n = Math.min(t.byteLength, bytes.byteLength - at);
      t.set(bytes.subarray(at, at + n));
      at += n;
      for (const s of d.received(n)) assert.deepEqual(s.payload, want[count++]!.payload);
    }
    d.finish();
    assert.equal(count, want.length);
    // Each 4 MiB PART: one spare read (64 KiB: its head), then one read of exactly the rest of it.
    assert.ok(targets.filter((n) => n > 4_000_000).length === 2, `targets: ${targets.join(' ')}`);
    assert.ok(targets.length <= 8, `a handful of reads for 8 MiB: ${targets.length}`);
  });

  test('property: as a sink, a flipped byte inside a gathered section is refused as push() refuses it', () => {
    fc.assert(
      fc.property(fc.nat(), fc.integer({ min: 1, max: 255 }), chunksArb, (where, mask, reads) => {
        const { bytes, want } = build([1000, 200_000, 1000]);
        const starts: number[] = [];
        feed(bytes, [bytes.byteLength], false, (s) => starts.push(s.payloadOffset));
        const bad = bytes.slice();
        bad[starts[2]! + (where % (200_000 + TRAILER))]! ^= mask;
        const pushed = feed(bad, [bad.byteLength], false, () => {});
        const seen: number[] = [];
        const r = feedSink(bad, reads, (s, i) => {
          seen.push(s.seq);
          assert.deepEqual(s.payload, want[i]!.payload, 'nothing damaged is delivered');
        });
        assert.deepEqual(seen, [0, 1]);
        assert.ok(r.error instanceof StreamError && pushed.error instanceof StreamError);
        assert.equal(r.error.code, 'checksum');
        assert.equal(r.error.message, pushed.error.message);
        assert.equal(r.error.offset, pushed.error.offset);
      }),
      { numRuns: 50 },
    );
  });

  test('as a sink: a cut inside a gathered section is truncated at finish(); bytes after EOF are kept', () => {
    const { bytes } = build([1000, 200_000]);
    const starts: number[] = [];
    feed(bytes, [bytes.byteLength], false, (s) => starts.push(s.offset));
    const cut = feedSink(bytes.subarray(0, starts[2]! + 150_000), [65_536], () => {});
    assert.equal(cut.count, 2);
    assert.ok(cut.error instanceof StreamError && cut.error.code === 'truncated', `${cut.error}`);
    assert.match(cut.error.message, new RegExp(`record that starts at byte ${starts[2]} \\(150000 bytes of it\\)`));
    const after = Uint8Array.of(9, 8, 7, 6, 5);
    const whole = feedSink(concat([bytes, after]), [70_000, 3], () => {});
    assert.equal(whole.error, null);
    assert.ok(whole.decoder.ended);
    assert.deepEqual(whole.decoder.takeRemainder(), after);
  });

  test('the sink needs reusePayloadBuffers, and a read it did not ask for is a programming error', () => {
    assert.throws(() => new StreamDecoder().readTarget(), /reusePayloadBuffers/);
    assert.throws(() => new StreamDecoder({ reusePayloadBuffers: true }).received(1), /without a readTarget/);
  });
});
