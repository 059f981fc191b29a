// node --import tsx bench/dirty-log.ts [--rounds N]: the guest dirty log's scan costs for a 1 GiB and a
// 4 GiB guest (the per-pass work of QEMU's migration bitmap sync, migration/ram.c): an empty scan and
// clear (forEachDirtyAndClear, takeRuns), count, merging a full log in, and setAll + takeRuns. Each figure is
// the median over --rounds rounds (default 3) of the mean time of one call, in ms. Its behaviour on these
// sizes is asserted in test/vmm/guest/dirty-bitmap.test.ts; only the timing lives here.

import { parseArgs } from 'node:util';
import { GuestDirtyBitmap } from '../src/vmm/guest/dirty-bitmap.ts';
import { measure, say } from './figures.ts';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '3' } } });
const rounds = Number(values.rounds);

/** Mean ms of one call over `reps` calls, after 10 calls to warm up. */
function perCall(fn: () => void, reps: number): { value: number } {
  for (let i = 0; i < 10; i++) fn();
  const t = performance.now();
  for (let i = 0; i < reps; i++) fn();
  return { value: (performance.now() - t) / reps };
}

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
