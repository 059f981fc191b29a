// migrate_cancel in every phase: setup (the source blocked in the device's save_setup), the RAM bulk
// pass, pre-copy iterations, the device's stop-and-copy, the handshake (READY held back), and after
// completion, where it must change nothing. Each phase is held (a stopped device server, a proxy that
// stops reading or holds READY) until the cancel comes. Before the commit point the migration ends
// `cancelled`, the source runs with its pages and device state as before and the device RUNNING, the
// destination never runs, and a retry to a fresh destination succeeds (support/fault-table.ts).
import assert from 'node:assert/strict';
import { type FaultContext, faultTable } from './support/fault-table.ts';
import { ended, kill, waitForLine } from './support/faults.ts';
import { heldRow, holdReady, inHeldPhases, startMigration } from './support/phases.ts';

async function cancel(ctx: FaultContext): Promise<void> {
  await ctx.pair.src.execute('migrate_cancel');
}
const migrationStatus = async (ctx: FaultContext) =>
  (await ctx.pair.src.execute<{ status: string }>('query-migrate')).status;
/** The cancel, then the proxy reads again: the source's closed connection reaches the destination (a paused
 * proxy would not notice it), as it would on a link that merely ran slow. */
async function cancelThenRelease(ctx: FaultContext): Promise<void> {
  await cancel(ctx);
  ctx.proxy?.setUp('forward');
}
const row = { fault: 'cancel', act: cancelThenRelease, expect: { status: 'cancelled' } } as const;

faultTable('migrate_cancel in every phase', [
  {
    name: 'during setup (the source waits on the device in save_setup)',
    fault: 'cancel',
    phase: 'setup',
    pair: { sourceArgs: ['--trace', 'vfio_save_setup'] },
    inject: async (ctx) => {
      // The source's device server stops answering, so the setup step that puts the device into SAVING
      // waits for it: the migration is held in `setup` for as long as the test likes.
      await kill(ctx.pair.procs.srcDevices[0]!, 'SIGSTOP');
      await startMigration(ctx);
      await waitForLine(ctx.lines, /src-vmm: .*vfio_save_setup/);
      assert.equal(await migrationStatus(ctx), 'setup');
      await cancel(ctx);
      assert.equal(await migrationStatus(ctx), 'cancelling');
      await kill(ctx.pair.procs.srcDevices[0]!, 'SIGCONT');
      return undefined;
    },
    expect: row.expect,
  },
  ...inHeldPhases(row),
  heldRow({
    ...row,
    name: 'in the handshake: everything sent, READY held back, then released',
    phase: 'handshake',
    hold: holdReady,
    act: async (ctx) => {
      await cancel(ctx);
      // READY arrives right after the cancel: the source must not commit (no GO) on it.
      ctx.proxy!.setDown('forward');
    },
    after: async (ctx) => {
      assert.equal(ctx.proxy!.upAfterEof, 0, 'the source sent no GO');
      return { go_bytes: ctx.proxy!.upAfterEof };
    },
  }),
  {
    name: 'after completion: a no-op',
    fault: 'cancel',
    phase: 'completed',
    pair: { autostart: true, spare: false },
    inject: async (ctx) => {
      await startMigration(ctx);
      assert.equal((await ended(ctx.pair.src)).status, 'completed');
      await cancel(ctx);
      assert.equal(await migrationStatus(ctx), 'completed');
      return undefined;
    },
    expect: { status: 'completed', source: 'postmigrate', runsOn: 'destination', destination: 'runs', retry: false },
  },
]);
