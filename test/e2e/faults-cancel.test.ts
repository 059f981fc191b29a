// migrate_cancel in every phase: setup (the source blocked in the device's save_setup), the RAM bulk
// pass, pre-copy iterations, the device's stop-and-copy, the handshake (READY held back), and after
// completion, where it must change nothing. Before the commit point the migration ends `cancelled`, the
// source runs with its pages and device state as before and the device RUNNING, the destination never
// runs, and a retry to a fresh destination succeeds.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  assertDestinationNotRunning,
  assertSourceIntact,
  ended,
  faultMatrix,
  kill,
  quiesce,
  retryToFreshDestination,
  snapshot,
  startFaultPair,
  waitForLine,
  waitForPhase,
  waitUntil,
} from './support/faults.ts';
import { TcpProxy } from './support/tcp-proxy.ts';

const MiB = 1 << 20;

describe('migrate_cancel in every phase', { concurrency: 2 }, () => {
  test('during setup (the source waits on the device in save_setup)', async () => {
    const lines: string[] = [];
    const pair = await startFaultPair({ sourceArgs: ['--trace', 'vfio_save_setup'], lines });
    try {
      const before = await snapshot(pair.src);
      // The source's device server stops answering, so the setup step that puts the device into SAVING
      // waits for it: the migration is held in `setup` for as long as the test likes.
      await kill(pair.procs.srcDevice, 'SIGSTOP');
      await pair.src.execute('migrate', { uri: pair.uri });
      await waitForLine(lines, /src-vmm: .*vfio_save_setup/);
      assert.equal((await pair.src.execute<{ status: string }>('query-migrate')).status, 'setup');
      await pair.src.execute('migrate_cancel');
      assert.equal((await pair.src.execute<{ status: string }>('query-migrate')).status, 'cancelling');
      await kill(pair.procs.srcDevice, 'SIGCONT');
      const info = await ended(pair.src);
      assert.equal(info.status, 'cancelled');
      await assertDestinationNotRunning(pair.dst);
      const lost = await assertSourceIntact(pair, before);
      const retryLost = await retryToFreshDestination(pair, before);
      faultMatrix({
        fault: 'cancel',
        phase: 'setup',
        outcome: 'cancelled-source-resumed',
        pagesLost: lost + retryLost,
      });
    } finally {
      await pair.stop();
    }
  });

  test('during the RAM bulk pass', async () => {
    const pair = await startFaultPair();
    try {
      const before = await snapshot(pair.src);
      await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 16 * MiB });
      await pair.src.execute('migrate', { uri: pair.uri });
      const at = await waitForPhase(
        pair.src,
        (i) => i.status === 'active' && (i.ram?.transferred ?? 0) > 2 * MiB,
        'the bulk pass',
      );
      await pair.src.execute('migrate_cancel');
      const info = await ended(pair.src);
      assert.equal(info.status, 'cancelled');
      assert.equal(at.ram?.['dirty-sync-count'], 1);
      assert.ok((info.ram?.transferred ?? 0) < (info.ram?.total ?? 0), 'cancelled before the bulk pass ended');
      await assertDestinationNotRunning(pair.dst);
      const lost = await assertSourceIntact(pair, before);
      const retryLost = await retryToFreshDestination(pair, before);
      faultMatrix({
        fault: 'cancel',
        phase: 'ram-bulk',
        outcome: 'cancelled-source-resumed',
        pagesLost: lost + retryLost,
      });
    } finally {
      await pair.stop();
    }
  });

  test('during pre-copy iterations (guest dirtying pages)', async () => {
    const pair = await startFaultPair();
    try {
      await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 32 * MiB });
      await pair.src.execute('x-guest-dirty-rate', { 'pages-per-second': 20_000 });
      await pair.src.execute('migrate', { uri: pair.uri });
      await waitForPhase(
        pair.src,
        (i) => i.status === 'active' && (i.ram?.['dirty-sync-count'] ?? 0) >= 2,
        'the first pass after the bulk pass',
      );
      // As in the SIGKILL case: "before" is taken during the attempt, once the quiesced guest stands still,
      // while the slowed migration still iterates.
      await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 1 * MiB });
      const before = await quiesce(pair.src);
      const at = await waitForPhase(pair.src, (i) => i.status === 'active', 'still iterating');
      await pair.src.execute('migrate_cancel');
      const info = await ended(pair.src);
      assert.equal(info.status, 'cancelled');
      assert.ok((at.ram?.['dirty-sync-count'] ?? 0) >= 2, 'past the bulk pass');
      await assertDestinationNotRunning(pair.dst);
      const lost = await assertSourceIntact(pair, before);
      const retryLost = await retryToFreshDestination(pair, before);
      faultMatrix({
        fault: 'cancel',
        phase: 'precopy-iterations',
        outcome: 'cancelled-source-resumed',
        pagesLost: lost + retryLost,
      });
    } finally {
      await pair.stop();
    }
  });

  test("during the device's stop-and-copy", async () => {
    const pair = await startFaultPair({ deviceMem: '128M' });
    try {
      const before = await snapshot(pair.src);
      await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 96 * MiB, 'downtime-limit': 20_000 });
      await pair.src.execute('migrate', { uri: pair.uri });
      await waitForPhase(pair.src, (i) => i.status === 'device', 'the switch-over');
      await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 8 * MiB });
      await waitForPhase(
        pair.src,
        (i) => i.status === 'device' && (i.vfio?.transferred ?? 0) > 68 * MiB,
        'device data moving after the stop',
      );
      assert.equal((await pair.src.execute<{ status: string }>('query-status')).status, 'finish-migrate');
      await pair.src.execute('migrate_cancel');
      const info = await ended(pair.src);
      assert.equal(info.status, 'cancelled');
      await assertDestinationNotRunning(pair.dst);
      const lost = await assertSourceIntact(pair, before);
      const retryLost = await retryToFreshDestination(pair, before);
      faultMatrix({
        fault: 'cancel',
        phase: 'device-stop-and-copy',
        outcome: 'cancelled-source-resumed',
        pagesLost: lost + retryLost,
      });
    } finally {
      await pair.stop();
    }
  });

  test('in the handshake: everything sent, READY held back, then released', async () => {
    const pair = await startFaultPair();
    const proxy = await TcpProxy.start(pair.uri);
    try {
      const before = await snapshot(pair.src);
      proxy.setDown('hold');
      await pair.src.execute('migrate', { uri: proxy.uri });
      await waitUntil(pair.src, () => proxy.sawEof && proxy.downReceived > 0, 'the destination sent READY');
      assert.equal((await pair.src.execute<{ status: string }>('query-migrate')).status, 'device');
      await pair.src.execute('migrate_cancel');
      // READY arrives right after the cancel: the source must not commit (no GO) on it.
      proxy.setDown('forward');
      const info = await ended(pair.src);
      console.log(
        'DBG',
        JSON.stringify(info),
        proxy.upAfterEof,
        proxy.closed,
        JSON.stringify(await pair.dst.execute('query-status')),
        JSON.stringify(await pair.src.execute('query-status')),
      );
      assert.equal(info.status, 'cancelled');
      assert.equal(proxy.upAfterEof, 0, 'the source sent no GO');
      await assertDestinationNotRunning(pair.dst);
      const lost = await assertSourceIntact(pair, before);
      const retryLost = await retryToFreshDestination(pair, before);
      faultMatrix({
        fault: 'cancel',
        phase: 'handshake',
        outcome: 'cancelled-source-resumed-destination-stopped',
        pagesLost: lost + retryLost,
      });
    } finally {
      await proxy.close();
      await pair.stop();
    }
  });

  test('after completion: a no-op', async () => {
    const pair = await startFaultPair({ autostart: true, spare: false });
    try {
      await pair.src.execute('migrate', { uri: pair.uri });
      assert.equal((await ended(pair.src)).status, 'completed');
      assert.equal((await ended(pair.dst)).status, 'completed');
      const src = await snapshot(pair.src);
      await pair.src.execute('migrate_cancel');
      assert.equal((await pair.src.execute<{ status: string }>('query-migrate')).status, 'completed');
      assert.equal((await pair.src.execute<{ status: string }>('query-status')).status, 'postmigrate');
      const dst = await pair.dst.execute<{ status: string }>('query-status');
      assert.equal(dst.status, 'running', 'the destination runs the VM');
      assert.equal((await snapshot(pair.dst)).ram, src.ram, 'with the pages the source stopped with');
      faultMatrix({ fault: 'cancel', phase: 'completed', outcome: 'no-op-destination-runs', pagesLost: 0 });
    } finally {
      await pair.stop();
    }
  });
});
