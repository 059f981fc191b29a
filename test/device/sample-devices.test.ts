// The two sample devices as a device author and a VMM see them without a migration region in between:
// BAR reads and writes, work that happens only while running, save and resume driven through the
// MigrationBackend interface directly (random chunk sizes, work between pre-copy chunks), what the loader
// refuses, and DMA into guest memory with dirty-page logging.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { Errno } from '../../src/abi/errno.ts';
import { DeviceState } from '../../src/abi/migration.ts';
import type { MigrationBackend } from '../../src/device/backend.ts';
import { LOG_PAGE_SIZE } from '../../src/device/dirty-log.ts';
import { CONTROL_WORK, LargeMemoryDevice, LargeMemoryRegs } from '../../src/device/samples/large-memory.ts';
import { RegisterFileDevice, RegisterFileRegs } from '../../src/device/samples/register-file.ts';
import {
  decodeRecordHeader,
  RECORD_HEADER_SIZE,
  type RecordHeader,
  RecordKind,
} from '../../src/device/state-stream.ts';
import { VfioError } from '../../src/errors.ts';

const { STOPPED, RUNNING, SAVING, RESUMING } = DeviceState;
const PRECOPY = RUNNING | SAVING;
const MEM = 1 << 20;
const BLOCK = 64 << 10;

type Dev = LargeMemoryDevice | RegisterFileDevice;

const large = (opts: { memSize?: number; blockSize?: number; seed?: number } = {}) =>
  new LargeMemoryDevice({ memSize: MEM, blockSize: BLOCK, workRate: 0, ...opts });
const regfile = () => new RegisterFileDevice({ tickRate: 0 });

const DEVICES: { name: string; make: () => Dev }[] = [
  { name: 'register-file', make: regfile },
  { name: 'large-memory (1 MiB)', make: () => large() },
];

function u32(b: Uint8Array): number {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(0, true);
}
function u64(b: Uint8Array): bigint {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getBigUint64(0, true);
}
function le32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v, true);
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
function einval(fn: () => unknown, re?: RegExp): VfioError {
  let caught: unknown;
  assert.throws(fn, (e: unknown) => {
    caught = e;
    return e instanceof VfioError && e.errno === Errno.EINVAL && (!re || re.test(e.message));
  });
  return caught as VfioError;
}

/** Random chunk sizes: mostly large, sometimes tiny (1..64 bytes), so records split anywhere. */
const sizesArb = fc.array(fc.oneof(fc.integer({ min: 1, max: 64 }), fc.integer({ min: 4096, max: 200_000 })), {
  minLength: 1,
  maxLength: 12,
});

interface SaveResult {
  stream: Uint8Array;
  digestAtStop: string;
  precopyBytes: number;
}

/**
 * Saves `dev` through its MigrationBackend: pre-copy (1 -> 3) for `precopyChunks` chunks with `step()`
 * between them, then stop-and-copy (3 -> 2) until pendingBytes() is 0 and produce() returns 0, then 2 -> 0.
 */
function save(dev: Dev, outSizes: number[], stepUnits: number[], precopyChunks: number): SaveResult {
  const b: MigrationBackend = dev.migration;
  const chunks: Uint8Array[] = [];
  let k = 0;
  const nextOut = () => new Uint8Array(outSizes[k++ % outSizes.length]!);
  b.transition(RUNNING, PRECOPY);
  for (let i = 0; i < precopyChunks; i++) {
    const out = nextOut();
    const n = b.produce(out);
    assert.ok(n >= 0 && n <= out.byteLength);
    chunks.push(out.slice(0, n));
    dev.step(stepUnits[i % stepUnits.length]!);
  }
  const precopyBytes = chunks.reduce((n, c) => n + c.byteLength, 0);
  b.transition(PRECOPY, SAVING);
  const digestAtStop = dev.stateDigest();
  // Each call while bytes are pending produces at least one: more calls than pending bytes (plus the
  // final empty one) is a device that does not make progress. A fixed bound would be hit by 1-byte chunks.
  const calls = b.pendingBytes() + 2;
  for (let guard = 0; ; guard++) {
    assert.ok(guard < calls, 'stop-and-copy makes progress');
    const out = nextOut();
    const n = b.produce(out);
    chunks.push(out.slice(0, n));
    if (n === 0) {
      assert.equal(b.pendingBytes(), 0, 'produce() returns 0 while stopped only when nothing is pending');
      break;
    }
  }
  assert.equal(b.produce(new Uint8Array(4096)), 0, 'complete: still nothing more');
  assert.equal(dev.stateDigest(), digestAtStop, 'saving does not change the device');
  b.transition(SAVING, STOPPED);
  return { stream: concat(chunks), digestAtStop, precopyBytes };
}

/** Feeds `stream` to a fresh device in RESUMING in pieces of `splits` sizes (cyclic). */
function feed(dev: Dev, stream: Uint8Array, splits: number[]): void {
  const b = dev.migration;
  for (let at = 0, i = 0; at < stream.byteLength; i++) {
    const n = Math.max(1, splits[i % splits.length]!);
    b.consume(stream.subarray(at, at + n));
    at += n;
  }
}

function resume(dev: Dev, stream: Uint8Array, splits: number[]): void {
  dev.migration.transition(RUNNING, RESUMING);
  feed(dev, stream, splits);
  dev.migration.transition(RESUMING, RUNNING);
}

/** A saved stream's records: header and where its payload lies. */
function records(stream: Uint8Array): { at: number; h: RecordHeader; payloadAt: number }[] {
  const out: { at: number; h: RecordHeader; payloadAt: number }[] = [];
  for (let at = 0; at < stream.byteLength; ) {
    const h = decodeRecordHeader(stream.subarray(at));
    assert.ok(typeof h !== 'string', `record at ${at}: ${h}`);
    out.push({ at, h, payloadAt: at + RECORD_HEADER_SIZE });
    at += RECORD_HEADER_SIZE + h.length;
  }
  return out;
}

/** A quick save of a device that has done some work, for the rejection tests. */
function savedLarge(): { stream: Uint8Array; digest: string } {
  const src = large();
  src.step(3000);
  src.bars[2]!.write(15 * BLOCK, new Uint8Array(BLOCK)); // the last block is all zero: a ZERO record
  const r = save(src, [100_000], [0], 4);
  return { stream: r.stream, digest: r.digestAtStop };
}

describe('sample devices: BARs show the device state', () => {
  test('register-file: ID "UART", VERSION 1, TICKS count work, TX_DATA appends to the FIFO', () => {
    const d = regfile();
    const bar = d.bars[0]!;
    assert.equal(bar.size, RegisterFileRegs.SIZE);
    assert.equal(new TextDecoder().decode(bar.read(RegisterFileRegs.ID, 4)), 'UART');
    assert.equal(u32(bar.read(RegisterFileRegs.VERSION, 4)), 1);
    assert.equal(u64(bar.read(RegisterFileRegs.TICKS, 8)), 0n);
    d.step(7);
    d.step(5);
    assert.equal(u64(bar.read(RegisterFileRegs.TICKS, 8)), 12n);
    for (const ch of 'hi!') bar.write(RegisterFileRegs.TX_DATA, le32(ch.charCodeAt(0)));
    assert.equal(u32(bar.read(RegisterFileRegs.TX_HEAD, 4)), 3);
    assert.equal(new TextDecoder().decode(bar.read(RegisterFileRegs.FIFO, 3)), 'hi!');
    bar.write(RegisterFileRegs.LCR, le32(0x83));
    bar.write(RegisterFileRegs.SCRATCH + 8, Uint8Array.of(1, 2, 3));
    assert.equal(u32(bar.read(RegisterFileRegs.LCR, 4)), 0x83);
    assert.deepEqual([...bar.read(RegisterFileRegs.SCRATCH + 8, 3)], [1, 2, 3]);
    einval(() => bar.read(RegisterFileRegs.SIZE - 2, 4), /outside/);
    d.close();
  });

  test('large-memory: identity registers, BAR2 is the device memory, WORK_COUNT counts work', () => {
    const d = large();
    const bar0 = d.bars[0]!;
    const bar2 = d.bars[2]!;
    assert.equal(d.bars[1], undefined);
    assert.equal(new TextDecoder().decode(bar0.read(LargeMemoryRegs.ID, 4)), 'LMEM');
    assert.equal(u32(bar0.read(LargeMemoryRegs.VERSION, 4)), 1);
    assert.equal(u64(bar0.read(LargeMemoryRegs.MEM_SIZE, 8)), BigInt(MEM));
    assert.equal(u32(bar0.read(LargeMemoryRegs.BLOCK_SIZE, 4)), BLOCK);
    assert.equal(u32(bar0.read(LargeMemoryRegs.CONTROL, 4)), CONTROL_WORK);
    assert.equal(bar2.size, MEM);
    assert.ok(
      bar2.read(0, MEM).every((x) => x === 0),
      'fresh memory is zero',
    );
    d.step(200);
    assert.equal(u64(bar0.read(LargeMemoryRegs.WORK_COUNT, 8)), 200n);
    assert.deepEqual(bar2.read(0, MEM), d.memory);
    assert.ok(
      d.memory.some((x) => x !== 0),
      'work wrote device memory',
    );
    bar2.write(MEM - 3, Uint8Array.of(7, 8, 9));
    assert.deepEqual([...d.memory.subarray(MEM - 3)], [7, 8, 9]);
    einval(() => bar2.read(MEM - 1, 2), /outside/);
    d.close();
  });

  test('large-memory: DIGEST is SHA-256 over memory then registers (digest bytes as 0), = stateDigest()', () => {
    fc.assert(
      fc.property(fc.nat(2000), fc.nat(31), fc.integer({ min: 1, max: 32 }), (units, off, len) => {
        const d = large();
        d.step(units);
        const bar0 = d.bars[0]!;
        const regs = bar0.read(0, LargeMemoryRegs.SIZE);
        const digest = regs.slice(LargeMemoryRegs.DIGEST, LargeMemoryRegs.DIGEST + 32);
        regs.fill(0, LargeMemoryRegs.DIGEST, LargeMemoryRegs.DIGEST + 32);
        const mine = createHash('sha256').update(d.bars[2]!.read(0, MEM)).update(regs).digest();
        assert.deepEqual(Buffer.from(digest), mine);
        assert.equal(Buffer.from(digest).toString('hex'), d.stateDigest());
        // A partial read of the digest returns the matching slice.
        const n = Math.min(len, 32 - off);
        assert.deepEqual(Buffer.from(bar0.read(LargeMemoryRegs.DIGEST + off, n)), mine.subarray(off, off + n));
        d.close();
      }),
      { numRuns: 20 },
    );
  });
});

describe('sample devices: register writes', () => {
  test('register-file: read-only registers refuse writes and keep their value', () => {
    const d = regfile();
    const bar = d.bars[0]!;
    const before = bar.read(0, RegisterFileRegs.SIZE);
    for (const [off, len] of [
      [RegisterFileRegs.ID, 4],
      [RegisterFileRegs.VERSION, 4],
      [RegisterFileRegs.TICKS, 8],
      [RegisterFileRegs.TX_HEAD, 4],
      [RegisterFileRegs.FIFO, 1],
      [RegisterFileRegs.SIZE - 4, 4],
      [RegisterFileRegs.IER, 8], // straddles IER and the gap after it
      [RegisterFileRegs.TX_DATA, 2], // TX_DATA takes 4-byte writes only
    ] as const) {
      einval(() => bar.write(off, new Uint8Array(len).fill(0xff)), /not writable/);
    }
    assert.deepEqual(bar.read(0, RegisterFileRegs.SIZE), before);
    d.close();
  });

  test('large-memory: read-only registers (ID, MEM_SIZE, BLOCK_SIZE, WORK_COUNT, DMA_COUNT, DIGEST) refuse writes', () => {
    const d = large();
    const bar = d.bars[0]!;
    const digest = d.stateDigest();
    for (const [off, len] of [
      [LargeMemoryRegs.ID, 4],
      [LargeMemoryRegs.VERSION, 4],
      [LargeMemoryRegs.MEM_SIZE, 8],
      [LargeMemoryRegs.BLOCK_SIZE, 4],
      [LargeMemoryRegs.WORK_COUNT, 8],
      [LargeMemoryRegs.DMA_COUNT, 8],
      [LargeMemoryRegs.DIGEST, 32],
      [LargeMemoryRegs.DIGEST + 8, 4],
      [LargeMemoryRegs.CONTROL, 8], // CONTROL is 4 bytes; BLOCK_SIZE follows
    ] as const) {
      einval(() => bar.write(off, new Uint8Array(len).fill(0xff)), /not writable/);
    }
    assert.equal(d.stateDigest(), digest);
    bar.write(LargeMemoryRegs.SCRATCH, Uint8Array.of(1));
    bar.write(LargeMemoryRegs.DMA_BASE, new Uint8Array(16));
    d.close();
  });

  for (const { name, make } of DEVICES) {
    test(`${name}: register and memory writes are refused while the device is not running`, () => {
      for (const [from, to] of [
        [RUNNING, STOPPED],
        [RUNNING, SAVING],
        [RUNNING, RESUMING],
      ] as const) {
        const d = make();
        d.migration.transition(from, to);
        const digest = d.stateDigest();
        const scratch = d instanceof LargeMemoryDevice ? LargeMemoryRegs.SCRATCH : RegisterFileRegs.SCRATCH;
        einval(() => d.bars[0]!.write(scratch, Uint8Array.of(1)), /not running/);
        if (d instanceof RegisterFileDevice) einval(() => d.bars[0]!.write(RegisterFileRegs.TX_DATA, le32(65)));
        if (d instanceof LargeMemoryDevice) einval(() => d.bars[2]!.write(0, Uint8Array.of(1)), /not running/);
        assert.equal(d.stateDigest(), digest, `state ${to}: nothing changed`);
        d.close();
      }
    });
  }
});

describe('sample devices: work happens only while running', () => {
  for (const { name, make } of DEVICES) {
    test(`${name}: step() changes the state in running and pre-copy, and nothing otherwise`, () => {
      const cases: [number, number, boolean][] = [
        [RUNNING, RUNNING, true],
        [RUNNING, PRECOPY, true],
        [RUNNING, STOPPED, false],
        [RUNNING, SAVING, false],
        [RUNNING, RESUMING, false],
      ];
      for (const [from, to, works] of cases) {
        const d = make();
        d.step(10);
        if (to !== from) d.migration.transition(from, to);
        const before = d.stateDigest();
        d.step(25);
        assert.equal(d.stateDigest() !== before, works, `device_state ${to}`);
        assert.equal(d.deviceState, to);
        d.close();
      }
    });
  }

  test('large-memory: clearing CONTROL.work stops work even while running', () => {
    const d = large();
    d.bars[0]!.write(LargeMemoryRegs.CONTROL, le32(0));
    const before = d.stateDigest();
    d.step(100);
    assert.equal(d.stateDigest(), before);
    d.close();
  });
});

describe('sample devices: save and resume through MigrationBackend', () => {
  for (const { name, make } of DEVICES) {
    test(`${name}: pre-copy with work between random chunks, stop-and-copy, random resume splits -> identical`, () => {
      fc.assert(
        fc.property(
          sizesArb,
          sizesArb,
          fc.array(fc.nat(60), { minLength: 1, maxLength: 8 }),
          fc.nat(40),
          fc.nat(3000),
          (outSizes, splits, stepUnits, precopyChunks, warmup) => {
            const src = make();
            src.step(warmup);
            const r = save(src, outSizes, stepUnits, precopyChunks);
            const dst = make();
            dst.step(warmup + 500); // the destination has stale state of its own, which must not survive
            resume(dst, r.stream, splits);
            assert.equal(dst.stateDigest(), r.digestAtStop);
            assert.equal(dst.deviceState, RUNNING);
            assert.deepEqual(dst.bars[0]!.read(0, 0x40), src.bars[0]!.read(0, 0x40));
            // Both continue identically: the work sequence's generator state moved with the registers.
            src.migration.transition(STOPPED, RUNNING);
            src.step(123);
            dst.step(123);
            assert.equal(dst.stateDigest(), src.stateDigest());
            src.close();
            dst.close();
          },
        ),
        { numRuns: name.startsWith('large') ? 12 : 40 },
      );
    });
  }

  test('large-memory: pre-copy sends the memory early; the register file sends only BEGIN before the stop', () => {
    const d = large();
    d.step(5000);
    const r = save(d, [200_000], [0], 20);
    assert.ok(r.precopyBytes > 0);
    const recs = records(r.stream);
    const blocks = new Set(
      recs.filter((x) => x.h.kind === RecordKind.MEM || x.h.kind === RecordKind.ZERO).map((x) => x.h.arg0),
    );
    assert.equal(blocks.size, MEM / BLOCK, 'every block is sent');
    assert.deepEqual(
      [recs[0]!.h.kind, recs.at(-2)!.h.kind, recs.at(-1)!.h.kind],
      [RecordKind.BEGIN, RecordKind.REGS, RecordKind.END],
    );
    assert.equal(recs.at(-1)!.h.arg0, BigInt(recs.length - 1), 'END counts the records before it');

    const rf = regfile();
    rf.step(9);
    const rr = save(rf, [100_000], [1], 5);
    const rrecs = records(rr.stream);
    assert.deepEqual(
      rrecs.map((x) => x.h.kind),
      [RecordKind.BEGIN, RecordKind.REGS, RecordKind.END],
    );
    assert.equal(rr.precopyBytes, RECORD_HEADER_SIZE + rrecs[0]!.h.length, 'only BEGIN goes in pre-copy');
  });

  test('large-memory: a pre-copy quota releases at most that much per round, ends each round with an empty chunk, never holds back stop-and-copy', () => {
    const quota = 200_000;
    const d = new LargeMemoryDevice({ memSize: MEM, workRate: 0, fill: 'random', precopyQuota: quota });
    d.migration.transition(RUNNING, PRECOPY);
    const total = d.migration.pendingBytes();
    const stream: Uint8Array[] = [];
    const rounds: number[] = [];
    for (let round = 0; round < 3; round++) {
      let n = 0;
      for (;;) {
        const out = new Uint8Array(64 << 10);
        const k = d.migration.produce(out);
        if (k === 0) break;
        stream.push(out.slice(0, k));
        n += k;
      }
      rounds.push(n);
      // pending_bytes still counts everything not yet released: the VMM sees the whole state.
      assert.equal(d.migration.pendingBytes(), total - rounds.reduce((a, b) => a + b, 0));
    }
    assert.deepEqual(rounds, [quota, quota, quota]);
    d.migration.transition(PRECOPY, SAVING);
    for (let k = 1; k > 0; ) {
      const out = new Uint8Array(1 << 20);
      k = d.migration.produce(out);
      stream.push(out.slice(0, k));
    }
    assert.equal(d.migration.pendingBytes(), 0, 'stop-and-copy drained the rest in one go');
    const dst = large();
    dst.migration.transition(RUNNING, RESUMING);
    for (const c of stream) dst.migration.consume(c);
    dst.migration.transition(RESUMING, RUNNING);
    assert.equal(dst.stateDigest(), d.stateDigest());
    assert.throws(() => d.setPrecopyQuota(-1), RangeError);
    d.close();
    dst.close();
  });

  test('large-memory: a stopped device with all-zero memory reports as pending only what it will produce', () => {
    // The interface promises pendingBytes() is exact once the device is stopped. All-zero blocks go out
    // as 24-byte ZERO records without payload, so they must not count as 24 + blockSize bytes.
    const d = large();
    d.migration.transition(RUNNING, SAVING);
    const pending = d.migration.pendingBytes();
    let produced = 0;
    for (let n = 1; n > 0; produced += n) n = d.migration.produce(new Uint8Array(1 << 20));
    assert.equal(d.migration.pendingBytes(), 0);
    assert.equal(pending, produced, `pendingBytes() said ${pending} at the stop; the device then produced ${produced}`);
    d.close();
  });

  for (const { name, make } of DEVICES) {
    test(`${name}: once stopped, pendingBytes() is exact: it falls by exactly what produce() returns`, () => {
      fc.assert(
        fc.property(sizesArb, fc.nat(20), fc.nat(4000), (outSizes, precopyChunks, warmup) => {
          const d = make();
          d.step(warmup);
          const b = d.migration;
          b.transition(RUNNING, PRECOPY);
          let k = 0;
          for (let i = 0; i < precopyChunks; i++) {
            b.produce(new Uint8Array(outSizes[k++ % outSizes.length]!));
            d.step(20);
          }
          b.transition(PRECOPY, SAVING);
          let pending = b.pendingBytes();
          const atStop = pending;
          let total = 0;
          for (;;) {
            const n = b.produce(new Uint8Array(outSizes[k++ % outSizes.length]!));
            total += n;
            const now = b.pendingBytes();
            assert.equal(now, pending - n, `pendingBytes ${pending} -> ${now} after producing ${n}`);
            pending = now;
            if (n === 0) break;
          }
          assert.equal(total, atStop, 'the bytes produced after the stop are what pendingBytes() said');
          d.close();
        }),
        { numRuns: 25 },
      );
    });
  }
});

describe('sample devices: the loader refuses what it cannot resume from', () => {
  function failsToLeaveResuming(d: Dev): void {
    einval(() => d.migration.transition(RESUMING, RUNNING), /incomplete/);
    assert.equal(d.deviceState, RESUMING, 'the device stays in resuming');
  }

  test('a different device model or descriptor is rejected at the BEGIN record', () => {
    const { stream } = savedLarge();
    const rfStream = save(regfile(), [100_000], [0], 0).stream;
    for (const [dst, s, what] of [
      [large({ memSize: 2 * MEM }), stream, 'memSize'],
      [large({ blockSize: BLOCK / 2 }), stream, 'blockSize'],
      [regfile(), stream, 'model'],
      [large(), rfStream, 'model'],
    ] as const) {
      dst.migration.transition(RUNNING, RESUMING);
      einval(() => feed(dst, s, [BLOCK]), /device model mismatch/);
      failsToLeaveResuming(dst);
      dst.close();
      void what;
    }
  });

  test('a flipped byte in a MEM payload is refused at END unless a later record resends that block', () => {
    const src = large();
    src.step(4000);
    const { stream, digestAtStop } = save(src, [30_000, 5, 70_000], [40, 0, 200], 30);
    const recs = records(stream);
    const mems = recs.filter((x) => x.h.kind === RecordKind.MEM);
    assert.ok(mems.length > MEM / BLOCK / 8, 'the stream has MEM records to corrupt');
    const lastFor = new Map<bigint, number>();
    for (const m of recs) if (m.h.kind === RecordKind.MEM || m.h.kind === RecordKind.ZERO) lastFor.set(m.h.arg0, m.at);
    const final = mems.filter((m) => lastFor.get(m.h.arg0) === m.at);
    assert.ok(final.length > 0 && final.length < mems.length, 'some MEM records are final, some superseded');
    const flip = (m: (typeof mems)[number], at: number, x: number) => {
      const bad = stream.slice();
      bad[m.payloadAt + at]! ^= x;
      const dst = large();
      dst.migration.transition(RUNNING, RESUMING);
      if (lastFor.get(m.h.arg0) === m.at) {
        einval(() => feed(dst, bad, [BLOCK + 7]), /digest mismatch/);
        failsToLeaveResuming(dst);
      } else {
        feed(dst, bad, [BLOCK + 7]);
        dst.migration.transition(RESUMING, RUNNING);
        assert.equal(dst.stateDigest(), digestAtStop);
      }
      dst.close();
    };
    flip(final[0]!, 0, 1);
    flip(mems.find((m) => !final.includes(m))!, BLOCK - 1, 0x80);
    fc.assert(
      fc.property(fc.nat(mems.length - 1), fc.nat(BLOCK - 1), fc.integer({ min: 1, max: 255 }), (i, at, x) =>
        flip(mems[i]!, at, x),
      ),
      { numRuns: 30 },
    );
  });

  test('a changed burst of up to 4 bytes, or two final blocks swapped, is refused (per-block CRC-32C, END digest)', () => {
    const src = large();
    src.step(4000);
    const { stream } = save(src, [30_000, 5, 70_000], [40, 0, 200], 30);
    const recs = records(stream);
    const lastFor = new Map<bigint, number>();
    for (const m of recs) if (m.h.kind === RecordKind.MEM || m.h.kind === RecordKind.ZERO) lastFor.set(m.h.arg0, m.at);
    const final = recs.filter((m) => m.h.kind === RecordKind.MEM && lastFor.get(m.h.arg0) === m.at);
    assert.ok(final.length >= 2, 'at least two final MEM records');
    const refused = (bad: Uint8Array) => {
      const dst = large();
      dst.migration.transition(RUNNING, RESUMING);
      einval(() => feed(dst, bad, [BLOCK + 7]), /digest mismatch/);
      failsToLeaveResuming(dst);
      dst.close();
    };
    fc.assert(
      fc.property(
        fc.nat(final.length - 1),
        fc.nat(BLOCK - 4),
        fc.uint8Array({ minLength: 1, maxLength: 4 }).filter((x) => x.some((b) => b !== 0)),
        (i, at, x) => {
          const bad = stream.slice();
          for (let k = 0; k < x.length; k++) bad[final[i]!.payloadAt + at + k]! ^= x[k]!;
          refused(bad);
        },
      ),
      { numRuns: 20 },
    );
    // Two different blocks exchange places: each record is well-formed, only the digest can tell.
    const [a, b] = [
      final[0]!,
      final.find(
        (m) =>
          !Buffer.from(stream.subarray(m.payloadAt, m.payloadAt + BLOCK)).equals(
            stream.subarray(final[0]!.payloadAt, final[0]!.payloadAt + BLOCK),
          ),
      )!,
    ];
    const bad = stream.slice();
    bad.set(stream.subarray(a.payloadAt, a.payloadAt + BLOCK), b.payloadAt);
    bad.set(stream.subarray(b.payloadAt, b.payloadAt + BLOCK), a.payloadAt);
    refused(bad);
  });

  test('a flipped byte in the REGS or END payload is refused', () => {
    const { stream } = savedLarge();
    const recs = records(stream);
    for (const kind of [RecordKind.REGS, RecordKind.END]) {
      const r = recs.find((x) => x.h.kind === kind)!;
      const bad = stream.slice();
      bad[r.payloadAt + 3]! ^= 0x10;
      const dst = large();
      dst.migration.transition(RUNNING, RESUMING);
      einval(() => feed(dst, bad, [1 << 20]), /digest mismatch/);
      failsToLeaveResuming(dst);
      dst.close();
    }
  });

  test('a truncated stream: leaving RESUMING fails with "incomplete", and the device stays resuming', () => {
    const { stream } = savedLarge();
    fc.assert(
      fc.property(fc.integer({ min: 0, max: stream.byteLength - 1 }), sizesArb, (len, splits) => {
        const dst = large();
        dst.migration.transition(RUNNING, RESUMING);
        feed(dst, stream.subarray(0, len), splits);
        failsToLeaveResuming(dst);
        // The rest of the stream still completes it.
        feed(dst, stream.subarray(len), splits);
        dst.migration.transition(RESUMING, RUNNING);
        dst.close();
      }),
      { numRuns: 30 },
    );
  });

  test('a memory record with an out-of-range, unaligned or wrong-length block is refused at its header', () => {
    const { stream } = savedLarge();
    const recs = records(stream);
    const mem = recs.find((x) => x.h.kind === RecordKind.MEM)!;
    const zero = recs.find((x) => x.h.kind === RecordKind.ZERO)!;
    const patch = (at: number, field: 8 | 16, v: bigint) => {
      const bad = stream.slice();
      new DataView(bad.buffer).setBigUint64(at + field, v, true);
      return bad;
    };
    const cases: [Uint8Array, number][] = [
      [patch(mem.at, 8, BigInt(MEM)), mem.at], // one block past the end
      [patch(mem.at, 8, BigInt(MEM - BLOCK + 4096)), mem.at], // unaligned, straddles the end
      [patch(mem.at, 8, 1n << 63n), mem.at],
      [patch(mem.at, 8, 4096n), mem.at], // unaligned inside memory
      [patch(zero.at, 8, BigInt(MEM)), zero.at],
      [patch(zero.at, 16, BigInt(BLOCK * 2)), zero.at], // a ZERO span longer than a block
      [patch(zero.at, 16, 0n), zero.at],
    ];
    for (const [bad, at] of cases) {
      const dst = large();
      dst.memory.fill(0x5a); // stale contents a ZERO record would clear
      dst.migration.transition(RUNNING, RESUMING);
      feed(dst, bad.subarray(0, at), [1 << 20]); // the records before the bad one are fine
      const before = dst.memory.slice();
      einval(() => feed(dst, bad.subarray(at), [7, 1 << 20]), /does not match a 65536-byte block of device memory/);
      failsToLeaveResuming(dst);
      assert.deepEqual(dst.memory, before, 'nothing was written for the refused record');
      dst.close();
    }
  });

  test('after a rejection every later consume() fails too', () => {
    const { stream } = savedLarge();
    const dst = large({ memSize: 2 * MEM });
    dst.migration.transition(RUNNING, RESUMING);
    const err = einval(() => feed(dst, stream, [1 << 20]));
    assert.throws(
      () => dst.migration.consume(stream.subarray(0, 10)),
      (e: unknown) => e === err,
    );
    dst.close();
  });

  test('consume() outside RESUMING and produce() outside SAVING are refused', () => {
    const d = large();
    einval(() => d.migration.consume(new Uint8Array(1)), /not resuming/);
    einval(() => d.migration.produce(new Uint8Array(1)), /not saving/);
    d.close();
  });
});

describe('large-memory: DMA into guest memory and the dirty log', () => {
  const GUEST = 16 * LOG_PAGE_SIZE;

  function setup(base: bigint, size: bigint) {
    const guest = new Uint8Array(GUEST);
    const d = large();
    d.attachDma({
      write: (iova, data) => guest.set(data, Number(iova)),
      read: (iova, n) => guest.slice(Number(iova), Number(iova) + n),
    });
    d.configureDma(base, size);
    return { d, guest };
  }

  /** The guest pages the records numbered [from, to) land on, for a ring at `base` of `size` bytes. */
  function pagesOf(base: number, size: number, from: number, to: number): Set<number> {
    const pages = new Set<number>();
    for (let n = from; n < to; n++) {
      const at = base + ((n * 64) % (size - (size % 64)));
      pages.add(Math.floor(at / LOG_PAGE_SIZE));
      pages.add(Math.floor((at + 63) / LOG_PAGE_SIZE));
    }
    return pages;
  }

  function dirtyPages(d: LargeMemoryDevice): Set<number> {
    const out = new Uint8Array(GUEST / LOG_PAGE_SIZE / 8);
    d.dirtyLog.readAndClear({ firstPage: 0, pagesPerPfn: 1, count: GUEST / LOG_PAGE_SIZE }, out);
    const s = new Set<number>();
    for (let p = 0; p < GUEST / LOG_PAGE_SIZE; p++) if ((out[p >> 3]! >> (p & 7)) & 1) s.add(p);
    return s;
  }

  test('each unit of work writes one 64-byte record into the ring; DMA_COUNT counts them', () => {
    const base = 3 * LOG_PAGE_SIZE - 128; // the ring straddles a page boundary
    const { d, guest } = setup(BigInt(base), 256n);
    d.step(6);
    assert.equal(u64(d.bars[0]!.read(LargeMemoryRegs.DMA_COUNT, 8)), 6n);
    // 4 slots; records 4 and 5 overwrote slots 0 and 1. Each record starts with its work count.
    const counts = [0, 1, 2, 3].map((s) => u64(guest.subarray(base + 64 * s, base + 64 * s + 8)));
    assert.deepEqual(counts, [5n, 6n, 3n, 4n]);
    assert.ok(
      guest.subarray(0, base).every((x) => x === 0),
      'nothing written before the ring',
    );
    assert.ok(
      guest.subarray(base + 256).every((x) => x === 0),
      'nothing written after the ring',
    );
    d.close();
  });

  test('the dirty log is marked only while tracking (between start() and stop())', () => {
    fc.assert(
      fc.property(
        fc.nat(GUEST / 2),
        fc.integer({ min: 64, max: GUEST / 2 }),
        fc.nat(40),
        fc.integer({ min: 1, max: 40 }),
        fc.nat(40),
        (base, size, before, during, after) => {
          const { d, guest } = setup(BigInt(base), BigInt(size));
          d.step(before);
          assert.equal(d.dirtyLog.countPages(), 0, 'no marks before tracking starts');
          assert.ok(before === 0 || guest.some((x) => x !== 0), 'but the DMA did happen');
          d.dirtyLog.start();
          d.step(during);
          assert.deepEqual(dirtyPages(d), pagesOf(base, size, before, before + during));
          d.step(during);
          d.dirtyLog.stop();
          d.step(after);
          assert.equal(d.dirtyLog.countPages(), 0, 'no marks after tracking stops');
          assert.equal(u64(d.bars[0]!.read(LargeMemoryRegs.DMA_COUNT, 8)), BigInt(before + 2 * during + after));
          d.close();
        },
      ),
      { numRuns: 50 },
    );
  });

  test('no DMA while the device is stopped, and none without a port', () => {
    const { d, guest } = setup(0n, 4096n);
    d.dirtyLog.start();
    d.migration.transition(RUNNING, PRECOPY);
    d.step(3);
    assert.equal(d.dirtyLog.countPages(), 1);
    d.migration.transition(PRECOPY, SAVING);
    const snapshot = guest.slice();
    d.step(10);
    assert.deepEqual(guest, snapshot);
    assert.equal(u64(d.bars[0]!.read(LargeMemoryRegs.DMA_COUNT, 8)), 3n);
    d.close();

    const lone = large();
    lone.configureDma(0n, 4096n);
    lone.dirtyLog.start();
    lone.step(5);
    assert.equal(lone.dirtyLog.countPages(), 0);
    assert.equal(u64(lone.bars[0]!.read(LargeMemoryRegs.DMA_COUNT, 8)), 0n);
    lone.close();
  });
});

describe('large-memory: memory the device never wrote is never read', () => {
  // Reading untouched memory faults pages in: the shared zero page on most kernels, a freshly allocated
  // and cleared page where there is none (some paravirtual guests). Either way every fault is counted.
  const minorFaults = () => process.resourceUsage().minorPageFault;

  test('saving a fresh device and resuming it in another fault in almost none of their memory', () => {
    const memSize = 64 << 20;
    const pages = memSize / 4096;
    const src = large({ memSize });
    const dst = large({ memSize });
    const f0 = minorFaults();
    const { stream, digestAtStop } = save(src, [1 << 20], [0], 0);
    resume(dst, stream, [1 << 20]);
    assert.equal(dst.stateDigest(), digestAtStop, 'the resumed device is the saved one');
    const faults = minorFaults() - f0;
    assert.ok(faults < pages / 4, `${faults} page faults for two devices of ${pages} pages each`);
    const zeroRecords = records(stream).filter((r) => r.h.kind === RecordKind.ZERO).length;
    assert.equal(zeroRecords, memSize / BLOCK, 'every block went as a ZERO record');
    src.close();
    dst.close();
  });

  test('a block the destination wrote before resuming is cleared by a ZERO record', () => {
    const src = large();
    const dst = large({ seed: 9 });
    dst.step(500); // its own work: random slots all over its memory
    dst.bars[2]!.write(3 * BLOCK + 5, Uint8Array.of(1, 2, 3));
    src.bars[2]!.write(7 * BLOCK, Uint8Array.of(4)); // one block of the saved state is not zero
    const { stream, digestAtStop } = save(src, [1 << 20], [0], 0);
    resume(dst, stream, [70_000]);
    assert.equal(dst.stateDigest(), digestAtStop);
    assert.deepEqual(dst.memory, src.memory);
    src.close();
    dst.close();
  });

  test('the digest and reset treat written and never-written blocks alike', () => {
    const d = large();
    d.step(20);
    d.bars[2]!.write(MEM - 3, Uint8Array.of(7, 8, 9));
    const bar0 = d.bars[0]!;
    const regs = concat([
      bar0.read(0, LargeMemoryRegs.DIGEST),
      new Uint8Array(32), // the digest register holds nothing: it is computed when read
      bar0.read(LargeMemoryRegs.DIGEST + 32, LargeMemoryRegs.SIZE - LargeMemoryRegs.DIGEST - 32),
    ]);
    const plain = createHash('sha256').update(d.memory).update(regs).digest();
    assert.deepEqual(Buffer.from(bar0.read(LargeMemoryRegs.DIGEST, 32)), plain);
    assert.equal(d.stateDigest(), plain.toString('hex'));
    d.reset();
    assert.ok(
      d.memory.every((x) => x === 0),
      'reset clears the memory the device wrote',
    );
    const regsAfter = bar0.read(0, LargeMemoryRegs.SIZE);
    regsAfter.fill(0, LargeMemoryRegs.DIGEST, LargeMemoryRegs.DIGEST + 32);
    assert.equal(d.stateDigest(), createHash('sha256').update(d.memory).update(regsAfter).digest('hex'));
    d.close();
  });
});
