// The migration link failing: a TCP reset mid-stream, and links that stop moving (the proxy stops
// reading, the destination VMM is stopped with SIGSTOP, the destination's READY never arrives). A stall is
// detected by the source's --stall-timeout (set short here), not waited out; the source resumes intact,
// the destination never runs the VM, and a retry to a fresh destination succeeds.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  assertDestinationNotRunning,
  assertSourceIntact,
  ended,
  faultMatrix,
  kill,
  retryToFreshDestination,
  snapshot,
  startFaultPair,
  waitForPhase,
  waitUntil,
} from './support/faults.ts';
import { TcpProxy } from './support/tcp-proxy.ts';

const MiB = 1 << 20;
const STALL_MS = 2000;
const stallArgs = ['--stall-timeout', String(STALL_MS)];

describe('migration link faults', { concurrency: 2 }, () => {
  test('TCP connection reset (RST both ways) during the bulk pass', async () => {
    const pair = await startFaultPair();
    const proxy = await TcpProxy.start(pair.uri);
    try {
      const before = await snapshot(pair.src);
      await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 16 * MiB });
      await pair.src.execute('migrate', { uri: proxy.uri });
      await waitForPhase(pair.src, (i) => i.status === 'active' && (i.ram?.transferred ?? 0) > 2 * MiB, 'bulk pass');
      proxy.reset();
      const info = await ended(pair.src);
      assert.equal(info.status, 'failed');
      assert.match(info['error-desc'] ?? '', /reset|closed|connection/i);
      await assertDestinationNotRunning(pair.dst);
      const lost = await assertSourceIntact(pair, before);
      const retryLost = await retryToFreshDestination(pair, before);
      faultMatrix({
        fault: 'tcp-reset',
        phase: 'ram-bulk',
        outcome: 'failed-source-resumed',
        pagesLost: lost + retryLost,
      });
    } finally {
      await proxy.close();
      await pair.stop();
    }
  });

  test('stalled link: the proxy stops reading mid-stream', async () => {
    // A stalled link carries no FIN or RST either: the destination must find out by its own timeout.
    const pair = await startFaultPair({ sourceArgs: stallArgs, destinationArgs: stallArgs });
    const proxy = await TcpProxy.start(pair.uri);
    try {
      const before = await snapshot(pair.src);
      await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 16 * MiB });
      await pair.src.execute('migrate', { uri: proxy.uri });
      await waitForPhase(pair.src, (i) => i.status === 'active' && (i.ram?.transferred ?? 0) > 2 * MiB, 'bulk pass');
      // Nothing moves from here on, and nothing closes: only the source's stall timeout can end it.
      proxy.setUp('pause');
      await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 0 });
      const t0 = Date.now();
      const info = await ended(pair.src);
      const detectMs = Date.now() - t0;
      assert.equal(info.status, 'failed');
      assert.match(info['error-desc'] ?? '', new RegExp(`no data for ${STALL_MS} ms: stalled link`));
      assert.match((await assertDestinationNotRunning(pair.dst)).error, /no data from the source .* stalled link/);
      const lost = await assertSourceIntact(pair, before);
      const retryLost = await retryToFreshDestination(pair, before);
      faultMatrix({
        fault: 'link-stall',
        phase: 'ram-bulk',
        outcome: 'failed-source-resumed',
        pagesLost: lost + retryLost,
        extra: { failed_after_pause_ms: detectMs, stall_timeout_ms: STALL_MS },
      });
    } finally {
      await proxy.close();
      await pair.stop();
    }
  });

  test('stalled destination: its VMM stopped with SIGSTOP mid-stream, then continued', async () => {
    const pair = await startFaultPair({ sourceArgs: stallArgs });
    try {
      const before = await snapshot(pair.src);
      await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 16 * MiB });
      await pair.src.execute('migrate', { uri: pair.uri });
      await waitForPhase(pair.src, (i) => i.status === 'active' && (i.ram?.transferred ?? 0) > 2 * MiB, 'bulk pass');
      await kill(pair.procs.dstVmm, 'SIGSTOP');
      await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 0 });
      const info = await ended(pair.src);
      assert.equal(info.status, 'failed');
      assert.match(info['error-desc'] ?? '', /stalled link/);
      const lost = await assertSourceIntact(pair, before);
      // The destination wakes up to a dead connection: it must not run the half-received VM.
      await kill(pair.procs.dstVmm, 'SIGCONT');
      await assertDestinationNotRunning(pair.dst);
      const retryLost = await retryToFreshDestination(pair, before);
      faultMatrix({
        fault: 'dst-sigstop',
        phase: 'ram-bulk',
        outcome: 'failed-source-resumed',
        pagesLost: lost + retryLost,
      });
    } finally {
      await pair.stop();
    }
  });

  test("the destination's READY never arrives (answers lost, link kept open)", async () => {
    const pair = await startFaultPair({ sourceArgs: stallArgs });
    const proxy = await TcpProxy.start(pair.uri);
    try {
      const before = await snapshot(pair.src);
      proxy.setDown('drop');
      await pair.src.execute('migrate', { uri: proxy.uri });
      await waitUntil(pair.src, () => proxy.sawEof, 'the source wrote EOF');
      // Whether the destination's READY was already dropped by then or comes too late (a loaded machine),
      // the source hears nothing: it must give up within its stall timeout.
      const info = await ended(pair.src);
      assert.equal(info.status, 'failed');
      assert.match(info['error-desc'] ?? '', new RegExp(`no answer from the destination within ${STALL_MS} ms`));
      // The source gave up before GO: the destination (loaded, waiting for GO) must not start.
      await assertDestinationNotRunning(pair.dst);
      const lost = await assertSourceIntact(pair, before);
      const retryLost = await retryToFreshDestination(pair, before);
      faultMatrix({
        fault: 'ready-lost',
        phase: 'handshake',
        outcome: 'failed-source-resumed-destination-stopped',
        pagesLost: lost + retryLost,
        extra: { ready_dropped: proxy.downReceived > 0 ? 1 : 0, stall_timeout_ms: STALL_MS },
      });
    } finally {
      await proxy.close();
      await pair.stop();
    }
  });
});
