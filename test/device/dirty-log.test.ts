// DirtyPageLog against a reference model (a plain set of 4 KiB page numbers): random sequences of marks,
// counts, read-and-clear reports and clears, at IOVAs near 0, near the 32768-page chunk boundaries and
// near the top of the 64-bit IOVA space (page numbers close to 2^52), with 1, 2 and 16 pages per pfn.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { DirtyPageLog, LOG_PAGE_SHIFT, LOG_PAGE_SIZE, type PfnRange } from '../../src/device/dirty-log.ts';

const CHUNK_PAGES = 32768;
const TOP_PAGE = 2 ** 52; // first page number past the 64-bit IOVA space

/** The reference: which pages are dirty, and whether the log is on. */
class Model {
  readonly pages = new Set<number>();
  tracking = false;

  start(): void {
    this.pages.clear();
    this.tracking = true;
  }
  stop(): void {
    this.pages.clear();
    this.tracking = false;
  }
  mark(iova: bigint, length: number): void {
    if (!this.tracking || length <= 0) return;
    const first = iova >> BigInt(LOG_PAGE_SHIFT);
    const last = (iova + BigInt(length) - 1n) >> BigInt(LOG_PAGE_SHIFT);
    for (let p = first; p <= last; p++) this.pages.add(Number(p));
  }
  pfnDirty(r: PfnRange, pfn: number): boolean {
    for (let j = 0; j < r.pagesPerPfn; j++) if (this.pages.has(r.firstPage + pfn * r.pagesPerPfn + j)) return true;
    return false;
  }
  countDirtyPfns(r: PfnRange): number {
    let n = 0;
    for (let i = 0; i < r.count; i++) if (this.pfnDirty(r, i)) n++;
    return n;
  }
  bitmap(r: PfnRange): Uint8Array {
    const out = new Uint8Array(Math.ceil(r.count / 8));
    for (let i = 0; i < r.count; i++) if (this.pfnDirty(r, i)) out[i >>> 3]! |= 1 << (i & 7);
    return out;
  }
  clear(r: PfnRange): void {
    const end = r.firstPage + r.count * r.pagesPerPfn;
    for (const p of [...this.pages]) if (p >= r.firstPage && p < end) this.pages.delete(p);
  }
}

/** Interesting page neighbourhoods: the bottom, chunk boundaries, far away, and the top of IOVA space. */
const CENTERS = [0, CHUNK_PAGES, 2 * CHUNK_PAGES, 5 * CHUNK_PAGES, 2 ** 35, 2 ** 40 + CHUNK_PAGES, TOP_PAGE - 400];

const pageNear = fc
  .tuple(fc.constantFrom(...CENTERS), fc.integer({ min: -300, max: 300 }))
  .map(([c, d]) => Math.min(TOP_PAGE - 1, Math.max(0, c + d)));

type Op =
  | { op: 'mark'; iova: bigint; length: number; asBigint: boolean }
  | { op: 'count' }
  | { op: 'countPfns'; range: PfnRange }
  | { op: 'readAndClear'; range: PfnRange; slack: number }
  | { op: 'clear'; range: PfnRange }
  | { op: 'start' }
  | { op: 'stop' };

const markOp: fc.Arbitrary<Op> = fc
  .tuple(pageNear, fc.nat(LOG_PAGE_SIZE - 1), fc.integer({ min: -1, max: 300 * LOG_PAGE_SIZE }), fc.boolean())
  .map(([page, within, length, asBigint]) => {
    const iova = BigInt(page) * BigInt(LOG_PAGE_SIZE) + BigInt(within);
    // Stay inside the 64-bit IOVA space; a number IOVA only where it is exact.
    const room = Number((1n << 64n) - iova);
    const len = Math.min(length, room);
    return { op: 'mark' as const, iova, length: len, asBigint: asBigint || iova >= BigInt(Number.MAX_SAFE_INTEGER) };
  });

const rangeArb: fc.Arbitrary<PfnRange> = fc
  .record({ firstPage: pageNear, pagesPerPfn: fc.constantFrom(1, 2, 16), count: fc.nat(700) })
  .map((r) => ({ ...r }));

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 8, arbitrary: markOp },
  { weight: 1, arbitrary: fc.constant({ op: 'count' as const }) },
  { weight: 3, arbitrary: rangeArb.map((range) => ({ op: 'countPfns' as const, range })) },
  {
    weight: 3,
    arbitrary: fc.tuple(rangeArb, fc.nat(9)).map(([range, slack]) => ({ op: 'readAndClear' as const, range, slack })),
  },
  { weight: 2, arbitrary: rangeArb.map((range) => ({ op: 'clear' as const, range })) },
  { weight: 1, arbitrary: fc.constant({ op: 'start' as const }) },
  { weight: 1, arbitrary: fc.constant({ op: 'stop' as const }) },
);

function apply(log: DirtyPageLog, model: Model, o: Op): void {
  switch (o.op) {
    case 'mark':
      log.mark(o.asBigint ? o.iova : Number(o.iova), o.length);
      model.mark(o.iova, o.length);
      return;
    case 'count':
      assert.equal(log.countPages(), model.pages.size);
      return;
    case 'countPfns':
      assert.equal(log.countDirtyPfns(o.range), model.countDirtyPfns(o.range));
      return;
    case 'readAndClear': {
      const bytes = Math.ceil(o.range.count / 8);
      const out = new Uint8Array(bytes + o.slack).fill(0xa5); // stale contents must be overwritten
      log.readAndClear(o.range, out);
      assert.deepEqual(out.subarray(0, bytes), model.bitmap(o.range));
      assert.ok(
        out.subarray(bytes).every((b) => b === 0xa5),
        'bytes past ceil(count/8) are not touched',
      );
      model.clear(o.range);
      assert.equal(log.countDirtyPfns(o.range), 0, 'a reported range is clean');
      return;
    }
    case 'clear':
      log.clear(o.range);
      model.clear(o.range);
      return;
    case 'start':
      log.start();
      model.start();
      return;
    case 'stop':
      log.stop();
      model.stop();
      return;
  }
}

function range(firstPage: number, count: number, pagesPerPfn = 1): PfnRange {
  return { firstPage, count, pagesPerPfn };
}

describe('DirtyPageLog against a reference model', () => {
  test('random marks, counts, reports and clears agree with a set of pages', () => {
    fc.assert(
      fc.property(fc.boolean(), fc.array(opArb, { maxLength: 60 }), (startFirst, ops) => {
        const log = new DirtyPageLog();
        const model = new Model();
        if (startFirst) apply(log, model, { op: 'start' });
        for (const o of ops) {
          apply(log, model, o);
          assert.equal(log.isTracking, model.tracking);
        }
        assert.equal(log.countPages(), model.pages.size);
        // Finally, every neighbourhood reads back exactly, at each pfn size.
        for (const c of CENTERS) {
          for (const ppp of [1, 2, 16]) {
            const r = range(Math.max(0, c - 320), Math.ceil(640 / ppp) + 1, ppp);
            assert.equal(log.countDirtyPfns(r), model.countDirtyPfns(r));
          }
        }
      }),
      { numRuns: 300 },
    );
  });

  test('bitmap layout: bit n of byte n>>3 (LSB first) is pfn n; a pfn is dirty if any of its pages is', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.nat(255), { maxLength: 40 }),
        fc.constantFrom(1, 2, 16),
        fc.nat(CHUNK_PAGES * 3),
        (offsets, ppp, base) => {
          const log = new DirtyPageLog();
          log.start();
          for (const o of offsets) log.mark((base + o) * LOG_PAGE_SIZE, 1);
          const count = Math.ceil(256 / ppp);
          const out = new Uint8Array(Math.ceil(count / 8));
          log.readAndClear(range(base, count, ppp), out);
          const want = new Set(offsets.map((o) => Math.floor(o / ppp)));
          for (let pfn = 0; pfn < count; pfn++) {
            assert.equal((out[pfn >> 3]! >> (pfn & 7)) & 1, want.has(pfn) ? 1 : 0, `pfn ${pfn}`);
          }
          assert.equal(log.countPages(), 0);
        },
      ),
    );
  });
});

describe('DirtyPageLog rules', () => {
  test('nothing is tracked before start(); pages written before start() are not reported', () => {
    const log = new DirtyPageLog();
    assert.equal(log.isTracking, false);
    log.mark(0x1000, 4096);
    log.mark(0x5000n, 1);
    assert.equal(log.countPages(), 0);
    log.start();
    assert.equal(log.isTracking, true);
    assert.equal(log.countPages(), 0);
    assert.equal(log.countDirtyPfns(range(0, 16)), 0);
    log.mark(0x2000, 1);
    assert.equal(log.countPages(), 1);
  });

  test('start() begins with an empty log even if it was already tracking', () => {
    const log = new DirtyPageLog();
    log.start();
    log.mark(0, 10 * LOG_PAGE_SIZE);
    assert.equal(log.countPages(), 10);
    log.start();
    assert.equal(log.countPages(), 0);
  });

  test('stop() clears the log and stops tracking; a new start() reports only new writes', () => {
    const log = new DirtyPageLog();
    log.start();
    log.mark(0, 3 * LOG_PAGE_SIZE);
    log.stop();
    assert.equal(log.isTracking, false);
    assert.equal(log.countPages(), 0);
    log.mark(0, LOG_PAGE_SIZE);
    assert.equal(log.countPages(), 0, 'marks after stop() are dropped');
    log.start();
    assert.equal(log.countDirtyPfns(range(0, 3)), 0);
  });

  test('zero and negative lengths mark nothing', () => {
    const log = new DirtyPageLog();
    log.start();
    log.mark(0x1000, 0);
    log.mark(0x1000n, -5);
    assert.equal(log.countPages(), 0);
  });

  test('a byte range marks every page it touches, including partial first and last pages', () => {
    const log = new DirtyPageLog();
    log.start();
    log.mark(LOG_PAGE_SIZE - 1, 2); // last byte of page 0, first byte of page 1
    log.mark(10 * LOG_PAGE_SIZE + 5, LOG_PAGE_SIZE); // pages 10 and 11
    const out = new Uint8Array(2);
    log.readAndClear(range(0, 16), out);
    assert.deepEqual([...out], [0b0000_0011, 0b0000_1100]);
  });

  test('read-and-clear: reported pages are clean; a page written again is reported again', () => {
    const log = new DirtyPageLog();
    log.start();
    log.mark(5 * LOG_PAGE_SIZE, 1);
    log.mark(100 * LOG_PAGE_SIZE, 1); // outside the reported range
    const out = new Uint8Array(8);
    log.readAndClear(range(0, 64), out);
    assert.equal(out[0], 1 << 5);
    assert.equal(log.countPages(), 1, 'the page outside the range is still dirty');
    log.readAndClear(range(0, 64), out);
    assert.ok(
      out.every((b) => b === 0),
      'second report of the same range is empty',
    );
    log.mark(5 * LOG_PAGE_SIZE + 100, 8);
    log.readAndClear(range(0, 64), out);
    assert.equal(out[0], 1 << 5, 'rewritten page is reported again');
    assert.equal(log.countDirtyPfns(range(100, 1)), 1);
  });

  test('readAndClear refuses a buffer shorter than ceil(count/8) and then clears nothing', () => {
    const log = new DirtyPageLog();
    log.start();
    log.mark(0, 9 * LOG_PAGE_SIZE);
    assert.throws(() => log.readAndClear(range(0, 9), new Uint8Array(1)), RangeError);
    assert.equal(log.countPages(), 9);
    const ok = new Uint8Array(2);
    log.readAndClear(range(0, 9), ok);
    assert.deepEqual([...ok], [0xff, 0x01]);
  });

  test('countDirtyPfns does not clear', () => {
    const log = new DirtyPageLog();
    log.start();
    log.mark(0, 4 * LOG_PAGE_SIZE);
    assert.equal(log.countDirtyPfns(range(0, 2, 2)), 2);
    assert.equal(log.countDirtyPfns(range(0, 2, 2)), 2);
    assert.equal(log.countPages(), 4);
  });
});

describe('DirtyPageLog across 32768-page chunks', () => {
  test('a mark spanning a chunk boundary sets pages on both sides', () => {
    const log = new DirtyPageLog();
    log.start();
    log.mark((CHUNK_PAGES - 1) * LOG_PAGE_SIZE + 4000, 200); // last page of chunk 0, first of chunk 1
    assert.equal(log.countPages(), 2);
    assert.equal(log.countDirtyPfns(range(CHUNK_PAGES - 1, 1)), 1);
    assert.equal(log.countDirtyPfns(range(CHUNK_PAGES, 1)), 1);
    assert.equal(log.countDirtyPfns(range(CHUNK_PAGES - 1, 2)), 2);
    // one pfn of 2 pages straddling the boundary counts once
    assert.equal(log.countDirtyPfns(range(CHUNK_PAGES - 1, 1, 2)), 1);
  });

  test('a mark covering several whole chunks, then ranges partially covering them', () => {
    const log = new DirtyPageLog();
    log.start();
    const first = CHUNK_PAGES - 10;
    const pages = 2 * CHUNK_PAGES + 20; // chunk 0's tail, all of chunks 1 and 2, chunk 3's head
    log.mark(first * LOG_PAGE_SIZE, pages * LOG_PAGE_SIZE);
    assert.equal(log.countPages(), pages);
    // clear a range that covers chunk 1 whole and parts of chunks 0 and 2
    log.clear(range(CHUNK_PAGES - 5, CHUNK_PAGES + 10));
    assert.equal(log.countPages(), pages - (CHUNK_PAGES + 10));
    assert.equal(log.countDirtyPfns(range(first, 5)), 5);
    assert.equal(log.countDirtyPfns(range(CHUNK_PAGES - 5, CHUNK_PAGES + 10)), 0);
    assert.equal(log.countDirtyPfns(range(2 * CHUNK_PAGES + 5, 10)), 10);
    // read-and-clear a range that starts mid-chunk 2 and ends mid-chunk 3, in 16-page pfns
    const r = range(2 * CHUNK_PAGES + 8, Math.ceil((CHUNK_PAGES + 16) / 16), 16);
    const out = new Uint8Array(Math.ceil(r.count / 8));
    log.readAndClear(r, out);
    const model = new Model();
    model.start();
    model.mark(BigInt(first * LOG_PAGE_SIZE), pages * LOG_PAGE_SIZE);
    model.clear(range(CHUNK_PAGES - 5, CHUNK_PAGES + 10));
    assert.deepEqual(out, model.bitmap(r));
    model.clear(r);
    assert.equal(log.countPages(), model.pages.size);
    // mark again in a chunk whose words were partly cleared: counted once more
    log.mark(BigInt((2 * CHUNK_PAGES + 8) * LOG_PAGE_SIZE), 1);
    assert.equal(log.countPages(), model.pages.size + 1);
  });

  test('IOVAs near the top of the 64-bit space (page numbers near 2^52) as bigint', () => {
    const log = new DirtyPageLog();
    log.start();
    const lastByte = (1n << 64n) - 1n;
    log.mark(lastByte, 1); // page 2^52 - 1
    log.mark(lastByte - BigInt(LOG_PAGE_SIZE) * 3n - 10n, 20); // last 11 bytes of page 2^52-4, first 9 of 2^52-3
    assert.equal(log.countPages(), 3);
    const r = range(TOP_PAGE - 8, 8);
    assert.equal(log.countDirtyPfns(r), 3);
    const out = new Uint8Array(1);
    log.readAndClear(r, out);
    assert.equal(out[0], 0b1011_0000); // pfns 4, 5 and 7 of the range
    assert.equal(log.countPages(), 0);
    // and at 16 pages per pfn, the last pfn of the space
    log.mark(lastByte - 100n, 50);
    const top = new Uint8Array(1);
    log.readAndClear(range(TOP_PAGE - 32, 2, 16), top);
    assert.equal(top[0], 0b10);
  });
});
