// Device-side faults during a live migration, injected for real in the device server processes
// (`serve --x-fault`, src/device/fault-injection.ts): the VMM meets each as a real errno on a real region
// access over vfio-user, or as a device server that is gone (SIGKILL). After each: the source guest runs
// with every page and its device state as before, the device back in RUNNING (QEMU's migration state
// notifier), and a migration to a fresh destination succeeds — or, when the device is lost, the VMM says
// so and refuses to migrate.
//
// One source serves several faults in a row (each fault fires once): starting four processes per fault
// would cost more than the whole budget of these tests. Each attempt after the first also shows that the
// migration starts again after the previous fault: it gets as far as the next, later, injected fault
// (checked by the device's own "x-fault" line), and the last attempt completes.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';
import { waitForMigration } from '../../src/vmm/local-hosts.ts';
import {
  assertDestinationRefused,
  assertRetrySucceeds,
  assertSourceIntact,
  attempt,
  DEVICE_ARGS,
  type Digests,
  digests,
  type FaultPair,
  faultFired,
  freshDestination,
  matrixLine,
  pagesDiffering,
  startFaultPair,
  type VfioInfo,
} from './support/faults.ts';

describe('the source device refuses a transition or fails while saving', () => {
  let pair: FaultPair;
  let start: Digests;
  before(async () => {
    pair = await startFaultPair({
      sourceDeviceArgs: [
        '--x-fault',
        'fail-transition@pre-copy',
        '--x-fault',
        'fail-data@pre-copy,after=1M',
        '--x-fault',
        'fail-transition@stop-and-copy',
        '--x-fault',
        'fail-transition@stopped',
      ],
    });
    start = await digests(pair.src);
  });
  after(() => pair?.stop());

  /** One attempt to a destination that must then report the source's failure, never a started VM. */
  async function faulted(
    phase: string,
    fired: RegExp,
    sourceError: RegExp,
  ): Promise<{ desc: string; pagesLost: number }> {
    const dst = phase === 'setup' ? null : await freshDestination(pair);
    try {
      const info = await attempt(pair, dst?.uri ?? pair.uri);
      assert.equal(info.status, 'failed');
      assert.match(info['error-desc'] ?? '', sourceError);
      await faultFired(pair, 'src-device', fired);
      await assertDestinationRefused(dst?.qmp ?? pair.dst, /stream ends/);
      const pagesLost = await assertSourceIntact(pair, start);
      return { desc: info['error-desc']!, pagesLost };
    } finally {
      await dst?.stop();
    }
  }

  test('at setup: running -> pre-copy refused', async () => {
    const r = await faulted(
      'setup',
      /x-fault fail-transition@pre-copy: refuses running -> pre-copy/,
      /0000:00:05\.0: the device refused device_state running -> pre-copy: .*EIO/,
    );
    matrixLine({ fault: 'device-refuses-transition', phase: 'setup', outcome: 'failed,source-resumed', ...r });
  });

  test('during pre-copy: the device fails producing its data after 1 MiB', async () => {
    const r = await faulted(
      'pre-copy',
      /x-fault fail-data@pre-copy: fails producing its state in pre-copy after \d+ bytes/,
      /0000:00:05\.0: saving device data: REGION_READ failed at the peer \(EIO\)/,
    );
    matrixLine({ fault: 'device-save-error', phase: 'pre-copy', outcome: 'failed,source-resumed', ...r });
  });

  test('at stop-and-copy: pre-copy -> stop-and-copy refused (the VM stop fails)', async () => {
    const r = await faulted(
      'stop-and-copy',
      /x-fault fail-transition@stop-and-copy: refuses pre-copy -> stop-and-copy/,
      /stopping the VM failed: 0000:00:05\.0: the device refused device_state pre-copy -> stop-and-copy/,
    );
    matrixLine({ fault: 'device-refuses-transition', phase: 'stop-and-copy', outcome: 'failed,source-resumed', ...r });
  });

  test('at the end of stop-and-copy: stop-and-copy -> stopped refused, all data already sent', async () => {
    const r = await faulted(
      'save-complete',
      /x-fault fail-transition@stopped: refuses stop-and-copy -> stopped/,
      /the device refused device_state stop-and-copy -> stopped/,
    );
    matrixLine({ fault: 'device-refuses-transition', phase: 'save-complete', outcome: 'failed,source-resumed', ...r });
  });

  test('after all of them, a migration to a fresh destination succeeds', async () => {
    await assertRetrySucceeds(pair);
  });
});

describe('the source device server is killed (SIGKILL) mid-save', () => {
  for (const [phase, fault] of [
    ['pre-copy', 'kill-data@pre-copy,after=1M'],
    ['stop-and-copy', 'kill-data@stop-and-copy'],
  ] as const) {
    test(`during ${phase}: the migration fails naming the lost device, the guest runs on without it`, async () => {
      const pair = await startFaultPair({ sourceDeviceArgs: ['--x-fault', fault] });
      try {
        const before = await digests(pair.src);
        const info = await attempt(pair, pair.uri);
        assert.equal(info.status, 'failed');
        await faultFired(pair, 'src-device', new RegExp(`x-fault kill-data@${phase}: SIGKILL`));
        const dev = pair.procs.srcDevice.child;
        if (dev.exitCode === null && dev.signalCode === null) await once(dev, 'exit');
        assert.equal(dev.signalCode, 'SIGKILL', 'the device server died by SIGKILL');
        assert.match(
          info['error-desc'] ?? '',
          /^device 0000:00:05\.0 lost \(its device server hung up\) during the migration: /,
        );
        await assertDestinationRefused(pair.dst, /stream ends/);
        // The guest runs on, its memory intact; the VMM reports the device as lost rather than pretending.
        assert.deepEqual(await pair.src.execute('query-status'), {
          running: true,
          singlestep: false,
          status: 'running',
        });
        const vfio = await pair.src.execute<VfioInfo[]>('x-query-vfio');
        assert.equal(vfio.length, 1);
        assert.equal(vfio[0]!['device-state'], null);
        assert.match(vfio[0]!.lost ?? '', /peer closed the connection/);
        const after = await digests(pair.src);
        const pagesLost = pagesDiffering(before, after);
        assert.equal(pagesLost, 0);
        assert.deepEqual(after.devices, [{ name: '0000:00:05.0', digest: null, lost: vfio[0]!.lost }]);
        // What the user must do: the device state is gone, so no migration can carry this VM any more.
        // The VMM refuses at once and says so (shut the guest down, restart it with a new device server).
        await assert.rejects(
          pair.src.execute('migrate', { uri: pair.uri }),
          /cannot migrate: device 0000:00:05\.0 is lost .* shut the guest down cleanly and start it again with a new device server/,
        );
        // The guest can still be stopped and continued (the lost device is left out of run-state changes).
        await pair.src.execute('stop');
        await pair.src.execute('cont');
        assert.equal((await pair.src.execute<{ status: string }>('query-status')).status, 'running');
        matrixLine({
          fault: 'source-device-server-sigkill',
          phase,
          outcome: 'failed,source-running,device-lost',
          pagesLost,
        });
      } finally {
        await pair.stop();
      }
    });
  }
});

describe('the destination device rejects the data', () => {
  let pair: FaultPair;
  let start: Digests;
  before(async () => {
    // The pair's own destination has twice the device memory: its loader refuses the saved state.
    pair = await startFaultPair({
      destination: { device: 'large-memory', deviceArgs: ['--device-mem', '8M', '--work-rate', '0'] },
    });
    start = await digests(pair.src);
  });
  after(() => pair?.stop());

  async function rejected(dstQmp: import('../../src/vmm/qmp/client.ts').QmpClient, uri: string, why: RegExp) {
    const info = await attempt(pair, uri);
    assert.equal(info.status, 'failed');
    // The source learns the destination's reason over the return path.
    assert.match(info['error-desc'] ?? '', /the destination could not load the VM: /);
    const desc = await assertDestinationRefused(dstQmp, why);
    assert.ok(info['error-desc']!.includes(desc), `${info['error-desc']} carries "${desc}"`);
    return assertSourceIntact(pair, start);
  }

  test('a device with a different memory size', async () => {
    const pagesLost = await rejected(
      pair.dst,
      pair.uri,
      /section "0000:00:05\.0\/vfio" .*refused: 0000:00:05\.0: loading device data: REGION_WRITE failed at the peer \(EINVAL\)/,
    );
    matrixLine({ fault: 'destination-device-mismatch', phase: 'load', outcome: 'failed,source-resumed', pagesLost });
  });

  test('a device of another kind (register-file)', async () => {
    const dst = await freshDestination(pair, { device: 'register-file' });
    try {
      // register-file has no device memory BAR: whatever comes first, the destination refuses.
      const pagesLost = await rejected(dst.qmp, dst.uri, /section "0000:00:05\.0\/vfio" .*refused/);
      matrixLine({
        fault: 'destination-device-other-kind',
        phase: 'load',
        outcome: 'failed,source-resumed',
        pagesLost,
      });
    } finally {
      await dst.stop();
    }
  });

  test('the destination device fails consuming a chunk (EINVAL on the data_size write)', async () => {
    const dst = await freshDestination(pair, {
      device: 'large-memory',
      deviceArgs: [...DEVICE_ARGS, '--x-fault', 'fail-data@resuming,after=2M,errno=EINVAL'],
    });
    try {
      const pagesLost = await rejected(
        dst.qmp,
        dst.uri,
        /PART section "0000:00:05\.0\/vfio" .*refused: 0000:00:05\.0: loading device data: REGION_WRITE failed at the peer \(EINVAL\)/,
      );
      await faultFired(pair, dst.procs.device.role, /x-fault fail-data@resuming/);
      matrixLine({
        fault: 'destination-device-refuses-chunk',
        phase: 'load',
        outcome: 'failed,source-resumed',
        pagesLost,
      });
    } finally {
      await dst.stop();
    }
  });

  test('then a migration to a fresh, matching destination succeeds', async () => {
    await assertRetrySucceeds(pair);
    // The source is done (postmigrate) once the destination has the VM.
    const info = await waitForMigration(pair.src);
    assert.equal(info.status, 'completed');
  });
});
