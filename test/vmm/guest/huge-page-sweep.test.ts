// The huge-page sweep a VMM runs once its guest runs: it collapses the 2 MiB blocks of guest RAM that are
// wholly allocated and not huge yet, leaves blocks with holes alone (collapsing them would allocate the
// holes), changes no byte, passes again for blocks filled since, waits while told to, and stops when told.
import assert from 'node:assert/strict';
import { fstatSync } from 'node:fs';
import { describe, test } from 'node:test';
import { guestRamHugeKib } from '../../../src/harness/guest-ram-usage.ts';
import { GuestMemory, HUGE_PAGE_SIZE, PAGE_SIZE } from '../../../src/vmm/guest/guest-memory.ts';
import { HugePageSweep } from '../../../src/vmm/guest/huge-page-sweep.ts';
import { collapseSkipReason } from '../../support/huge-pages.ts';
import { until } from '../../support/until.ts';

const BLOCK_PAGES = HUGE_PAGE_SIZE / PAGE_SIZE;

/**
 * Guest RAM of 5 blocks: 0, 3 and 4 written whole, 1 one page, 2 nothing; with `hugeLast`, block 4
 * collapsed already, and `skip` says why the test cannot run where that failed for want of the machine.
 */
function guest(hugeLast: boolean): { m: GuestMemory; skip: string | null } {
  const m = GuestMemory.create(5 * HUGE_PAGE_SIZE); // the VMM's memfd name: guestRamHugeKib finds it
  const block = new Uint8Array(HUGE_PAGE_SIZE).map((_, i) => (i * 13) & 0xff);
  for (const b of [0, 3, 4]) m.write(b * HUGE_PAGE_SIZE, block);
  m.write(HUGE_PAGE_SIZE + 7 * PAGE_SIZE, new Uint8Array(PAGE_SIZE).fill(5));
  const skip = hugeLast ? collapseSkipReason(m.collapseHugePages(4 * BLOCK_PAGES, BLOCK_PAGES).failure) : null;
  return { m, skip };
}

const allocated = (m: GuestMemory) => fstatSync(m.fd).blocks * 512;

describe('HugePageSweep', () => {
  test('collapses the wholly allocated blocks not huge yet, and only those; no byte changes', async (t) => {
    const { m, skip } = guest(true);
    try {
      if (skip) return t.skip(skip);
      assert.deepEqual(
        [m.hugeBlockReady(0), m.hugeBlockReady(1), m.hugeBlockReady(2), m.hugeBlockReady(4)],
        [true, false, false, false],
      );
      const digests = m.pageDigests();
      const bytes = allocated(m);
      const sweep = new HugePageSweep(m, { sliceMs: 0 }); // a block per turn of the event loop
      sweep.start();
      assert.equal(sweep.state, 'active');
      await sweep.done;
      assert.equal(sweep.state, 'completed');
      assert.deepEqual([sweep.result.hugeBytes, sweep.result.failure], [2 * HUGE_PAGE_SIZE, null]);
      assert.equal(guestRamHugeKib(process.pid), (3 * HUGE_PAGE_SIZE) / 1024, 'blocks 0, 3 and 4 mapped whole');
      assert.equal(allocated(m), bytes, 'no hole was filled');
      assert.deepEqual(m.pageDigests(), digests);
    } finally {
      m.close();
    }
  });

  test('repeating, a later pass collapses a block filled since the one before, and says so', async (t) => {
    const { m, skip } = guest(true);
    try {
      if (skip) return t.skip(skip);
      const passes: number[] = [];
      const sweep = new HugePageSweep(m, { repeatMs: 1, onPass: (bytes) => passes.push(bytes) });
      sweep.start();
      await until(() => passes.length >= 1, 'the first pass');
      assert.deepEqual(passes.slice(0, 1), [2 * HUGE_PAGE_SIZE], 'blocks 0 and 3');
      // Block 2, empty so far, written whole: a pass after this collapses it, and only it.
      m.write(2 * HUGE_PAGE_SIZE, new Uint8Array(HUGE_PAGE_SIZE).fill(3));
      const seen = passes.length;
      await until(() => passes.length >= seen + 2, 'two more passes');
      assert.equal(
        passes.slice(seen).reduce((a, b) => a + b),
        HUGE_PAGE_SIZE,
      );
      assert.equal(sweep.state, 'active', 'it goes on');
      assert.equal(guestRamHugeKib(process.pid), (4 * HUGE_PAGE_SIZE) / 1024, 'blocks 0, 2, 3 and 4');
      sweep.stop();
      await sweep.done;
      assert.equal(sweep.state, 'stopped');
    } finally {
      m.close();
    }
  });

  test('waits while paused, and a stopped sweep ends where it is', async () => {
    const { m } = guest(false);
    try {
      let paused = true;
      let looks = 0;
      const isPaused = () => {
        looks++;
        return paused;
      };
      const sweep = new HugePageSweep(m, { paused: isPaused, pausePollMs: 1 });
      sweep.start();
      while (looks < 3) await new Promise((r) => setTimeout(r, 1));
      assert.deepEqual([sweep.state, sweep.result.hugeBytes, sweep.result.ms], ['active', 0, 0], 'nothing done yet');
      sweep.stop();
      await sweep.done;
      assert.equal(sweep.state, 'stopped');
      paused = false;
      await new Promise((r) => setTimeout(r, 5));
      assert.equal(sweep.result.hugeBytes, 0, 'nothing after the stop either');
      assert.equal(guestRamHugeKib(process.pid), 0);
    } finally {
      m.close();
    }
  });
});
