// The destination VMM killed (SIGKILL) in each phase of a live migration: the RAM bulk pass, pre-copy
// iterations, the device's stop-and-copy, and while it loads after the source has sent everything. Each
// phase is held by a proxy between the VMMs until the kill. Real processes and real TCP. Afterwards the
// source VM runs, its pages and device state are as before, the device is RUNNING, and a retry to a
// fresh destination completes and verifies (support/fault-table.ts).
import type { FaultContext } from './support/fault-table.ts';
import { faultTable } from './support/fault-table.ts';
import { kill } from './support/faults.ts';
import { heldRow, holdLoad, inHeldPhases } from './support/phases.ts';

const sigkill = (ctx: FaultContext) => kill(ctx.pair.procs.dstVmm);
const row = { fault: 'dst-sigkill', act: sigkill, expect: { status: 'failed' } } as const;

faultTable('destination VMM killed (SIGKILL) mid-migration', [
  ...inHeldPhases(row),
  heldRow({
    ...row,
    name: 'while it loads, after the source sent everything (waiting for READY)',
    phase: 'load',
    hold: holdLoad,
  }),
]);
