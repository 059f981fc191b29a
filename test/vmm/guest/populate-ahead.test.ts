// The populate-ahead thread of a fresh destination: it populates exactly the ranges asked for, in
// order, on the VMM's own mapping (this process's RssShmem grows by what it populated, no more), reports
// its progress so the loader skips what it did, and never goes backwards.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { GuestMemory } from '../../../src/vmm/guest/guest-memory.ts';
import { PopulateAhead } from '../../../src/vmm/guest/populate-ahead.ts';
import { statusKib } from '../../support/fuzz.ts';

const MiB_PAGES = 256;
const turn = () => new Promise((r) => setTimeout(r, 5));

/** Waits until the thread populated [from, end) (no deadline of its own: the test runner's timeout is it). */
async function until(p: PopulateAhead, from: number, end: number): Promise<void> {
  while (p.populatedFrom(from) < end) await turn();
}

test('populates what it is asked, in runs, reports progress, and maps nothing it was not asked for', async () => {
  const memory = GuestMemory.create(256 << 20);
  const p = new PopulateAhead(memory);
  try {
    const before = statusKib(process.pid, 'RssShmem');
    assert.equal(p.populatedFrom(0), 0, 'nothing asked, nothing done');

    p.request(0, 16 * MiB_PAGES);
    await until(p, 0, 16 * MiB_PAGES);
    assert.equal(p.populatedFrom(0), 16 * MiB_PAGES);
    // Contiguous: extends the run.
    p.request(16 * MiB_PAGES, 24 * MiB_PAGES);
    await until(p, 0, 24 * MiB_PAGES);
    const grown = (statusKib(process.pid, 'RssShmem') - before) / 1024;
    assert.ok(grown >= 24 && grown < 24 + 8, `RssShmem +${grown.toFixed(1)} MiB for 24 MiB asked`);

    // Backwards is refused (the loader only moves forward), a gap starts a new run.
    p.request(4 * MiB_PAGES, 8 * MiB_PAGES);
    p.request(100 * MiB_PAGES, 104 * MiB_PAGES);
    assert.equal(p.populatedFrom(50 * MiB_PAGES), 50 * MiB_PAGES, 'outside the run: nothing to skip');
    await until(p, 100 * MiB_PAGES, 104 * MiB_PAGES);
    const grown2 = (statusKib(process.pid, 'RssShmem') - before) / 1024;
    assert.ok(grown2 >= 28 && grown2 < 28 + 8, `RssShmem +${grown2.toFixed(1)} MiB for 28 MiB asked in all`);
    // The pages read as zero: populating allocates, it writes nothing.
    assert.ok(memory.isZeroPage(100 * MiB_PAGES) && memory.isZeroPage(24 * MiB_PAGES - 1));
  } finally {
    await p.close();
    memory.close();
  }
});

test('the loader owns the memory: closing it with the thread attached unmaps nothing under the thread', async () => {
  const memory = GuestMemory.create(8 << 20);
  const p = new PopulateAhead(memory);
  try {
    p.request(0, 4 * MiB_PAGES);
    memory.close(); // the thread's view still holds the mapping (GuestMemory.share)
    await until(p, 0, 4 * MiB_PAGES);
  } finally {
    await p.close();
  }
});
