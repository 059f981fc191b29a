// The synthetic guest, with real worker threads writing a real memfd: every write changes bytes and is
// marked; pause() really stops writes (memory hashed before and after a wait); resume() continues; a
// saver copying dirty pages while the guest runs ends with an identical copy; the write patterns; a dead
// vCPU fails pause() at once. Rates are printed, never asserted.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { GuestDirtyBitmap } from '../../../src/vmm/guest/dirty-bitmap.ts';
import { compareDigests, GuestMemory, PAGE_SIZE } from '../../../src/vmm/guest/guest-memory.ts';
import { Workload, type WorkloadOptions } from '../../../src/vmm/guest/workload.ts';
import { reservedRuns, unreservedPage } from '../../../src/vmm/guest/workload-control.ts';
import { until } from '../../support/until.ts';
import { sleep } from '../support.ts';

const MiB = 2 ** 20;

interface Guest {
  memory: GuestMemory;
  dirty: GuestDirtyBitmap;
  workload: Workload;
  close(): Promise<void>;
}

function guest(size: number, options: WorkloadOptions): Guest {
  const memory = GuestMemory.create(size, 'wl-test');
  const dirty = new GuestDirtyBitmap(memory.pages);
  const workload = new Workload(memory, dirty, options);
  return {
    memory,
    dirty,
    workload,
    close: async () => {
      await workload.stop();
      memory.close();
    },
  };
}

/** vCPU threads on a loaded machine are slow: a longer safety net than until's default. */
const VCPU_WAIT = { ms: 120_000, everyMs: 5 };

describe('Workload', () => {
  test('vCPUs change real bytes and mark exactly the pages they changed; pause stops them; resume goes on', async () => {
    const g = guest(16 * MiB, { vcpus: 2, pagesPerSecond: 20_000, pattern: 'random', seed: 7 });
    try {
      const { memory, dirty, workload } = g;
      await workload.ready();
      assert.equal(workload.isRunning, true);
      // Each vCPU thread is scheduled when the machine lets it: wait for both to have written, too.
      await until(
        () => workload.pagesWritten > 2000 && workload.stats().perVcpu.every((n) => n > 0),
        '2000 writes, some by each vCPU',
        VCPU_WAIT,
      );
      await workload.pause();
      assert.equal(workload.isRunning, false);
      const written = workload.pagesWritten;
      const st = workload.stats();
      assert.equal(st.total, written);
      assert.equal(st.perVcpu.length, 2);
      assert.ok(st.perVcpu.every((n) => n > 0));
      // Memory started all zero: the dirty log names exactly the pages that are no longer zero.
      let mismatched = 0;
      for (let p = 0; p < memory.pages; p++) if (memory.isZeroPage(p) === dirty.has(p)) mismatched++;
      assert.equal(mismatched, 0, 'pages written but not marked, or marked but unchanged');
      assert.ok(dirty.count() > 1000 && dirty.count() <= written);

      const before = memory.pageDigests();
      const marks = dirty.count();
      await sleep(300);
      assert.ok(compareDigests(before, memory.pageDigests()).equal, 'a paused guest wrote something');
      assert.equal(workload.pagesWritten, written);
      assert.equal(dirty.count(), marks);

      // Pausing again (no resume between) is fine and immediate.
      await workload.pause();

      dirty.clear();
      workload.resume();
      assert.equal(workload.isRunning, true);
      const t0 = performance.now();
      await until(() => workload.pagesWritten > written + 1000, '1000 more writes', VCPU_WAIT);
      await workload.pause();
      const after = memory.pageDigests();
      const c = compareDigests(before, after, 5);
      assert.ok(c.differing > 0);
      // Every page that changed since the first pause is marked (written after the log was cleared).
      for (let p = 0; p < memory.pages; p++) {
        const changed = Buffer.compare(before.subarray(p * 16, p * 16 + 16), after.subarray(p * 16, p * 16 + 16)) !== 0;
        if (changed) assert.ok(dirty.has(p), `page ${p} changed after resume but is not marked`);
      }
      console.log(
        `# resumed: ${workload.pagesWritten - written} writes in ${(performance.now() - t0).toFixed(0)} ms, ${c.differing} pages changed`,
      );
    } finally {
      await g.close();
    }
  });

  test('a saver copying dirty pages while the guest runs, then once more after pause, has an identical copy', async () => {
    // RAM pre-copy in miniature: the copy ends equal to the source page for page, whatever the vCPUs
    // did meanwhile, only if no write ever escapes the dirty log.
    const g = guest(32 * MiB, { vcpus: 2, pagesPerSecond: 400_000, pattern: 'hot', hotFraction: 0.05, seed: 3 });
    const copy = GuestMemory.create(32 * MiB, 'wl-copy');
    try {
      const { memory, dirty, workload } = g;
      await workload.ready();
      dirty.setAll();
      const pass = () => {
        let n = 0;
        for (const r of dirty.takeRuns(64)) {
          // Copy after the take: a write after the take marks the page again.
          for (let p = r.first; p < r.first + r.count; p++) copy.page(p).set(memory.page(p));
          n += r.count;
        }
        return n;
      };
      const sent: number[] = [];
      // At least 8 passes, and on until the guest has written plenty while they ran (vCPU threads on a
      // loaded machine write late); the deadline is a safety net.
      const deadline = performance.now() + 120_000;
      for (let i = 0; i < 8 || workload.pagesWritten <= 10_000; i++) {
        assert.ok(performance.now() < deadline, `only ${workload.pagesWritten} guest writes after 120 s`);
        sent.push(pass());
        await sleep(20);
      }
      await workload.pause();
      sent.push(pass());
      assert.equal(dirty.count(), 0);
      const c = compareDigests(memory.pageDigests(), copy.pageDigests(), 5);
      console.log(`# pre-copy passes sent ${sent.join(', ')} pages; ${workload.pagesWritten} guest writes`);
      assert.ok(workload.pagesWritten > 10_000, 'the guest wrote during the passes');
      assert.deepEqual(c.first, [], 'pages that differ between the guest and its copy');
      assert.ok(c.equal);
    } finally {
      await g.close();
      copy.close();
    }
  });

  test('patterns: hot concentrates writes, sequential writes runs, random spreads them', async () => {
    const results: string[] = [];
    for (const pattern of ['hot', 'sequential', 'random'] as const) {
      const g = guest(64 * MiB, { vcpus: 2, pagesPerSecond: 50_000, pattern, hotFraction: 0.1, seed: 11 });
      try {
        const { memory, dirty, workload } = g;
        await workload.ready();
        await until(() => workload.pagesWritten > 1500, '1500 writes', VCPU_WAIT);
        await workload.pause();
        const hotPages = Math.floor(memory.pages * 0.1);
        let hot = 0;
        let cold = 0;
        for (let p = 0; p < memory.pages; p++) if (dirty.has(p)) p < hotPages ? hot++ : cold++;
        const runs = [...dirty.takeRuns()].length;
        const hotDensity = hot / hotPages;
        const coldDensity = cold / (memory.pages - hotPages);
        results.push(
          `${pattern}: ${workload.pagesWritten} writes, ${hot + cold} pages in ${runs} runs, hot density ${hotDensity.toFixed(2)}, cold ${coldDensity.toFixed(2)}`,
        );
        if (pattern === 'hot') assert.ok(hotDensity > 4 * coldDensity, 'hot pages are written much more often');
        if (pattern === 'sequential') assert.ok(runs <= 4, `two vCPUs walking memory write ≤ 4 runs, not ${runs}`);
        if (pattern === 'random') assert.ok(runs > (hot + cold) / 4, 'random writes scatter');
      } finally {
        await g.close();
      }
    }
    console.log(`# ${results.join('; ')}`);
  });

  test('startPaused writes nothing until resume; setRate(0) idles; rates are printed', async () => {
    const g = guest(8 * MiB, { vcpus: 2, pagesPerSecond: 1000, pattern: 'random', startPaused: true });
    try {
      const { memory, workload } = g;
      await workload.ready();
      const zero = memory.pageDigests();
      await sleep(200);
      assert.equal(workload.pagesWritten, 0);
      assert.equal(workload.isRunning, false);
      assert.ok(compareDigests(zero, memory.pageDigests()).equal);
      workload.resume();
      const lines: string[] = [];
      for (const rate of [1000, 20_000, 200_000]) {
        workload.setRate(rate);
        assert.equal(workload.rate, rate);
        await sleep(100);
        const a = workload.pagesWritten;
        const t = performance.now();
        await sleep(500);
        const got = ((workload.pagesWritten - a) / (performance.now() - t)) * 1000;
        lines.push(`${rate} pages/s asked, ${got.toFixed(0)} measured`);
      }
      workload.setRate(0);
      // A barrier, not a sleep: once every vCPU acknowledged the pause, each one has left the batch it was
      // writing and reads the rate (0) again when it resumes.
      await workload.pause(60_000);
      workload.resume();
      const idle = workload.pagesWritten;
      await sleep(300);
      assert.ok(workload.pagesWritten - idle <= 2, 'an idle guest (rate 0) writes nothing');
      assert.throws(() => workload.setRate(-1), RangeError);
      await workload.pause();
      console.log(`# rate accuracy (2 vCPUs): ${lines.join('; ')}`);
    } finally {
      await g.close();
    }
  });

  test('a dead vCPU makes pause() and resume() fail at once, naming it; stop() ends everything', async () => {
    const errors: number[] = [];
    const g = guest(4 * MiB, {
      vcpus: 2,
      pagesPerSecond: 1000,
      pattern: 'random',
      onError: (i) => errors.push(i),
    });
    try {
      const { workload } = g;
      await workload.ready();
      await workload.workers[1]!.terminate();
      // EIO naming the vCPU, not the ETIMEDOUT of pause()'s timeout (the error says which; the clock need not).
      await assert.rejects(workload.pause(), (e: Error & { code?: string }) => {
        assert.equal(e.code, 'EIO');
        assert.match(e.message, /vCPU 1 is dead/);
        return true;
      });
      assert.throws(() => workload.resume(), /vCPU 1 is dead/);
      await workload.stop();
      await workload.stop(); // idempotent
      assert.throws(() => workload.resume(), /stopped/);
      await assert.rejects(workload.pause(), /stopped/);
      assert.deepEqual(errors, []);
    } finally {
      await g.close();
    }
  });

  test("reserved ranges (a driver's DMA buffers): no vCPU writes them, every other page is written", async () => {
    // 256 pages; reserved: page 0, pages 100-103 (a range not page-aligned touches every page it covers),
    // the last page.
    const reserved = [
      { offset: 0, length: 1 },
      { offset: 100 * PAGE_SIZE + 10, length: 3 * PAGE_SIZE },
      { offset: 255 * PAGE_SIZE, length: PAGE_SIZE },
    ];
    const isReserved = (p: number) => p === 0 || (p >= 100 && p <= 103) || p === 255;
    for (const pattern of ['random', 'sequential', 'hot'] as const) {
      const g = guest(MiB, { vcpus: 2, pagesPerSecond: 50_000, pattern, seed: 5, reserved });
      try {
        const { memory, dirty, workload } = g;
        await workload.ready();
        // 6000 writes over 250 pages: a random page is missed with odds e^-24.
        await until(() => workload.pagesWritten > 6000, '6000 writes', VCPU_WAIT);
        await workload.pause();
        let unwritten = 0;
        for (let p = 0; p < memory.pages; p++) {
          if (isReserved(p)) {
            assert.ok(memory.isZeroPage(p) && !dirty.has(p), `${pattern}: reserved page ${p} was written`);
          } else if (memory.isZeroPage(p)) unwritten++;
        }
        // The hot pattern sends 1/8 of its writes to cold pages: some may be missed there.
        if (pattern !== 'hot')
          assert.equal(unwritten, 0, `${pattern}: pages outside the reserved ranges never written`);
      } finally {
        await g.close();
      }
    }
  });

  test('reservedRuns merges the pages ranges touch; unreservedPage enumerates exactly the others', () => {
    assert.deepEqual(
      reservedRuns(
        [
          { offset: 8 * PAGE_SIZE, length: 1 },
          { offset: 0, length: 2 * PAGE_SIZE },
          { offset: PAGE_SIZE + 1, length: PAGE_SIZE },
        ],
        16,
        PAGE_SIZE,
      ),
      [
        [0, 3],
        [8, 1],
      ],
    );
    fc.assert(
      fc.property(
        fc.integer({ min: 2, max: 64 }).chain((pages) =>
          fc.tuple(
            fc.constant(pages),
            fc.array(
              fc
                .tuple(fc.integer({ min: 0, max: pages * 64 - 1 }), fc.integer({ min: 1, max: 64 * 8 }))
                .filter(([o, l]) => o + l <= pages * 64),
              { maxLength: 6 },
            ),
          ),
        ),
        ([pages, spans]) => {
          const ranges = spans.map(([offset, length]) => ({ offset, length }));
          const touched = new Set<number>();
          for (const { offset, length } of ranges)
            for (let p = Math.floor(offset / 64); p * 64 < offset + length; p++) touched.add(p);
          if (touched.size === pages) {
            assert.throws(() => reservedRuns(ranges, pages, 64), /cover all/);
            return;
          }
          const runs = reservedRuns(ranges, pages, 64);
          const free: number[] = [];
          for (let p = 0; p < pages; p++) if (!touched.has(p)) free.push(p);
          assert.deepEqual(
            free.map((_, i) => unreservedPage(i, runs)),
            free,
          );
        },
      ),
    );
    assert.throws(() => reservedRuns([{ offset: 15 * PAGE_SIZE, length: PAGE_SIZE + 1 }], 16, PAGE_SIZE), /past/);
    assert.throws(() => reservedRuns([{ offset: 0, length: 0 }], 16, PAGE_SIZE), /length/);
    assert.throws(() => reservedRuns([{ offset: -1, length: 1 }], 16, PAGE_SIZE), /offset/);
  });

  test('rejects bad options', () => {
    const memory = GuestMemory.create(PAGE_SIZE * 64, 'wl-bad');
    try {
      const dirty = new GuestDirtyBitmap(64);
      const base: WorkloadOptions = { vcpus: 1, pagesPerSecond: 0, pattern: 'random' };
      assert.throws(() => new Workload(memory, dirty, { ...base, vcpus: 0 }), RangeError);
      assert.throws(() => new Workload(memory, dirty, { ...base, pagesPerSecond: Number.NaN }), RangeError);
      assert.throws(() => new Workload(memory, dirty, { ...base, pattern: 'zigzag' as 'random' }), RangeError);
      assert.throws(() => new Workload(memory, new GuestDirtyBitmap(65), base), RangeError);
    } finally {
      memory.close();
    }
  });
});
