// The migration link failing: a TCP reset mid-stream, and links that stop moving (the proxy stops
// reading, the destination VMM is stopped with SIGSTOP, the destination's READY is withheld). Each is
// injected while a proxy holds the bulk pass (or the handshake), so the phase lasts until the fault. A
// stall is detected by the VMMs' --stall-timeout (set short where the stall is what is tested); the
// source resumes intact, the destination never runs the VM, and a retry to a fresh destination succeeds
// (support/fault-table.ts).
import assert from 'node:assert/strict';
import { ReturnPathType } from '../../src/stream/return-path.ts';
import { faultTable } from './support/fault-table.ts';
import { kill, waitUntil } from './support/faults.ts';
import { heldRow, holdBulkPass, readyHeld, startMigration } from './support/phases.ts';

const STALL_MS = 2000;
const stallArgs = ['--stall-timeout', String(STALL_MS)];
/** READY is withheld only once it was sent: the source must wait longer than the destination takes to
 * load (a 16 MiB guest), so its handshake timeout is a generous one. */
const HANDSHAKE_MS = 20_000;
let pausedAt = 0;

faultTable('migration link faults', [
  heldRow({
    name: 'TCP connection reset (RST both ways) during the bulk pass',
    fault: 'tcp-reset',
    phase: 'ram-bulk',
    hold: holdBulkPass,
    act: async (ctx) => ctx.proxy!.reset(),
    expect: { status: 'failed', error: /reset|closed|connection/i },
  }),
  heldRow({
    // A stalled link carries no FIN or RST either: each side must find out by its own timeout.
    name: 'stalled link: the proxy stops reading mid-stream',
    fault: 'link-stall',
    phase: 'ram-bulk',
    pair: { sourceArgs: stallArgs, destinationArgs: stallArgs },
    hold: holdBulkPass,
    act: async () => {
      // The proxy holds the bulk pass: nothing moves from here on, and nothing closes.
      pausedAt = Date.now();
    },
    after: async (ctx) => {
      const dst = await ctx.pair.dst.execute<{ 'error-desc'?: string }>('query-migrate');
      assert.match(dst['error-desc'] ?? '', /no data from the source .* stalled link/);
      return { failed_after_pause_ms: Date.now() - pausedAt, stall_timeout_ms: STALL_MS };
    },
    // Whichever side's timeout fires first, the source fails naming the stall (its own, or the
    // destination's over the return path), and the destination by its own timeout.
    expect: { status: 'failed', error: /stalled link/ },
  }),
  heldRow({
    name: 'stalled destination: its VMM stopped with SIGSTOP mid-stream, then continued',
    fault: 'dst-sigstop',
    phase: 'ram-bulk',
    // A guest larger than every buffer on the path (the source's send buffer, the proxy's, and the
    // stopped destination's receive window, which TCP may have grown to tcp_rmem's maximum, 32 MiB here,
    // while it was reading): with 64 MiB the rest of the stream could all fit in them, and the source
    // then met the stop only as a missing answer after EOF, not as a write that stalls.
    pair: { sourceArgs: stallArgs, memSize: '256M' },
    hold: holdBulkPass,
    act: async (ctx) => {
      await kill(ctx.pair.procs.dstVmm, 'SIGSTOP');
      // The link moves again up to the stopped destination's socket buffers; then only the source's stall
      // timeout can end it.
      ctx.proxy!.setUp('forward');
    },
    // The destination wakes up to a dead connection: it must not run the half-received VM.
    after: async (ctx) => {
      await kill(ctx.pair.procs.dstVmm, 'SIGCONT');
      return undefined;
    },
    expect: { status: 'failed', error: /stalled link/ },
  }),
  {
    name: "the destination's READY never arrives (sent, withheld by the proxy, link kept open)",
    fault: 'ready-lost',
    phase: 'handshake',
    pair: { memSize: '16M', deviceMem: '1M', sourceArgs: ['--stall-timeout', String(HANDSHAKE_MS)] },
    proxy: true,
    inject: async (ctx) => {
      const proxy = ctx.proxy!;
      proxy.setDown('hold');
      await startMigration(ctx);
      // The destination loaded everything and sent READY: the proxy decoded it and holds it, then drops it.
      await waitUntil(ctx.pair.src, () => proxy.sawEof && readyHeld(proxy), 'the destination sent READY');
      proxy.setDown('drop');
      return undefined;
    },
    after: async (ctx) => {
      const proxy = ctx.proxy!;
      const ready = proxy.downMessages.filter((m) => m.type === ReturnPathType.READY);
      const forwarded = ready.filter((m) => m.fate === 'forward').length;
      assert.equal(ready.length, 1, 'the destination sent READY once');
      assert.equal(forwarded, 0, 'the proxy withheld it');
      assert.equal(proxy.upAfterEof, 0, 'the source sent no GO');
      return { ready_sent: ready.length, ready_forwarded: forwarded, handshake_timeout_ms: HANDSHAKE_MS };
    },
    expect: { status: 'failed', error: new RegExp(`no answer from the destination within ${HANDSHAKE_MS} ms`) },
  },
]);
