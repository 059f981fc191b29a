// The shared dirty log: bit operations against a plain Set model, word-at-a-time takes, runs, merges,
// device reports through `sink`, the scans bench/dirty-log.ts times (their results, not their speed), and the property that matters: with writer threads
// hammering it while the main thread takes words, no mark is ever lost.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { type DirtyRun, GuestDirtyBitmap } from '../../../src/vmm/guest/dirty-bitmap.ts';
import { until } from '../../support/until.ts';
import { sleep, tsWorker } from '../support.ts';

function pagesOf(b: GuestDirtyBitmap): number[] {
  const out: number[] = [];
  for (let p = 0; p < b.pages; p++) if (b.has(p)) out.push(p);
  return out;
}

function expand(runs: Iterable<DirtyRun>): number[] {
  const out: number[] = [];
  for (const r of runs) for (let i = 0; i < r.count; i++) out.push(r.first + i);
  return out;
}

describe('GuestDirtyBitmap', () => {
  test('set, has, count, setAll, clear, takeWord', () => {
    const b = new GuestDirtyBitmap(70);
    assert.equal(b.wordCount, 3);
    assert.equal(b.buffer.byteLength, 12);
    assert.equal(b.count(), 0);
    assert.ok(b.isEmpty());
    for (const p of [0, 31, 32, 69]) b.set(p);
    assert.deepEqual(pagesOf(b), [0, 31, 32, 69]);
    assert.equal(b.count(), 4);
    assert.throws(() => b.set(70), RangeError);
    assert.throws(() => b.set(-1), RangeError);
    assert.equal(b.has(70), false);
    assert.equal(b.takeWord(0) >>> 0, 0x80000001);
    assert.equal(b.takeWord(0), 0);
    assert.deepEqual(pagesOf(b), [32, 69]);
    b.setAll();
    assert.equal(b.count(), 70, 'setAll marks no padding bits');
    assert.equal(b.takeWord(2), 0b111111);
    b.clear();
    assert.ok(b.isEmpty());
    b.setRange(30, 5);
    assert.deepEqual(pagesOf(b), [30, 31, 32, 33, 34]);
    assert.throws(() => b.setRange(60, 11), RangeError);
    assert.throws(() => new GuestDirtyBitmap(100, 0n, new SharedArrayBuffer(8)), RangeError);
  });

  test('a second GuestDirtyBitmap over the same buffer shares the bits (what a vCPU worker does)', () => {
    const a = new GuestDirtyBitmap(1000);
    const b = new GuestDirtyBitmap(1000, 0n, a.buffer);
    b.set(777);
    assert.ok(a.has(777));
    assert.equal(GuestDirtyBitmap.bytesFor(1000), 128);
  });

  test('forEachDirtyAndClear, takeRuns and count agree with a model (property)', () => {
    fc.assert(
      fc.property(
        fc
          .integer({ min: 1, max: 300 })
          .chain((pages) =>
            fc.tuple(
              fc.constant(pages),
              fc.uniqueArray(fc.integer({ min: 0, max: pages - 1 })),
              fc.integer({ min: 1, max: 80 }),
            ),
          ),
        ([pages, set, maxRun]) => {
          const sorted = [...set].sort((x, y) => x - y);
          const b = new GuestDirtyBitmap(pages);
          for (const p of set) b.set(p);
          assert.equal(b.count(), set.length);
          assert.deepEqual(pagesOf(b), sorted);
          const runs = [...b.takeRuns(maxRun)];
          assert.ok(b.isEmpty(), 'takeRuns clears what it takes');
          assert.deepEqual(expand(runs), sorted);
          for (const [i, r] of runs.entries()) {
            assert.ok(r.count >= 1 && r.count <= maxRun);
            const prev = runs[i - 1];
            // Runs are maximal except where maxRun split them.
            if (prev && prev.first + prev.count === r.first) assert.equal(prev.count, maxRun);
          }
          for (const p of set) b.set(p);
          const seen: number[] = [];
          assert.equal(
            b.forEachDirtyAndClear((p) => seen.push(p)),
            set.length,
          );
          assert.deepEqual(seen, sorted);
          assert.ok(b.isEmpty());
        },
      ),
      { numRuns: 500 },
    );
  });

  test('takeRuns over a full word and across word seams', () => {
    const b = new GuestDirtyBitmap(200);
    b.setRange(0, 32);
    b.setRange(40, 60); // 40..99: across words 1, 2, 3
    b.set(130);
    assert.deepEqual(
      [...b.takeRuns()],
      [
        { first: 0, count: 32 },
        { first: 40, count: 60 },
        { first: 130, count: 1 },
      ],
    );
    b.setAll();
    assert.deepEqual(
      [...b.takeRuns(64)].map((r) => r.count),
      [64, 64, 64, 8],
    );
  });

  test('a page marked while takeRuns is walking is taken by it or left set, never lost', () => {
    const b = new GuestDirtyBitmap(256);
    b.set(10);
    const it = b.takeRuns();
    assert.deepEqual(it.next().value, { first: 10, count: 1 });
    b.set(5); // behind the walk: stays for the next pass
    b.set(200); // ahead of it: taken by this walk
    assert.deepEqual(expand(it), [200]);
    assert.deepEqual(pagesOf(b), [5]);
  });

  test('merge ORs another log in; with take it moves the marks', () => {
    const a = new GuestDirtyBitmap(100);
    const b = new GuestDirtyBitmap(100);
    a.set(1);
    b.set(1);
    b.set(99);
    a.merge(b);
    assert.deepEqual(pagesOf(a), [1, 99]);
    assert.deepEqual(pagesOf(b), [1, 99]);
    a.clear();
    a.merge(b, { take: true });
    assert.deepEqual(pagesOf(a), [1, 99]);
    assert.ok(b.isEmpty());
    assert.throws(() => a.merge(new GuestDirtyBitmap(101)), RangeError);
  });

  test('sink: device reports (LSB-first bytes or "all"), at any pfn alignment, relative to basePfn', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 100 }),
        fc.integer({ min: 0, max: 150 }),
        fc.uint8Array({ minLength: 19, maxLength: 19 }),
        (first, count, bits) => {
          const b = new GuestDirtyBitmap(256, 0x1000n);
          b.set(255);
          b.sink(0x1000n + BigInt(first), count, bits);
          const want = new Set([255]);
          for (let i = 0; i < count; i++) if ((bits[i >>> 3]! >>> (i & 7)) & 1) want.add(first + i);
          assert.deepEqual(
            pagesOf(b),
            [...want].sort((x, y) => x - y),
          );
        },
      ),
      { numRuns: 500 },
    );
    const b = new GuestDirtyBitmap(256, 0x1000n);
    b.sink(0x1000n + 3n, 40, 'all');
    assert.deepEqual(
      pagesOf(b),
      Array.from({ length: 40 }, (_, i) => 3 + i),
    );
    assert.throws(() => b.sink(0xfffn, 1, 'all'), RangeError);
    assert.throws(() => b.sink(0x1000n + 250n, 7, 'all'), RangeError);
  });

  test('at 1 GiB and 4 GiB (and a size off a word seam): empty scans find nothing, merge and setAll mark every page, takeRuns(256) takes each once', () => {
    // What bench/dirty-log.ts times, asserted here: the same calls on the same sizes, their results exact.
    for (const pages of [262144, 1048576, 1048576 + 5]) {
      const b = new GuestDirtyBitmap(pages);
      let visited = 0;
      assert.equal(
        b.forEachDirtyAndClear(() => visited++),
        0,
      );
      assert.equal(visited, 0, `${pages}: an empty scan visits no page`);
      assert.deepEqual([...b.takeRuns()], [], `${pages}: an empty takeRuns yields no run`);
      assert.equal(b.count(), 0);

      const full = new GuestDirtyBitmap(pages);
      full.setAll();
      assert.equal(full.count(), pages, `${pages}: setAll marks every page and nothing past the last`);
      b.merge(full);
      assert.equal(b.count(), pages, `${pages}: merging a full log marks every page`);
      assert.equal(full.count(), pages, 'merge without take leaves the other log as it was');
      assert.equal(
        b.forEachDirtyAndClear(() => visited++),
        pages,
      );
      assert.equal(visited, pages, `${pages}: a scan of a full log visits every page`);
      assert.equal(b.count(), 0, 'and clears them');

      b.setAll();
      let next = 0;
      let runs = 0;
      for (const r of b.takeRuns(256)) {
        assert.equal(r.first, next, `${pages}: runs in order, no page skipped or repeated`);
        assert.ok(r.count >= 1 && r.count <= 256, `${pages}: a run of ${r.count} pages, at most 256`);
        next += r.count;
        runs++;
      }
      assert.equal(next, pages, `${pages}: takeRuns(256) covers every page once`);
      assert.equal(runs, Math.ceil(pages / 256), `${pages}: full runs of 256 but the last`);
      assert.equal(b.count(), 0, `${pages}: takeRuns leaves the log empty`);
    }
  });

  // Takes every dirty page one of three ways (forEachDirtyAndClear, takeRuns, takeWord), calling onPage.
  function takeAll(b: GuestDirtyBitmap, how: number, onPage: (p: number) => void): void {
    if (how === 0) b.forEachDirtyAndClear(onPage);
    else if (how === 1) {
      for (const r of b.takeRuns(7)) for (let p = r.first; p < r.first + r.count; p++) onPage(p);
    } else {
      for (let w = 0; w < b.wordCount; w++) {
        let bits = b.takeWord(w);
        while (bits !== 0) {
          const low = bits & -bits;
          bits ^= low;
          onPage(w * 32 + 31 - Math.clz32(low));
        }
      }
    }
  }

  interface Hammer {
    b: GuestDirtyBitmap;
    contents: Int32Array;
    control: Int32Array;
    done: () => boolean;
    writes: () => number;
    stop: () => Promise<void>;
  }

  function hammer(mode: 'random' | 'once', pages: number, writers: number): Hammer {
    const b = new GuestDirtyBitmap(pages);
    const contents = new Int32Array(new SharedArrayBuffer(4 * pages));
    const control = new Int32Array(new SharedArrayBuffer(4 * 16));
    const workers = Array.from({ length: writers }, (_, id) =>
      tsWorker(new URL('./fixtures/bitmap-hammer.ts', import.meta.url), {
        mode,
        id,
        writers,
        pages,
        bitmap: b.buffer,
        contents: contents.buffer,
        control: control.buffer,
        seed: 12345 + id * 977,
      }),
    );
    const exits = workers.map((w) => once(w, 'exit'));
    const acked = () => workers.every((_, id) => Atomics.load(control, 1 + id) === 1);
    return {
      b,
      contents,
      control,
      done: acked,
      writes: () => workers.reduce((n, _, id) => n + Atomics.load(control, 8 + id), 0),
      stop: async () => {
        Atomics.store(control, 0, 1);
        Atomics.store(control, 15, 1); // open the gate, should a test have failed before it did
        Atomics.notify(control, 15);
        await Promise.all(workers.map((w) => w.terminate()));
        await Promise.all(exits);
      },
    };
  }

  test('writers marking every page once while the main thread takes: each page is taken exactly once', async () => {
    // No page is written twice, so a mark lost to a race (a take that cleared a bit it did not return)
    // could not be made good by a later write: the page would never be taken.
    const pages = 2 ** 21;
    const h = hammer('once', pages, 2);
    try {
      const taken = new Uint8Array(pages);
      let takes = 0;
      let during = 0;
      // Both writers wait half-way: a take now finds their marks while they are not done.
      await until(() => Atomics.load(h.control, 12) === 1 && Atomics.load(h.control, 13) === 1, 'writers half-way', {
        ms: 120_000,
        everyMs: 1,
      });
      takeAll(h.b, takes++ % 3, (p) => {
        taken[p]!++;
        during++;
      });
      Atomics.store(h.control, 15, 1);
      Atomics.notify(h.control, 15);
      while (!h.done()) {
        takeAll(h.b, takes++ % 3, (p) => {
          taken[p]!++;
          during++;
        });
        if (takes % 8 === 0) await sleep(0);
      }
      takeAll(h.b, 0, (p) => taken[p]!++);
      let missing = 0;
      let twice = 0;
      for (let p = 0; p < pages; p++) {
        if (taken[p] === 0) missing++;
        else if (taken[p]! > 1) twice++;
      }
      console.log(
        `# ${pages} pages marked once by 2 threads: ${takes} scans took ${during} of them while marks landed`,
      );
      assert.equal(h.writes(), pages);
      assert.ok(during > 0, 'takes overlapped the writers');
      assert.equal(missing, 0, 'pages whose mark was lost');
      assert.equal(twice, 0, 'pages taken twice');
    } finally {
      await h.stop();
    }
  });

  test('writers hammering random pages while the main thread takes and copies: every final write is copied', async () => {
    // The RAM saver's invariant: after the writers stop and one last take, the copy of each page, made
    // after each take of its bit, equals the page's final contents.
    for (const pages of [64, 5000]) {
      const h = hammer('random', pages, 2);
      try {
        const copy = new Int32Array(pages);
        let fresh = 0; // copies that found a write newer than the last copy: writes racing the takes
        const copyPage = (p: number) => {
          const v = Atomics.load(h.contents, p);
          if (v !== copy[p]) fresh++;
          copy[p] = v;
        };
        while (h.contents.every((v) => v === 0)) await sleep(5);
        let takes = 0;
        // Until the takes have met enough racing writes, however slow the machine (the writers publish
        // their count only when they stop, so the copies count them); the deadline is a safety net only.
        const deadline = performance.now() + 120_000;
        while ((takes <= 300 || fresh <= 1000) && performance.now() < deadline) {
          for (let k = 0; k < 50; k++) takeAll(h.b, takes++ % 3, copyPage);
          await sleep(0);
        }
        Atomics.store(h.control, 0, 1);
        while (!h.done()) await sleep(1);
        takeAll(h.b, 0, copyPage);
        let stale = 0;
        for (let p = 0; p < pages; p++) if (copy[p] !== h.contents[p]) stale++;
        console.log(
          `# ${pages} pages: ${h.writes()} writes by 2 threads against ${takes} takes (${fresh} fresh copies)`,
        );
        assert.ok(takes > 300 && fresh > 1000, 'both sides ran, at the same time');
        assert.equal(stale, 0, 'pages whose last write no take saw');
      } finally {
        await h.stop();
      }
    }
  });
});
