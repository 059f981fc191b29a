// The dirty log's costs (QEMU's migration bitmap sync, migration/ram.c). Two parts:
//
// - scan costs, standalone (`node --import tsx bench/dirty-log.ts [--rounds N]`): for a 1 GiB and a 4 GiB
//   guest, an empty scan and clear (forEachDirtyAndClear, takeRuns), count, merging a full log in, and
//   setAll + takeRuns; each figure the median over --rounds rounds (default 3) of the mean time of one
//   call, in ms. Their behaviour on these sizes is asserted in test/vmm/guest/dirty-bitmap.test.ts.
// - the sync inside a real run (dirtySyncInRun, the `dirty-log` part of `npm run bench`): a 4 GiB guest
//   with a large-memory device that DMAs into guest RAM, migrated between two VMM processes; the figure is
//   the final log sync as the source measured it (query-migrate x-switchover.sync: the device's dirty
//   bitmap for all 4 GiB read over vfio-user and merged into the RAM log, with the VM stopped).

import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { startLocalPair, waitForMigration } from '../src/harness/local-hosts.ts';
import { GuestDirtyBitmap } from '../src/vmm/guest/dirty-bitmap.ts';
import { measure, say } from './figures.ts';
import type { BenchRun } from './results.ts';

/** Mean ms of one call over `reps` calls, after 10 calls to warm up. */
function perCall(fn: () => void, reps: number): { value: number } {
  for (let i = 0; i < 10; i++) fn();
  const t = performance.now();
  for (let i = 0; i < reps; i++) fn();
  return { value: (performance.now() - t) / reps };
}

/** The scan figures, in-process. */
export async function dirtyLogScans(rounds: number): Promise<void> {
  for (const [label, pages] of [
    ['1 GiB', 262144],
    ['4 GiB', 1048576],
  ] as const) {
    say(`dirty log of a ${label} guest (${pages} pages), ms per call`);
    const b = new GuestDirtyBitmap(pages);
    const full = new GuestDirtyBitmap(pages);
    full.setAll();
    await measure('empty scan+clear', 'ms', rounds, async () => perCall(() => b.forEachDirtyAndClear(() => {}), 200));
    await measure('empty takeRuns', 'ms', rounds, async () =>
      perCall(() => {
        for (const _ of b.takeRuns());
      }, 200),
    );
    await measure('count', 'ms', rounds, async () => perCall(() => b.count(), 200));
    await measure('merge of a full log', 'ms', rounds, async () => perCall(() => b.merge(full), 20));
    await measure('setAll + takeRuns(256)', 'ms', rounds, async () =>
      perCall(() => {
        b.setAll();
        for (const _ of b.takeRuns(256));
      }, 20),
    );
    say();
  }
}

/** One migration of a `memMiB` guest with a DMA-ing device: the final log sync's ms and the sync count. */
async function syncOnce(memMiB: number): Promise<{ value: number; per: string; note: string }> {
  const pair = await startLocalPair({
    memSize: `${memMiB}M`,
    paused: true,
    startTimeoutMs: 300_000,
    source: {
      device: 'large-memory',
      deviceArgs: ['--device-mem', '16M', '--work-rate', '20000'],
      vmmArgs: ['--dirty-rate', '20000'],
    },
    destination: { device: 'large-memory', deviceArgs: ['--device-mem', '16M', '--work-rate', '20000'] },
  });
  try {
    await pair.src.execute('migrate', { uri: pair.uri });
    const info = await waitForMigration(pair.src, { intervalMs: 100, timeoutMs: 600_000 });
    if (info.status !== 'completed') throw new Error(`migration ${info.status}: ${info['error-desc'] ?? ''}`);
    await waitForMigration(pair.dst, { timeoutMs: 60_000 });
    const sw = info['x-switchover'] as { sync: number } | undefined;
    if (!sw) throw new Error('query-migrate reports no x-switchover phases');
    const ram = info.ram as { 'dirty-sync-count': number };
    return {
      value: sw.sync,
      per: `a ${memMiB} MiB guest, its device logging every page it DMAs`,
      note: `${ram['dirty-sync-count']} syncs in the run, downtime ${info.downtime} ms`,
    };
  } finally {
    await pair.stop();
  }
}

/** The `dirty-log` part of `npm run bench`: the final log sync inside a real migration. */
export async function dirtySyncInRun(memMiB: number, rounds: number, run: BenchRun): Promise<void> {
  say(`dirty log sync in a real run: a ${memMiB} MiB guest, large-memory device with DMA, ms`);
  run.figures.push(await measure('dirty-sync-final', 'ms', rounds, () => syncOnce(memMiB)));
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values } = parseArgs({ options: { rounds: { type: 'string', default: '3' } } });
  await dirtyLogScans(Number(values.rounds));
}
