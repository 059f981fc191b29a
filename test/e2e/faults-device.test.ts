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
import {
  assertDestinationRefused,
  attempt,
  DEVICE_ARGS,
  type DevicePair,
  faultFired,
  retryTo,
  startDevicePair,
  VFIO_NAME,
} from './support/device-faults.ts';
import { assertSourceIntact, faultMatrix, pagesDiffering, snapshot } from './support/faults.ts';

type VfioInfo = { name: string; 'device-state': number | null; lost?: string };
type Digests = { ram: string; devices: { name: string; digest: string | null; lost?: string }[] };

describe('the source device refuses a transition or fails while saving', () => {
  let pair: DevicePair;
  let first = true;
  before(async () => {
    pair = await startDevicePair({
      sourceFaults: [
        'fail-transition@pre-copy',
        'fail-data@pre-copy,after=1M',
        'fail-transition@stop-and-copy',
        'fail-transition@stopped',
        // The fifth attempt: the stop is refused (the second such fault, after the fourth attempt's stop
        // went through), and so is the notifier's return to running (the fourth transition into running,
        // after those of attempts 2, 3 and 4).
        'fail-transition@stop-and-copy,after=1',
        'fail-transition@running,after=3',
      ],
    });
  });
  after(() => pair?.stop());

  /** One attempt (to a fresh destination after the first); the destination then reports the failure. */
  async function faulted(fired: RegExp, sourceError: RegExp): Promise<number> {
    if (!first) await pair.freshDestination();
    first = false;
    const info = await attempt(pair, pair.uri);
    assert.equal(info.status, 'failed');
    assert.match(info['error-desc'] ?? '', sourceError);
    console.log(`  source: ${info['error-desc']}`);
    await faultFired(pair, 'src-device', fired);
    await assertDestinationRefused(pair.dst, /stream ends/);
    return assertSourceIntact(pair, pair.start);
  }

  test('at setup: running -> pre-copy refused', async () => {
    const pagesLost = await faulted(
      /x-fault fail-transition@pre-copy: refuses running -> pre-copy/,
      /0000:00:05\.0: the device refused device_state running -> pre-copy: .*EIO/,
    );
    faultMatrix({ fault: 'device-refuses-transition', phase: 'setup', outcome: 'failed,source-resumed', pagesLost });
  });

  test('during pre-copy: the device fails producing its data after 1 MiB', async () => {
    const pagesLost = await faulted(
      /x-fault fail-data@pre-copy: fails producing its state in pre-copy after \d+ bytes/,
      /0000:00:05\.0: saving device data: REGION_READ failed at the peer \(EIO\)/,
    );
    faultMatrix({ fault: 'device-save-error', phase: 'pre-copy', outcome: 'failed,source-resumed', pagesLost });
  });

  test('at stop-and-copy: pre-copy -> stop-and-copy refused (the VM stop fails)', async () => {
    const pagesLost = await faulted(
      /x-fault fail-transition@stop-and-copy: refuses pre-copy -> stop-and-copy/,
      /stopping the VM failed: 0000:00:05\.0: the device refused device_state pre-copy -> stop-and-copy/,
    );
    faultMatrix({
      fault: 'device-refuses-transition',
      phase: 'stop-and-copy',
      outcome: 'failed,source-resumed',
      pagesLost,
    });
  });

  test('at the end of stop-and-copy: stop-and-copy -> stopped refused, all data already sent', async () => {
    const pagesLost = await faulted(
      /x-fault fail-transition@stopped: refuses stop-and-copy -> stopped/,
      /the device refused device_state stop-and-copy -> stopped/,
    );
    faultMatrix({
      fault: 'device-refuses-transition',
      phase: 'save-complete',
      outcome: 'failed,source-resumed',
      pagesLost,
    });
  });

  test('at stop-and-copy again, and then the return to running refused too: the device stays saving', async () => {
    await pair.freshDestination();
    const info = await attempt(pair, pair.uri);
    assert.equal(info.status, 'failed');
    assert.match(
      info['error-desc'] ?? '',
      /stopping the VM failed: 0000:00:05\.0: the device refused device_state pre-copy -> stop-and-copy/,
    );
    console.log(`  source: ${info['error-desc']}`);
    await faultFired(pair, 'src-device', /x-fault fail-transition@stop-and-copy: refuses pre-copy -> stop-and-copy/);
    await faultFired(pair, 'src-device', /x-fault fail-transition@running: refuses pre-copy -> running/);
    await faultFired(pair, 'src-vmm', /0000:00:05\.0: could not return to running: .*pre-copy -> running/);
    await assertDestinationRefused(pair.dst, /stream ends/);
    // The guest runs, with every page and the device state as before; the device could not leave its save
    // session and says so: it is still in pre-copy (running, and saving), not claimed to be RUNNING.
    assert.equal((await pair.src.execute<{ status: string }>('query-status')).status, 'running');
    const now = await snapshot(pair.src);
    const pagesLost = pagesDiffering(pair.start, now);
    assert.equal(pagesLost, 0);
    assert.deepEqual(now.devices, pair.start.devices);
    assert.deepEqual(now.deviceStates, [3], 'device_state pre-copy (SAVING|RUNNING)');
    faultMatrix({
      fault: 'device-refuses-transition+notifier-refused',
      phase: 'stop-and-copy',
      outcome: 'failed,source-running,device-left-saving',
      pagesLost,
    });
  });

  test('after all of them, a migration to a fresh destination succeeds (the stale save session is ended first)', async () => {
    assert.equal(await retryTo(pair), 0);
    await faultFired(pair, 'src-vmm', /vfio_save_setup_stale_session name=0000:00:05\.0 state=pre-copy/);
  });
});

describe('the source device server is killed (SIGKILL) mid-save', () => {
  for (const [phase, fault] of [
    ['pre-copy', 'kill-data@pre-copy,after=1M'],
    ['stop-and-copy', 'kill-data@stop-and-copy'],
  ] as const) {
    test(`during ${phase}: the migration fails naming the lost device, the guest runs on without it`, async () => {
      const pair = await startDevicePair({ sourceFaults: [fault] });
      try {
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
        const digests = await pair.src.execute<Digests>('x-query-digests');
        assert.deepEqual(digests.devices, [{ name: VFIO_NAME, digest: null, lost: vfio[0]!.lost }]);
        const pagesLost = pagesDiffering(pair.start, await snapshot(pair.src));
        assert.equal(pagesLost, 0);
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
        faultMatrix({
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
  let pair: DevicePair;
  before(async () => {
    // The pair's own destination has twice the device memory: its loader refuses the saved state.
    pair = await startDevicePair({
      destination: { device: 'large-memory', deviceArgs: ['--device-mem', '8M', '--work-rate', '0'] },
    });
  });
  after(() => pair?.stop());

  async function rejected(why: RegExp): Promise<number> {
    const info = await attempt(pair, pair.uri);
    assert.equal(info.status, 'failed');
    const desc = await assertDestinationRefused(pair.dst, why);
    console.log(`  destination: ${desc}`);
    // The source learns the destination's reason over the return path when it reads it before its own
    // writes fail: a destination that gives up mid-stream closes the connection, and a source still
    // sending then sees the reset first (as QEMU's would). Either way it fails, and resumes.
    const src = info['error-desc'] ?? '';
    if (/the destination could not load the VM: /.test(src)) assert.ok(src.includes(desc), `${src} carries "${desc}"`);
    else assert.match(src, /ECONNRESET|EPIPE/);
    return assertSourceIntact(pair, pair.start);
  }

  test('a device with a different memory size', async () => {
    const pagesLost = await rejected(
      /section "0000:00:05\.0\/vfio" .*refused: 0000:00:05\.0: loading device data: REGION_WRITE failed at the peer \(EINVAL\)/,
    );
    faultMatrix({ fault: 'destination-device-mismatch', phase: 'load', outcome: 'failed,source-resumed', pagesLost });
  });

  test('a device of another kind (register-file)', async () => {
    await pair.freshDestination({ device: 'register-file', deviceArgs: [] });
    // The saved state names its device model: register-file refuses it.
    const pagesLost = await rejected(/section "0000:00:05\.0\/vfio" .*refused/);
    faultMatrix({
      fault: 'destination-device-other-kind',
      phase: 'load',
      outcome: 'failed,source-resumed',
      pagesLost,
    });
  });

  test('the destination device fails consuming a chunk (EINVAL on the data_size write)', async () => {
    await pair.freshDestination({
      device: 'large-memory',
      deviceArgs: [...DEVICE_ARGS, '--x-fault', 'fail-data@resuming,after=2M,errno=EINVAL'],
    });
    const pagesLost = await rejected(
      /PART section "0000:00:05\.0\/vfio" .*refused: 0000:00:05\.0: loading device data: REGION_WRITE failed at the peer \(EINVAL\)/,
    );
    await faultFired(pair, 'dst-device', /x-fault fail-data@resuming/);
    faultMatrix({
      fault: 'destination-device-refuses-chunk',
      phase: 'load',
      outcome: 'failed,source-resumed',
      pagesLost,
    });
  });

  test('then a migration to a fresh, matching destination succeeds', async () => {
    assert.equal(await retryTo(pair, { destination: { device: 'large-memory', deviceArgs: DEVICE_ARGS } }), 0);
  });
});
