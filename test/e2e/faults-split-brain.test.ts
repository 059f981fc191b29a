// No split brain: exactly one side may ever run the VM. The switch-over is READY (destination loaded and
// verified) then GO (source committed). The link dies at each point around it:
// - before the source sees READY: the source resumes; the destination, though loaded, never starts;
// - after GO was delivered: the destination runs; the source stays stopped (postmigrate) although its
//   connection then dies under it (an RST);
// - GO sent but lost: the source has committed and stays stopped, the destination never got GO and does
//   not start either; neither runs until an operator decides (here: `cont` on the source).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  assertDestinationNotRunning,
  assertSourceIntact,
  ended,
  faultMatrix,
  retryToFreshDestination,
  sleep,
  snapshot,
  startFaultPair,
  waitUntil,
} from './support/faults.ts';
import { TcpProxy } from './support/tcp-proxy.ts';

type Status = { status: string; running: boolean };

describe('no split brain around the READY/GO switch-over', { concurrency: 2 }, () => {
  test('the link resets after the destination sent READY, before the source saw it', async () => {
    const pair = await startFaultPair({ autostart: true });
    const proxy = await TcpProxy.start(pair.uri);
    try {
      const before = await snapshot(pair.src);
      proxy.setDown('hold');
      await pair.src.execute('migrate', { uri: proxy.uri });
      await waitUntil(pair.src, () => proxy.sawEof && proxy.downReceived > 0, 'the destination sent READY');
      proxy.reset();
      const info = await ended(pair.src);
      assert.equal(info.status, 'failed');
      assert.equal(proxy.upAfterEof, 0, 'no GO went out');
      const dst = await assertDestinationNotRunning(pair.dst);
      assert.match(dst.error, /before GO|reset|closed/i);
      const lost = await assertSourceIntact(pair, before);
      const retryLost = await retryToFreshDestination(pair, before);
      faultMatrix({
        fault: 'tcp-reset',
        phase: 'ready-sent-not-seen',
        outcome: 'source-resumed-destination-stopped',
        pagesLost: lost + retryLost,
      });
    } finally {
      await proxy.close();
      await pair.stop();
    }
  });

  test("the source's link resets right after its GO was delivered", async () => {
    const pair = await startFaultPair({ autostart: true, spare: false });
    const proxy = await TcpProxy.start(pair.uri);
    try {
      proxy.afterEof = 'buffer';
      await pair.src.execute('migrate', { uri: proxy.uri });
      await waitUntil(pair.src, () => proxy.upAfterEof > 0, 'the source sent GO');
      await proxy.deliverThenResetSource();
      const info = await ended(pair.src);
      assert.equal(info.status, 'completed');
      assert.equal((await ended(pair.dst)).status, 'completed');
      const dst = await pair.dst.execute<Status>('query-status');
      assert.equal(dst.status, 'running', 'the destination runs the VM');
      // The source never comes back, however long we look.
      await sleep(300);
      const src = await pair.src.execute<Status>('query-status');
      assert.deepEqual([src.status, src.running], ['postmigrate', false]);
      const [a, b] = await Promise.all([snapshot(pair.src), snapshot(pair.dst)]);
      assert.equal(b.ram, a.ram, "the destination has the source's pages");
      assert.deepEqual(b.devices, a.devices);
      faultMatrix({ fault: 'tcp-reset', phase: 'after-go', outcome: 'destination-runs-source-stopped', pagesLost: 0 });
    } finally {
      await proxy.close();
      await pair.stop();
    }
  });

  test('GO sent but lost (the link dies with it)', async () => {
    const pair = await startFaultPair({ autostart: true });
    const proxy = await TcpProxy.start(pair.uri);
    try {
      const before = await snapshot(pair.src);
      proxy.afterEof = 'buffer'; // the GO stays in the proxy
      await pair.src.execute('migrate', { uri: proxy.uri });
      await waitUntil(pair.src, () => proxy.upAfterEof > 0, 'the source sent GO');
      proxy.reset();
      // The source committed when it sent GO: it must not resume on its own.
      const info = await ended(pair.src);
      assert.equal(info.status, 'completed');
      await sleep(300);
      const src = await pair.src.execute<Status>('query-status');
      assert.deepEqual([src.status, src.running], ['postmigrate', false]);
      // The destination never got GO: it does not start either.
      await assertDestinationNotRunning(pair.dst);
      // Neither runs: the operator decides. Continuing the source brings the VM back intact there.
      await pair.src.execute('cont');
      const lost = await assertSourceIntact(pair, before);
      const retryLost = await retryToFreshDestination(pair, before);
      faultMatrix({
        fault: 'go-lost',
        phase: 'commit',
        outcome: 'neither-runs-until-cont',
        pagesLost: lost + retryLost,
      });
    } finally {
      await proxy.close();
      await pair.stop();
    }
  });
});
