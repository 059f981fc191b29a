// Hostile streams: every reader of migration-stream bytes (the section decoder, the RAM and VFIO payload
// parsers, the return path, the analyzer) either decodes or throws its typed error — StreamError for the
// stream, VfioError for the return path — never a TypeError or RangeError from inside, never a hang.
// Inputs: random bytes, valid streams mutated (bytes flipped, cut, spliced, lengths rewritten), and
// sections re-encoded with a valid CRC around a mutated payload, so the payload parsers see hostile bytes
// that passed the checksum. Beyond typed errors: valid streams and return-path messages round-trip
// (encode→decode gives the sections or messages back, decode→encode gives the bytes back, for mutated
// streams too when they decode whole), and a return-path decoder that refused a chunk decodes the next
// valid message as a fresh one would.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { VfioError } from '../../src/errors.ts';
import { analyzeBytes } from '../../src/stream/analyze.ts';
import { concat } from '../../src/stream/bytes.ts';
import { type DecodedSection, StreamDecoder } from '../../src/stream/decoder.ts';
import { StreamEncoder } from '../../src/stream/encoder.ts';
import { StreamError } from '../../src/stream/errors.ts';
import { decodeRamPayload, RamPayloadBuilder } from '../../src/stream/ram.ts';
import { encodeReturnPath, ReturnPathDecoder, ReturnPathType } from '../../src/stream/return-path.ts';
import { decodeVfioPayload, vfioConfigPayload, vfioDataPayload, vfioSetupPayload } from '../../src/stream/vfio.ts';
import { FuzzTally, fuzzParams } from '../support/fuzz.ts';
import { buildStream, decodeChunked, pageOf, RAM_BLOCKS, sampleStream, streamPlanArb } from './support.ts';

/** Runs `fn`; anything thrown must be an instance of `type`. */
function onlyThrows(type: new (...a: never[]) => Error, fn: () => unknown, input: Uint8Array): void {
  try {
    fn();
  } catch (err) {
    tally.thrown(err, [type], Buffer.from(input.subarray(0, 64)).toString('hex'));
  }
}

/** A valid stream mutated: a few bytes set, a cut, a splice of random bytes, a 32-bit field rewritten. */
const mutated = (base: Uint8Array) =>
  fc
    .record({
      edits: fc.array(fc.tuple(fc.nat(), fc.nat(255)), { maxLength: 4 }),
      cut: fc.option(fc.nat(), { nil: undefined }),
      splice: fc.option(fc.tuple(fc.nat(), fc.uint8Array({ maxLength: 32 })), { nil: undefined }),
      u32: fc.option(fc.tuple(fc.nat(), fc.constantFrom(0, 1, 0x7fffffff, 0xffffffff, 0x1000000, 4096)), {
        nil: undefined,
      }),
    })
    .map(({ edits, cut, splice, u32 }) => {
      let b: Uint8Array = base.slice();
      for (const [i, x] of edits) b[i % b.byteLength] = x;
      if (u32 && b.byteLength >= 4) new DataView(b.buffer).setUint32(u32[0] % (b.byteLength - 3), u32[1], false);
      if (splice) {
        const at = splice[0] % (b.byteLength + 1);
        b = concat([b.subarray(0, at), splice[1], b.subarray(at)]);
      }
      if (cut !== undefined) b = b.subarray(0, cut % (b.byteLength + 1));
      return b;
    });

/** Feeds a stream in chunks, as a socket would, and finishes it. */
function decodeAll(bytes: Uint8Array, chunk: number): void {
  const d = new StreamDecoder({ maxSectionBytes: 1 << 20 });
  for (let at = 0; at < bytes.byteLength; at += chunk) d.push(bytes.slice(at, at + chunk));
  d.finish();
}

const tally = new FuzzTally('stream-decoders');

describe('stream readers only ever throw their typed errors', () => {
  const sample = sampleStream().bytes;

  test('StreamDecoder: random bytes, random bytes after a valid header, mutated valid streams', () => {
    const header = concat(new StreamEncoder().header());
    const anyStream = fc.oneof(
      fc.uint8Array({ maxLength: 300 }),
      fc.uint8Array({ maxLength: 300 }).map((b) => concat([header, b])),
      mutated(sample),
      streamPlanArb.chain((plan) => mutated(buildStream(plan).bytes)),
    );
    fc.assert(
      fc.property(anyStream, fc.integer({ min: 1, max: 4096 }), (bytes, chunk) => {
        tally.inputs++;
        onlyThrows(StreamError, () => decodeAll(bytes, chunk), bytes);
        // The analyzer reads through the decoder and must report, not throw.
        tally.inputs++;
        const a = analyzeBytes(bytes, { maxSectionBytes: 1 << 20 });
        assert.ok(a.complete || a.error !== null);
      }),
      fuzzParams('stream decoder', 400),
    );
  });

  test('a section header claiming more than the limit is refused before its payload is buffered', () => {
    const e = new StreamEncoder();
    const ok = concat([...e.header(), ...e.start({ sectionId: 0, idstr: 'ram', instanceId: 0, versionId: 4 }, [])]);
    // The START's 32-bit payload length sits just before its (empty) payload: claim 4 GiB - 1.
    const big = ok.slice(0, ok.byteLength - 13);
    new DataView(big.buffer).setUint32(big.byteLength - 4, 0xffffffff, false);
    const d = new StreamDecoder();
    assert.throws(
      () => d.push(big),
      (err: unknown) => err instanceof StreamError && err.code === 'too-large',
    );
    assert.ok(d.pendingBytes <= big.byteLength, 'nothing beyond the header was buffered');
  });

  test("RAM payloads: random and mutated, with and without the section and this VM's blocks", () => {
    const b = new RamPayloadBuilder();
    b.page('pc.ram', 4096, pageOf(3));
    b.zero('pc.ram', 0, 0);
    b.zero('vga.vram', 8192, 7);
    b.eos();
    const valid = concat(b.take().pieces);
    const s = new RamPayloadBuilder();
    s.memSize(12 * 4096, [
      { name: 'pc.ram', usedLength: 8 * 4096 },
      { name: 'vga.vram', usedLength: 4 * 4096 },
    ]);
    s.eos();
    const setup = concat(s.take().pieces);
    const payload = fc.oneof(fc.uint8Array({ maxLength: 200 }), mutated(valid), mutated(setup));
    const section = fc.constantFrom(
      { type: 'start' as const, idstr: 'ram', sectionId: 0, seq: 0, payloadOffset: 100 },
      { type: 'part' as const, idstr: 'ram', sectionId: 0, seq: 3, payloadOffset: 5000 },
      undefined,
    );
    fc.assert(
      fc.property(payload, section, fc.boolean(), (p, sec, withBlocks) => {
        tally.inputs++;
        onlyThrows(
          StreamError,
          () => decodeRamPayload(p, { section: sec, blocks: withBlocks ? RAM_BLOCKS : undefined }),
          p,
        );
      }),
      fuzzParams('RAM payload', 600),
    );
  });

  test('VFIO payloads: random and mutated', () => {
    const valids = [
      concat(vfioSetupPayload()),
      concat(vfioDataPayload([Uint8Array.of(1, 2, 3), new Uint8Array(40)])),
      concat(vfioConfigPayload(new Uint8Array(64).fill(9))),
    ];
    const payload = fc.oneof(fc.uint8Array({ maxLength: 200 }), ...valids.map((v) => mutated(v)));
    fc.assert(
      fc.property(payload, (p) => {
        tally.inputs++;
        onlyThrows(StreamError, () => decodeVfioPayload(p), p);
      }),
      fuzzParams('VFIO payload', 600),
    );
  });

  test('sections with a valid CRC around a hostile payload: the analyzer reports the payload error', () => {
    const ram = { sectionId: 0, idstr: 'ram', instanceId: 0, versionId: 4 };
    const dev = { sectionId: 1, idstr: '0000:00:05.0/vfio', instanceId: 0, versionId: 1 };
    const b = new RamPayloadBuilder();
    b.page('pc.ram', 0, pageOf(1));
    b.eos();
    const ramValid = concat(b.take().pieces);
    const vfioValid = concat(vfioDataPayload([Uint8Array.of(7, 7, 7)]));
    fc.assert(
      fc.property(
        fc.oneof(mutated(ramValid), fc.uint8Array({ maxLength: 100 })),
        fc.oneof(mutated(vfioValid), fc.uint8Array({ maxLength: 100 })),
        (ramPayload, vfioPayload) => {
          tally.inputs++;
          const e = new StreamEncoder();
          const bytes = concat([
            ...e.header(),
            ...e.start(ram, [ramPayload]),
            ...e.start(dev, [vfioPayload]),
            ...e.eof(),
          ]);
          const a = analyzeBytes(bytes);
          // No END sections: the stream can never be complete. A hostile payload must be named as such;
          // only when both payloads happen to be valid does the missing END come first.
          assert.ok(!a.complete && a.error);
          if (a.error.code !== 'payload') {
            assert.equal(a.error.code, 'order', JSON.stringify(a.error));
            decodeRamPayload(ramPayload, {
              section: { type: 'start', idstr: 'ram', sectionId: 0, seq: 0, payloadOffset: 0 },
            });
            decodeVfioPayload(vfioPayload);
          }
        },
      ),
      fuzzParams('CRC-valid hostile payloads', 400),
    );
  });

  test('return path: random and mutated messages, in any chunking, throw only VfioError', () => {
    const valid = concat([
      encodeReturnPath({ type: ReturnPathType.READY, text: '' }),
      encodeReturnPath({ type: ReturnPathType.ERROR, text: 'no' }),
    ]);
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 100 }), mutated(valid)), fc.nat(20), (bytes, cut) => {
        tally.inputs++;
        const d = new ReturnPathDecoder();
        onlyThrows(
          VfioError,
          () => {
            d.push(bytes.subarray(0, cut));
            d.push(bytes.subarray(cut));
          },
          bytes,
        );
      }),
      fuzzParams('return path', 400),
    );
  });

  test('a refused return-path chunk leaves the decoder as it was: it goes on as if it had never seen it', () => {
    const valid = encodeReturnPath({ type: ReturnPathType.ERROR, text: 'device 0000:00:05.0 refused its state' });
    let refused = 0;
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 100 }), mutated(valid)), fc.nat(6), (bytes, k) => {
        tally.inputs++;
        // Both have the first k bytes of a valid message (part of its header) buffered.
        const d = new ReturnPathDecoder();
        const kept = new ReturnPathDecoder();
        assert.deepEqual(d.push(valid.subarray(0, k)), []);
        kept.push(valid.subarray(0, k));
        try {
          d.push(bytes);
        } catch (err) {
          assert.ok(err instanceof VfioError);
          refused++;
          // Refused: the rest of the message then decodes exactly as in the decoder that never saw the chunk.
          const rest = concat([valid.subarray(k), valid]);
          const got = d.push(rest);
          assert.deepEqual(got, kept.push(rest));
          assert.equal(got.length, 2);
        }
      }),
      fuzzParams('return path (refused, then valid)', 400),
    );
    assert.ok(refused > 0, 'some chunks were refused');
  });

  test('return path round trip: any messages, encoded and fed in any chunking, decode to themselves', () => {
    const message = fc.record(
      {
        type: fc.constantFrom(...Object.values(ReturnPathType)),
        text: fc.string({ maxLength: 40, unit: 'grapheme' }),
      },
      { noNullPrototype: true },
    );
    fc.assert(
      fc.property(fc.array(message, { maxLength: 5 }), fc.integer({ min: 1, max: 16 }), (msgs, chunk) => {
        tally.inputs++;
        const bytes = concat(msgs.map((m) => encodeReturnPath(m)));
        const d = new ReturnPathDecoder();
        const got = [];
        for (let at = 0; at < bytes.byteLength; at += chunk) got.push(...d.push(bytes.subarray(at, at + chunk)));
        assert.deepEqual(got, msgs);
      }),
      fuzzParams('return path (round trip)', 300),
    );
  });

  test('stream round trip: a valid stream decodes to its sections, and what decodes whole re-encodes to the same bytes', () => {
    /** The sections re-encoded by a fresh encoder, as the source would have written them. */
    const reencode = (sections: readonly DecodedSection[]): Uint8Array => {
      const e = new StreamEncoder();
      const out = [...e.header()];
      for (const x of sections) {
        const id = { sectionId: x.sectionId, idstr: x.idstr, instanceId: x.instanceId, versionId: x.versionId };
        if (x.type === 'start') out.push(...e.start(id, [x.payload]));
        else if (x.type === 'full') out.push(...e.full(id, [x.payload]));
        else if (x.type === 'part') out.push(...e.part(x.sectionId, [x.payload]));
        else out.push(...e.end(x.sectionId, [x.payload]));
      }
      out.push(...e.eof());
      return concat(out);
    };
    fc.assert(
      fc.property(
        streamPlanArb,
        fc.array(fc.integer({ min: 1, max: 4096 }), { minLength: 1, maxLength: 4 }),
        (plan, sizes) => {
          tally.inputs++;
          // encode -> decode: the plan's sections, in order, whatever the chunking.
          const built = buildStream(plan);
          const r = decodeChunked(built.bytes, sizes, { maxSectionBytes: 1 << 20 });
          assert.equal(r.error, null);
          assert.deepEqual(
            r.sections.map((x) => [x.type, x.sectionId, x.idstr, x.instanceId, x.versionId, Buffer.from(x.payload)]),
            built.sections.map((x) => [
              x.type,
              x.sectionId,
              x.idstr,
              x.instanceId,
              x.versionId,
              Buffer.from(x.payload),
            ]),
          );
          // decode -> encode: the decoded sections written again are the same bytes.
          assert.deepEqual(Buffer.from(reencode(r.sections)), Buffer.from(built.bytes));
        },
      ),
      fuzzParams('stream (round trip)', 200),
    );
    // And for mutated streams: whatever the decoder accepts as a whole stream re-encodes to exactly its input.
    let whole = 0;
    fc.assert(
      fc.property(
        fc.oneof(
          mutated(sample),
          streamPlanArb.chain((plan) => mutated(buildStream(plan).bytes)),
        ),
        (bytes) => {
          tally.inputs++;
          const r = decodeChunked(bytes, [bytes.byteLength], { maxSectionBytes: 1 << 20 });
          if (r.error !== null) return;
          whole++;
          assert.deepEqual(Buffer.from(reencode(r.sections)), Buffer.from(bytes));
        },
      ),
      fuzzParams('stream (mutated, decode -> encode)', 400),
    );
    console.log(`# ${whole} mutated streams decoded whole and re-encoded to their own bytes`);
  });

  test('figures', () => {
    assert.ok(tally.inputs > 0);
    tally.printAndCheck();
  });
});
