// No split brain: exactly one side may ever run the VM. The switch-over is READY (destination loaded and
// verified) then GO (source committed). A proxy holds READY or GO, and the link dies at each point:
// - before the source sees READY: the source resumes; the destination, though loaded, never starts;
// - after GO was delivered: the destination runs; the source stays stopped (postmigrate) although its
//   connection then dies under it (an RST);
// - GO sent but lost: the source has committed and stays stopped, the destination never got GO and does
//   not start either; neither runs until an operator decides (here: `cont` on the source).
import assert from 'node:assert/strict';
import { type FaultContext, faultTable } from './support/fault-table.ts';
import { ended, sleep } from './support/faults.ts';
import { heldRow, holdGo, holdReady } from './support/phases.ts';

type Status = { status: string; running: boolean };

/** The source committed: it stays stopped however long we look. */
async function sourceStaysStopped(ctx: FaultContext): Promise<void> {
  await sleep(300);
  const src = await ctx.pair.src.execute<Status>('query-status');
  assert.deepEqual([src.status, src.running], ['postmigrate', false]);
}

faultTable('no split brain around the READY/GO switch-over', [
  heldRow({
    name: 'the link resets after the destination sent READY, before the source saw it',
    fault: 'tcp-reset',
    phase: 'ready-sent-not-seen',
    pair: { autostart: true },
    hold: holdReady,
    act: async (ctx) => ctx.proxy!.reset(),
    after: async (ctx) => {
      assert.equal(ctx.proxy!.upAfterEof, 0, 'no GO went out');
      assert.match((await ended(ctx.pair.dst))['error-desc'] ?? '', /before GO|reset|closed/i);
      return undefined;
    },
    expect: { status: 'failed' },
  }),
  heldRow({
    name: "the source's link resets right after its GO was delivered",
    fault: 'tcp-reset',
    phase: 'after-go',
    pair: { autostart: true, spare: false },
    hold: holdGo,
    act: (ctx) => ctx.proxy!.deliverThenResetSource(),
    after: async (ctx) => {
      await sourceStaysStopped(ctx);
      return undefined;
    },
    expect: { status: 'completed', source: 'postmigrate', runsOn: 'destination', destination: 'runs', retry: false },
  }),
  heldRow({
    name: 'GO sent but lost (the link dies with it)',
    fault: 'go-lost',
    phase: 'commit',
    pair: { autostart: true },
    hold: holdGo, // the GO stays in the proxy
    act: async (ctx) => ctx.proxy!.reset(),
    after: async (ctx) => {
      // The source committed when it sent GO: it must not resume on its own.
      await sourceStaysStopped(ctx);
      // The destination never got GO: it does not start either.
      const dst = await ended(ctx.pair.dst);
      assert.equal(dst.status, 'failed');
      assert.equal((await ctx.pair.dst.execute<Status>('query-status')).running, false);
      // Neither runs: the operator decides. Continuing the source brings the VM back there, intact.
      await ctx.pair.src.execute('cont');
      return undefined;
    },
    expect: { status: 'completed' },
  }),
]);
