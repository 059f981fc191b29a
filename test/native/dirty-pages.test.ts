// Taking dirty pages for multifd a batch at a time (native/src/dirtypages.c through
// GuestMemory.takeDirtyPages) against a JS model of the RAM saver's loop: which words are consumed, which
// marks are cleared, which pages go as zero pages and which with their contents, in order, where it
// stops (queue room, page budget, end of a mapping piece), bits past the end of RAM, memfd holes found
// without allocating them; the JavaScript path for mappings in pieces smaller than a word gives the same
// answers; bad arguments are refused before any mark is taken; a file lseek cannot answer for is scanned.
import assert from 'node:assert/strict';
import { fstatSync } from 'node:fs';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { native } from '../../src/native/addon.ts';
import { GuestMemory, type PageQueue } from '../../src/vmm/guest/guest-memory.ts';

const PAGE = 4096;
const PAGES = 200; // 6 whole words and 8 pages of a seventh

function queue(capacity: number, normal = 0, zero = 0): PageQueue {
  return {
    normal: new Float64Array(capacity),
    zero: new Float64Array(capacity),
    queued: Uint32Array.of(normal, zero),
    capacity,
  };
}

interface Model {
  consumed: number;
  normal: number[];
  zero: number[];
  log: number[];
}

/** What takeDirtyPages should do: the loop of native/src/dirtypages.c, written plainly. */
function model(
  log: number[],
  from: number,
  words: number,
  data: Set<number>,
  q: { capacity: number; normal: number; zero: number },
  maxPages: number,
  piecePages: number,
): Model {
  const out = { consumed: 0, normal: [] as number[], zero: [] as number[], log: [...log] };
  // The native path stops at the end of the piece the words start in.
  const end =
    piecePages >= 32
      ? Math.min(from + words, (Math.floor((from * 32) / piecePages) + 1) * (piecePages / 32))
      : from + words;
  let taken = 0;
  let w = from;
  for (; w < end; w++) {
    if (taken >= Math.max(1, maxPages) || q.capacity - q.normal - q.zero - out.normal.length - out.zero.length < 32)
      break;
    const bits = out.log[w]!;
    out.log[w] = 0;
    for (let b = 0; b < 32; b++) {
      const page = w * 32 + b;
      if (!((bits >>> b) & 1) || page >= PAGES) continue;
      (data.has(page) ? out.normal : out.zero).push(page * PAGE);
      taken++;
    }
  }
  out.consumed = w - from;
  return out;
}

describe('takeDirtyPages', () => {
  test('agrees with the model: words consumed, marks cleared, pages sorted in order, holes not allocated', () => {
    const word = fc.oneof(fc.constant(0), fc.constant(-1), fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }));
    fc.assert(
      fc.property(
        fc.constantFrom(undefined, 64 * PAGE, 8 * PAGE),
        fc.uniqueArray(fc.integer({ min: 0, max: PAGES - 1 }), { maxLength: 120 }),
        fc.uniqueArray(fc.integer({ min: 0, max: PAGES - 1 }), { maxLength: 40 }),
        fc.array(word, { minLength: 7, maxLength: 7 }),
        fc.integer({ min: 0, max: 6 }),
        fc.integer({ min: 1, max: 7 }),
        fc.integer({ min: 32, max: 260 }),
        fc.integer({ min: 0, max: 40 }),
        fc.integer({ min: 1, max: 300 }),
        (pieceSize, dataPages, zeroWritten, words, from, count, capacity, already, maxPages) => {
          const m = GuestMemory.create(PAGES * PAGE, 'dirty-pages', pieceSize ? { pieceSize } : {});
          try {
            const data = new Set(dataPages);
            for (const p of data) m.page(p)[(p * 31) % PAGE] = (p % 255) + 1;
            // Written with zeroes: data in the memfd, zero pages to the scan.
            for (const p of zeroWritten) if (!data.has(p)) m.page(p).fill(0);
            const log = new Int32Array(new SharedArrayBuffer(7 * 4));
            log.set(words);
            const n = Math.min(count, 7 - from);
            const pre = Math.min(already, capacity);
            const q = queue(capacity, pre, 0);
            const want = model(
              words,
              from,
              n,
              data,
              { capacity, normal: pre, zero: 0 },
              maxPages,
              (pieceSize ?? 2 ** 30) / PAGE,
            );
            const blocks = fstatSync(m.fd).blocks;
            const got = m.takeDirtyPages(log, from, n, q, maxPages);
            const where = `piece ${pieceSize}, from ${from}, ${n} words, capacity ${capacity}, max ${maxPages}`;
            assert.equal(got, want.consumed, `words consumed: ${where}`);
            assert.deepEqual([...log], want.log, `the log afterwards: ${where}`);
            assert.deepEqual([...q.normal.subarray(pre, q.queued[0])], want.normal, `normal pages: ${where}`);
            assert.deepEqual([...q.zero.subarray(0, q.queued[1])], want.zero, `zero pages: ${where}`);
            assert.equal(fstatSync(m.fd).blocks, blocks, `no hole was allocated: ${where}`);
          } finally {
            m.close();
          }
        },
      ),
      { numRuns: 150 },
    );
  });

  test('a whole pass over a guest in several pieces, a batch at a time, takes every marked page once', () => {
    const pages = 4096;
    const m = GuestMemory.create(pages * PAGE, 'dirty-pass', { pieceSize: 1024 * PAGE });
    try {
      const log = new Int32Array(new SharedArrayBuffer(pages / 8));
      for (let p = 0; p < pages; p++) {
        if (p % 3 === 0) m.page(p)[0] = 1;
        if (p % 5 !== 0) Atomics.or(log, p >>> 5, 1 << (p & 31));
      }
      const seen = new Set<number>();
      for (let w = 0; w < log.length; ) {
        const q = queue(1024);
        w += m.takeDirtyPages(log, w, log.length - w, q, Number.POSITIVE_INFINITY);
        for (const o of q.normal.subarray(0, q.queued[0])) {
          assert.equal((o / PAGE) % 3, 0, `page ${o / PAGE} holds data`);
          seen.add(o / PAGE);
        }
        for (const o of q.zero.subarray(0, q.queued[1])) {
          assert.notEqual((o / PAGE) % 3, 0, `page ${o / PAGE} is zero`);
          seen.add(o / PAGE);
        }
      }
      let marked = 0;
      for (let p = 0; p < pages; p++) if (p % 5 !== 0) marked++;
      assert.equal(seen.size, marked);
      assert.ok(
        log.every((v) => v === 0),
        'every mark taken',
      );
    } finally {
      m.close();
    }
  });

  test('bad arguments are refused before any mark is taken', () => {
    const n = native();
    const mem = new Uint8Array(64 * PAGE);
    const log = new Int32Array(new SharedArrayBuffer(16)).fill(-1);
    const ext = new Float64Array(2);
    const f = new Float64Array(64);
    const call = (
      o: Partial<{
        from: number;
        words: number;
        pages: number;
        memFirst: number;
        capacity: number;
        queued: Uint32Array;
      }>,
    ) =>
      n.takeDirtyPages(
        log,
        o.from ?? 0,
        o.words ?? 2,
        o.pages ?? 128,
        mem,
        o.memFirst ?? 0,
        -1,
        ext,
        f,
        f,
        o.queued ?? new Uint32Array(2),
        o.capacity ?? 64,
        64,
      );
    assert.throws(() => call({ words: 5 }), /RangeError: words 0\+5 are outside the 4-word log/);
    assert.throws(() => call({ pages: 129 + 3 * 32 }), /RangeError: 225 pages do not fit a 4-word log/);
    assert.throws(
      () => call({ from: 2 }),
      /RangeError: pages 64\.\.127 are outside the 262144 bytes mapped from page 0/,
    );
    assert.throws(() => call({ memFirst: 1 }), /RangeError: pages 0\.\.63 are outside/);
    assert.throws(() => call({ capacity: 65 }), /RangeError: capacity 65 exceeds the lists/);
    assert.throws(
      () => call({ queued: Uint32Array.of(40, 30) }),
      /RangeError: 40 \+ 30 pages queued exceed the capacity 64/,
    );
    assert.throws(() => call({ queued: new Uint32Array(1) }), /RangeError: queued has 1 elements/);
    assert.throws(
      () => n.takeDirtyPages(new Uint32Array(4) as never, 0, 1, 32, mem, 0, -1, ext, f, f, new Uint32Array(2), 64, 64),
      /TypeError: log must be an Int32Array/,
    );
    assert.deepEqual([...log], [-1, -1, -1, -1], 'no mark taken');
    for (const pieceSize of [undefined, 8 * PAGE]) {
      const m = GuestMemory.create(128 * PAGE, 'dirty-bad', pieceSize ? { pieceSize } : {});
      try {
        const short = { ...queue(64), capacity: 65 };
        assert.throws(() => m.takeDirtyPages(log, 0, 1, short, 64), /RangeError: queue capacity 65 exceeds its lists/);
        assert.throws(
          () => m.takeDirtyPages(log, 4, 1, queue(64), 64),
          /RangeError/,
          'word 4 names page 128, past RAM',
        );
      } finally {
        m.close();
      }
    }
    assert.deepEqual([...log], [-1, -1, -1, -1], 'no mark taken');
    // The last partial word's pages past `pages` need not be mapped: they name no page.
    assert.equal(call({ from: 1, words: 1, pages: 40 }), 1);
    assert.deepEqual([...log], [-1, 0, -1, -1]);
  });

  test('a file lseek cannot answer for: the taken pages are scanned, and the failure is reported', () => {
    const n = native();
    const [r, w] = n.socketpair();
    try {
      const mem = new Uint8Array(32 * PAGE);
      mem[3 * PAGE] = 1;
      const log = new Int32Array(new SharedArrayBuffer(4)).fill(0b1111);
      const q = queue(64);
      // -1 - 1: one word consumed, holes not looked for.
      assert.equal(
        n.takeDirtyPages(log, 0, 1, 32, mem, 0, r, new Float64Array(2), q.normal, q.zero, q.queued, 64, 64),
        -2,
      );
      assert.deepEqual([...q.normal.subarray(0, q.queued[0])], [3 * PAGE]);
      assert.deepEqual([...q.zero.subarray(0, q.queued[1])], [0, PAGE, 2 * PAGE]);
      assert.equal(log[0], 0);
    } finally {
      n.close(r);
      n.close(w);
    }
  });
});
