// The sample devices' state stream: the 24-byte record header codec, StateStreamWriter (records pulled
// lazily, handed out in chunks of any size) and StateStreamReader (fed in pieces of any size). The round
// trip is checked against an independent encoder written here from the format comment in state-stream.ts.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { Errno } from '../../src/abi/errno.ts';
import { StateStreamReader } from '../../src/device/state-reader.ts';
import {
  decodeRecordHeader,
  encodeRecordHeader,
  RECORD_HEADER_SIZE,
  type RecordHeader,
  RecordKind,
  type RecordKindValue,
  type StateRecord,
} from '../../src/device/state-stream.ts';
import { StateStreamWriter } from '../../src/device/state-writer.ts';
import { VfioError } from '../../src/errors.ts';
import { crc32c } from '../../src/stream/crc32c.ts';

const KINDS = Object.values(RecordKind) as RecordKindValue[];
const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });

/** u16 kind | u16 reserved | u32 length | u64 arg0 | u64 arg1, little-endian: written out by hand. */
function header(kind: number, length: number, arg0 = 0n, arg1 = 0n, reserved = 0): Uint8Array {
  const b = new Uint8Array(RECORD_HEADER_SIZE);
  const dv = new DataView(b.buffer);
  dv.setUint16(0, kind, true);
  dv.setUint16(2, reserved, true);
  dv.setUint32(4, length, true);
  dv.setBigUint64(8, arg0, true);
  dv.setBigUint64(16, arg1, true);
  return b;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

interface Rec {
  kind: RecordKindValue;
  arg0: bigint;
  arg1: bigint;
  payload: Uint8Array;
}

function encodeAll(recs: Rec[]): Uint8Array {
  return concat(recs.flatMap((r) => [header(r.kind, r.payload.byteLength, r.arg0, r.arg1), r.payload]));
}

/** Splits `data` at sizes taken cyclically from `sizes` (each at least 1). */
function split(data: Uint8Array, sizes: number[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  let i = 0;
  for (let at = 0; at < data.byteLength; i++) {
    const n = Math.max(1, sizes[i % sizes.length] ?? 1);
    out.push(data.subarray(at, at + n));
    at += n;
  }
  return out;
}

/** What a sink saw, as records: header, the payload reassembled from its pieces, and whether it ended. */
class RecordingSink {
  readonly records: { header: RecordHeader; index: number; payload: number[]; ended: boolean }[] = [];
  onHeader(h: RecordHeader, index: number): void {
    const prev = this.records.at(-1);
    assert.ok(!prev || prev.ended, 'a header arrives only after the previous record ended');
    assert.equal(index, this.records.length, 'records are numbered from 0 in order');
    this.records.push({ header: { ...h }, index, payload: [], ended: false });
  }
  onPayload(h: RecordHeader, chunk: Uint8Array, at: number): void {
    const cur = this.records.at(-1)!;
    assert.ok(!cur.ended);
    assert.deepEqual(h, cur.header);
    assert.equal(at, cur.payload.length, 'payload pieces arrive contiguously');
    assert.ok(chunk.byteLength > 0, 'no empty payload pieces');
    cur.payload.push(...chunk);
  }
  onRecordEnd(h: RecordHeader, index: number): void {
    const cur = this.records.at(-1)!;
    assert.deepEqual(h, cur.header);
    assert.equal(index, cur.index);
    assert.equal(cur.payload.length, h.length, 'a record ends after exactly its payload');
    cur.ended = true;
  }
}

const MAX_PAYLOAD = 512;

const recArb = (kinds: RecordKindValue[]): fc.Arbitrary<Rec> =>
  fc
    .record({
      kind: fc.constantFrom(...kinds),
      arg0: u64,
      arg1: u64,
      payload: fc.oneof(fc.constant(new Uint8Array(0)), fc.uint8Array({ maxLength: MAX_PAYLOAD })),
    })
    .map((r) => ({ ...r }));

/** A valid stream: BEGIN, any records but END, END. */
const streamArb: fc.Arbitrary<Rec[]> = fc
  .tuple(
    recArb([RecordKind.BEGIN]),
    fc.array(recArb([RecordKind.BEGIN, RecordKind.REGS, RecordKind.MEM, RecordKind.ZERO]), { maxLength: 12 }),
    recArb([RecordKind.END]),
  )
  .map(([b, mid, e]) => [b, ...mid, e]);

function rejects(fn: () => unknown, re: RegExp): VfioError {
  let caught: unknown;
  assert.throws(fn, (e: unknown) => {
    caught = e;
    return e instanceof VfioError && e.errno === Errno.EINVAL && re.test(e.message);
  });
  return caught as VfioError;
}

describe('record header codec', () => {
  test('decode(encode(h)) == h for every kind and arbitrary length/args; the layout is the documented one', () => {
    fc.assert(
      fc.property(fc.constantFrom(...KINDS), fc.nat(0xffff_ffff), u64, u64, (kind, length, arg0, arg1) => {
        const bytes = encodeRecordHeader({ kind, length, arg0, arg1 });
        assert.equal(bytes.byteLength, RECORD_HEADER_SIZE);
        assert.deepEqual(bytes, header(kind, length, arg0, arg1));
        assert.deepEqual(decodeRecordHeader(bytes), { kind, length, arg0, arg1 });
      }),
    );
  });

  test('decode reads at a view offset inside a larger buffer', () => {
    const big = new Uint8Array(100).fill(0x77);
    big.set(header(RecordKind.MEM, 4096, 0x10000n, 7n), 13);
    assert.deepEqual(decodeRecordHeader(big.subarray(13)), {
      kind: RecordKind.MEM,
      length: 4096,
      arg0: 0x10000n,
      arg1: 7n,
    });
  });

  test('decode returns a reason string (never throws) for unknown kinds', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 0xffff }).filter((k) => !(KINDS as number[]).includes(k)),
        (kind) => {
          const r = decodeRecordHeader(header(kind, 0));
          assert.equal(typeof r, 'string');
          assert.match(r as string, new RegExp(`unknown record kind ${kind}\\b`));
        },
      ),
    );
    assert.equal(typeof decodeRecordHeader(header(0, 0)), 'string');
    assert.equal(typeof decodeRecordHeader(header(6, 0)), 'string');
  });

  test('decode returns a reason string when the reserved u16 is not 0', () => {
    fc.assert(
      fc.property(fc.constantFrom(...KINDS), fc.integer({ min: 1, max: 0xffff }), (kind, reserved) => {
        const r = decodeRecordHeader(header(kind, 8, 1n, 2n, reserved));
        assert.equal(typeof r, 'string');
        assert.match(r as string, /reserved/);
      }),
    );
    for (const reserved of [1, 0x0100, 0x8000, 0xffff]) {
      assert.match(decodeRecordHeader(header(RecordKind.MEM, 0, 0n, 0n, reserved)) as string, /reserved/);
    }
  });

  test('decode of fewer than 24 bytes returns a reason string', () => {
    for (let n = 0; n < RECORD_HEADER_SIZE; n++) {
      assert.equal(typeof decodeRecordHeader(header(RecordKind.BEGIN, 0).subarray(0, n)), 'string');
    }
  });
});

describe('StateStreamWriter + StateStreamReader', () => {
  test('any records, any writer chunk sizes, any reader splits: the reader sees exactly the records in order', () => {
    fc.assert(
      fc.property(
        streamArb,
        fc.array(fc.integer({ min: 1, max: 700 }), { minLength: 1, maxLength: 20 }),
        fc.array(fc.integer({ min: 1, max: 700 }), { minLength: 1, maxLength: 20 }),
        fc.array(fc.nat(14), { maxLength: 4 }),
        (recs, outSizes, feedSizes, pauseAfter) => {
          // The source pauses (returns null once) after the records listed in pauseAfter, as a running
          // device with nothing more to send right now would.
          const pauses = new Set(pauseAfter.filter((i) => i < recs.length - 1));
          let next = 0;
          let paused = false;
          const writer = new StateStreamWriter((): StateRecord | null => {
            if (next >= recs.length) return null;
            if (pauses.has(next - 1) && !paused) {
              paused = true;
              return null;
            }
            paused = false;
            const r = recs[next++]!;
            return {
              header: { kind: r.kind, arg0: r.arg0, arg1: r.arg1 },
              ...(r.payload.byteLength > 0 || next % 2 === 0 ? { payload: r.payload } : {}),
            };
          });
          const chunks: Uint8Array[] = [];
          let empty = 0;
          for (let i = 0; empty < 2; i++) {
            const out = new Uint8Array(outSizes[i % outSizes.length]!);
            const n = writer.produce(out);
            assert.ok(n >= 0 && n <= out.byteLength);
            if (n < out.byteLength) assert.equal(writer.queuedBytes, 0, 'a short chunk means the queue is empty');
            chunks.push(out.slice(0, n));
            empty = n === 0 ? empty + 1 : 0;
          }
          assert.equal(next, recs.length, 'every record was pulled');
          assert.equal(writer.recordCount, recs.length);
          assert.equal(writer.queuedBytes, 0);
          const bytes = concat(chunks);
          assert.deepEqual(bytes, encodeAll(recs), 'the writer emits header + payload per record, in order');

          const sink = new RecordingSink();
          const reader = new StateStreamReader(sink, MAX_PAYLOAD);
          const pieces = split(bytes, feedSizes);
          pieces.forEach((p, i) => {
            assert.equal(reader.complete, false);
            reader.feed(p);
            if (i < pieces.length - 1) assert.equal(reader.complete, false, 'complete only after END');
          });
          assert.equal(reader.complete, true);
          assert.equal(reader.midRecord, false);
          assert.deepEqual(
            sink.records.map((r) => ({ ...r.header, payload: r.payload, ended: r.ended })),
            recs.map((r) => ({
              kind: r.kind,
              length: r.payload.byteLength,
              arg0: r.arg0,
              arg1: r.arg1,
              payload: [...r.payload],
              ended: true,
            })),
          );
        },
      ),
      { numRuns: 200 },
    );
  });

  test('midRecord is true exactly while a header or payload is partly received', () => {
    const sink = new RecordingSink();
    const reader = new StateStreamReader(sink, MAX_PAYLOAD);
    const bytes = encodeAll([{ kind: RecordKind.BEGIN, arg0: 0n, arg1: 0n, payload: new Uint8Array([1, 2, 3]) }]);
    assert.equal(reader.midRecord, false);
    reader.feed(bytes.subarray(0, 10));
    assert.equal(reader.midRecord, true);
    reader.feed(bytes.subarray(10, RECORD_HEADER_SIZE + 1));
    assert.equal(reader.midRecord, true);
    reader.feed(bytes.subarray(RECORD_HEADER_SIZE + 1));
    assert.equal(reader.midRecord, false);
    assert.equal(reader.complete, false, 'no END yet');
  });

  test('a live payload is handed out as it was when pulled, even if the device changes it afterwards', () => {
    const memory = new Uint8Array(256).map((_, i) => i);
    let sent = false;
    const writer = new StateStreamWriter(() => {
      if (sent) return null;
      sent = true;
      return { header: { kind: RecordKind.MEM, arg0: 0n, arg1: 0n }, payload: memory.subarray(0, 256), live: true };
    });
    const first = new Uint8Array(RECORD_HEADER_SIZE + 10);
    assert.equal(writer.produce(first), first.byteLength);
    memory.fill(0xee); // the device keeps running between chunks
    const rest = new Uint8Array(1000);
    const n = writer.produce(rest);
    assert.equal(n, 246);
    const payload = concat([first.subarray(RECORD_HEADER_SIZE), rest.subarray(0, n)]);
    assert.deepEqual(
      payload,
      Uint8Array.from({ length: 256 }, (_, i) => i),
    );
  });
});

describe('StateStreamWriter: checksums from the copy that sends', () => {
  test('each payload gets the CRC-32C of exactly the bytes handed out, once, live or not, at any chunk sizes', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ size: fc.integer({ min: 0, max: 900 }), live: fc.boolean() }), { maxLength: 12 }),
        fc.array(fc.integer({ min: 1, max: 700 }), { minLength: 1, maxLength: 10 }),
        (specs, outSizes) => {
          const memory = new Uint8Array(1024);
          let generation = 0;
          const repaint = () => {
            generation++;
            for (let i = 0; i < memory.byteLength; i++) memory[i] = (i * 31 + generation * 7) & 0xff;
          };
          repaint();
          const reported: number[][] = specs.map(() => []);
          let next = 0;
          const writer = new StateStreamWriter((): StateRecord | null => {
            if (next >= specs.length) return null;
            const i = next++;
            // Every record pulled before this one has its checksum by now (END's digest relies on it).
            for (let j = 0; j < i; j++) assert.equal(reported[j]!.length, 1, `record ${j} checksummed before ${i}`);
            const { size, live } = specs[i]!;
            return {
              header: { kind: RecordKind.MEM, arg0: BigInt(i), arg1: 0n },
              payload: live ? memory.subarray(0, size) : memory.slice(0, size),
              live,
              checksum: (crc) => reported[i]!.push(crc),
            };
          });
          const chunks: Uint8Array[] = [];
          for (let i = 0; ; i++) {
            const out = new Uint8Array(outSizes[i % outSizes.length]!);
            const n = writer.produce(out);
            repaint(); // the device keeps changing its memory between chunks
            if (n === 0) break;
            chunks.push(out.slice(0, n));
          }
          const bytes = concat(chunks);
          let at = 0;
          specs.forEach((spec, i) => {
            at += RECORD_HEADER_SIZE;
            assert.deepEqual(reported[i], [crc32c(bytes.subarray(at, at + spec.size))], `record ${i}`);
            at += spec.size;
          });
          assert.equal(at, bytes.byteLength);
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe('StateStreamReader rejections', () => {
  const begin = (): Rec => ({ kind: RecordKind.BEGIN, arg0: 0n, arg1: 0n, payload: new Uint8Array([123, 125]) });
  const end = (): Rec => ({ kind: RecordKind.END, arg0: 1n, arg1: 0n, payload: new Uint8Array(32) });

  test('a stream that does not start with BEGIN is rejected before the sink hears of it', () => {
    for (const kind of [RecordKind.REGS, RecordKind.MEM, RecordKind.ZERO, RecordKind.END]) {
      const sink = new RecordingSink();
      const reader = new StateStreamReader(sink, MAX_PAYLOAD);
      rejects(() => reader.feed(header(kind, 0)), /does not start with a BEGIN record/);
      assert.equal(sink.records.length, 0);
    }
  });

  test('a payload over the limit is rejected when its header completes; exactly the limit is accepted', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: MAX_PAYLOAD + 1, max: 0xffff_ffff }),
        fc.nat(RECORD_HEADER_SIZE - 1),
        (len, cut) => {
          const sink = new RecordingSink();
          const reader = new StateStreamReader(sink, MAX_PAYLOAD);
          reader.feed(encodeAll([begin()]));
          const h = header(RecordKind.MEM, len, 0n);
          reader.feed(h.subarray(0, cut));
          rejects(() => reader.feed(h.subarray(cut)), new RegExp(`record 1: payload ${len} > limit ${MAX_PAYLOAD}`));
          assert.equal(sink.records.length, 1, 'the oversized record never reached the sink');
        },
      ),
    );
    const over = new StateStreamReader(new RecordingSink(), MAX_PAYLOAD);
    over.feed(encodeAll([begin()]));
    rejects(() => over.feed(header(RecordKind.MEM, MAX_PAYLOAD + 1)), /> limit/);
    const reader = new StateStreamReader(new RecordingSink(), MAX_PAYLOAD);
    reader.feed(
      encodeAll([begin(), { kind: RecordKind.MEM, arg0: 0n, arg1: 0n, payload: new Uint8Array(MAX_PAYLOAD) }]),
    );
    assert.equal(reader.midRecord, false);
  });

  test('an unknown kind or reserved bits in the stream are rejected with the decoder reason', () => {
    const r1 = new StateStreamReader(new RecordingSink(), MAX_PAYLOAD);
    r1.feed(encodeAll([begin()]));
    rejects(() => r1.feed(header(9, 0)), /record 1: unknown record kind 9/);
    const r2 = new StateStreamReader(new RecordingSink(), MAX_PAYLOAD);
    rejects(() => r2.feed(header(RecordKind.BEGIN, 0, 0n, 0n, 1)), /record 0: reserved record header bits are set/);
  });

  test('bytes after END are rejected, in the same piece or a later one', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 40 }), fc.boolean(), (extra, samePiece) => {
        const reader = new StateStreamReader(new RecordingSink(), MAX_PAYLOAD);
        const stream = encodeAll([begin(), end()]);
        if (samePiece) {
          rejects(() => reader.feed(concat([stream, extra])), /past its END record/);
        } else {
          reader.feed(stream);
          assert.equal(reader.complete, true);
          reader.feed(new Uint8Array(0)); // nothing more is fine
          rejects(() => reader.feed(extra), new RegExp(`continues ${extra.byteLength} bytes past its END record`));
        }
      }),
    );
  });

  test('once rejected, every later feed throws the same VfioError and the sink hears nothing more', () => {
    const sink = new RecordingSink();
    const reader = new StateStreamReader(sink, MAX_PAYLOAD);
    const err = rejects(() => reader.feed(header(RecordKind.REGS, 0)), /BEGIN/);
    const valid = encodeAll([begin(), end()]);
    for (const piece of [valid, valid.subarray(0, 5), new Uint8Array(0)]) {
      assert.throws(
        () => reader.feed(piece),
        (e: unknown) => e === err,
      );
    }
    assert.equal(sink.records.length, 0);
    assert.equal(reader.complete, false);
  });

  test('a sink that throws rejects the stream: VfioErrors pass unchanged, anything else becomes EINVAL', () => {
    const custom = new VfioError(Errno.EIO, 'device says no');
    const r1 = new StateStreamReader(
      {
        onHeader: () => {
          throw custom;
        },
        onPayload: () => {},
        onRecordEnd: () => {},
      },
      MAX_PAYLOAD,
    );
    assert.throws(
      () => r1.feed(encodeAll([begin()])),
      (e: unknown) => e === custom,
    );
    assert.throws(
      () => r1.feed(new Uint8Array(1)),
      (e: unknown) => e === custom,
    );

    const r2 = new StateStreamReader(
      {
        onHeader: () => {},
        onPayload: () => {
          throw new TypeError('bad payload');
        },
        onRecordEnd: () => {},
      },
      MAX_PAYLOAD,
    );
    const err = rejects(() => r2.feed(encodeAll([begin()])), /bad payload/);
    assert.ok(err.cause instanceof TypeError);
    assert.throws(
      () => r2.feed(new Uint8Array(0)),
      (e: unknown) => e === err,
    );
  });
});
