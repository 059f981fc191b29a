// The destination VMM killed (SIGKILL) in each phase of a live migration: the RAM bulk pass, pre-copy
// iterations, the device's stop-and-copy, and while it loads after the source has sent everything. Real
// processes and real TCP. Each test checks afterwards that the source VM runs, its pages and device state
// are as before, the device is RUNNING, and a retry to a fresh destination completes and verifies.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  assertSourceIntact,
  ended,
  faultMatrix,
  kill,
  quiesce,
  retryToFreshDestination,
  snapshot,
  startFaultPair,
  waitForPhase,
  waitUntil,
} from './support/faults.ts';
import { TcpProxy } from './support/tcp-proxy.ts';

const MiB = 1 << 20;

describe('destination VMM killed (SIGKILL) mid-migration', { concurrency: 2 }, () => {
  test('during the RAM bulk pass', async () => {
    const pair = await startFaultPair();
    try {
      const before = await snapshot(pair.src);
      await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 16 * MiB });
      await pair.src.execute('migrate', { uri: pair.uri });
      const at = await waitForPhase(
        pair.src,
        (i) => i.status === 'active' && (i.ram?.transferred ?? 0) > 2 * MiB,
        'the bulk pass under way',
      );
      await kill(pair.procs.dstVmm);
      const info = await ended(pair.src);
      assert.equal(info.status, 'failed');
      assert.match(info['error-desc'] ?? '', /connection|closed|reset|EPIPE/i);
      // Still the first pass when it failed: one log sync, less than the guest sent.
      assert.equal(at.ram?.['dirty-sync-count'], 1);
      assert.ok((info.ram?.transferred ?? 0) < (info.ram?.total ?? 0), 'the bulk pass had not finished');
      const lost = await assertSourceIntact(pair, before);
      const retryLost = await retryToFreshDestination(pair, before);
      faultMatrix({
        fault: 'dst-sigkill',
        phase: 'ram-bulk',
        outcome: 'failed-source-resumed',
        pagesLost: lost + retryLost,
      });
    } finally {
      await pair.stop();
    }
  });

  test('during pre-copy iterations (guest dirtying pages)', async () => {
    const pair = await startFaultPair();
    try {
      // The guest dirties pages faster than the link takes them, so pre-copy keeps iterating.
      await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 32 * MiB });
      await pair.src.execute('x-guest-dirty-rate', { 'pages-per-second': 20_000 });
      await pair.src.execute('migrate', { uri: pair.uri });
      await waitForPhase(
        pair.src,
        (i) => i.status === 'active' && (i.ram?.['dirty-sync-count'] ?? 0) >= 2,
        'the first pass after the bulk pass',
      );
      // Integrity: pages must change during the attempt to get here, so "before" is taken during it: the
      // link is slowed so the current pass lasts, the guest is quiesced, and the snapshot is taken once
      // nothing changes any more; the fault then comes while the migration still iterates.
      await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 1 * MiB });
      const before = await quiesce(pair.src);
      const at = await waitForPhase(pair.src, (i) => i.status === 'active', 'still iterating');
      await kill(pair.procs.dstVmm);
      const info = await ended(pair.src);
      assert.equal(info.status, 'failed');
      assert.ok((at.ram?.['dirty-sync-count'] ?? 0) >= 2, 'past the bulk pass');
      const lost = await assertSourceIntact(pair, before);
      const retryLost = await retryToFreshDestination(pair, before);
      faultMatrix({
        fault: 'dst-sigkill',
        phase: 'precopy-iterations',
        outcome: 'failed-source-resumed',
        pagesLost: lost + retryLost,
      });
    } finally {
      await pair.stop();
    }
  });

  test("during the device's stop-and-copy", async () => {
    // 128 MiB of device memory: the first pass takes 64 MiB of it (one helping per pass), the downtime
    // limit lets the rest go after the stop, and the throttled link makes that stop-and-copy last.
    const pair = await startFaultPair({ deviceMem: '128M' });
    try {
      const before = await snapshot(pair.src);
      await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 96 * MiB, 'downtime-limit': 20_000 });
      await pair.src.execute('migrate', { uri: pair.uri });
      await waitForPhase(pair.src, (i) => i.status === 'device', 'the switch-over');
      await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 8 * MiB });
      const at = await waitForPhase(
        pair.src,
        (i) => i.status === 'device' && (i.vfio?.transferred ?? 0) > 68 * MiB,
        'device data moving after the stop',
      );
      assert.equal((await pair.src.execute<{ status: string }>('query-status')).status, 'finish-migrate');
      await kill(pair.procs.dstVmm);
      const info = await ended(pair.src);
      assert.equal(info.status, 'failed');
      assert.ok((at.vfio?.transferred ?? 0) < 128 * MiB, 'the device had more to send');
      const lost = await assertSourceIntact(pair, before);
      const retryLost = await retryToFreshDestination(pair, before);
      faultMatrix({
        fault: 'dst-sigkill',
        phase: 'device-stop-and-copy',
        outcome: 'failed-source-resumed',
        pagesLost: lost + retryLost,
      });
    } finally {
      await pair.stop();
    }
  });

  test('while it loads, after the source sent everything (waiting for READY)', async () => {
    const pair = await startFaultPair();
    const proxy = await TcpProxy.start(pair.uri);
    try {
      const before = await snapshot(pair.src);
      await pair.src.execute('migrate', { uri: proxy.uri });
      // Let the destination load part of the stream, then keep the rest in the proxy: the source finishes
      // (EOF written, VM stopped, waiting for READY) while the destination is still loading.
      await waitUntil(pair.src, () => proxy.upReceived > 8 * MiB, '8 MiB forwarded');
      proxy.setUp('buffer');
      await waitUntil(pair.src, () => proxy.sawEof, 'the source wrote EOF');
      const at = await pair.src.execute<{ status: string }>('query-status');
      assert.equal(at.status, 'finish-migrate', 'the source is stopped, waiting for READY');
      assert.ok(proxy.upForwarded < proxy.upReceived, 'the destination has not had the whole stream');
      await kill(pair.procs.dstVmm);
      const info = await ended(pair.src);
      assert.equal(info.status, 'failed');
      const lost = await assertSourceIntact(pair, before);
      const retryLost = await retryToFreshDestination(pair, before);
      faultMatrix({
        fault: 'dst-sigkill',
        phase: 'load',
        outcome: 'failed-source-resumed',
        pagesLost: lost + retryLost,
      });
    } finally {
      await proxy.close();
      await pair.stop();
    }
  });
});
