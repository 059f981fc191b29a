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
import { DEVICE_ARGS, faultFired, startDeviceBench, VFIO_NAME } from './support/device-faults.ts';
import { checkRetry, type FaultContext, type FaultRow, faultTable, retryToFresh } from './support/fault-table.ts';
import type { Info } from './support/faults.ts';
import { startMigration } from './support/phases.ts';

type VfioInfo = { name: string; 'device-state': number | null; lost?: string };
type Digests = { ram: string; devices: { name: string; digest: string | null; lost?: string }[] };

/** The destination of a failed source attempt: the stream ended early, it never started the VM. */
const STREAM_ENDS = { refused: /stream ends/ };

/** A source device fault: the attempt fails with `error`, after the processes logged `fired`. */
function sourceFault(
  name: string,
  fault: string,
  phase: string,
  fired: [role: string, line: RegExp][],
  error: RegExp,
  device: 'running' | 'left-saving' = 'running',
): FaultRow {
  return {
    name,
    fault,
    phase,
    inject: startMigration,
    after: async (ctx: FaultContext, info: Info) => {
      console.log(`  source: ${info['error-desc']}`);
      for (const [role, line] of fired) await faultFired(ctx.lines, role, line);
      return undefined;
    },
    expect: { status: 'failed', error, destination: STREAM_ENDS, device, retry: false },
  };
}

faultTable(
  'the source device refuses a transition or fails while saving',
  [
    sourceFault(
      'at setup: running -> pre-copy refused',
      'device-refuses-transition',
      'setup',
      [['src-device', /x-fault fail-transition@pre-copy: refuses running -> pre-copy/]],
      /0000:00:05\.0: the device refused device_state running -> pre-copy: .*EIO/,
    ),
    sourceFault(
      'during pre-copy: the device fails producing its data after 1 MiB',
      'device-save-error',
      'pre-copy',
      [['src-device', /x-fault fail-data@pre-copy: fails producing its state in pre-copy after \d+ bytes/]],
      /0000:00:05\.0: saving device data: REGION_READ failed at the peer \(EIO\)/,
    ),
    sourceFault(
      'at stop-and-copy: pre-copy -> stop-and-copy refused (the VM stop fails)',
      'device-refuses-transition',
      'stop-and-copy',
      [['src-device', /x-fault fail-transition@stop-and-copy: refuses pre-copy -> stop-and-copy/]],
      /stopping the VM failed: 0000:00:05\.0: the device refused device_state pre-copy -> stop-and-copy/,
    ),
    sourceFault(
      'at the end of stop-and-copy: stop-and-copy -> stopped refused, all data already sent',
      'device-refuses-transition',
      'save-complete',
      [['src-device', /x-fault fail-transition@stopped: refuses stop-and-copy -> stopped/]],
      /the device refused device_state stop-and-copy -> stopped/,
    ),
    // The guest runs, with every page and the device state as before; the device could not leave its
    // save session and says so: it is still in pre-copy (running, and saving), not claimed to be RUNNING.
    sourceFault(
      'at stop-and-copy again, and then the return to running refused too: the device stays saving',
      'device-refuses-transition+notifier-refused',
      'stop-and-copy',
      [
        ['src-device', /x-fault fail-transition@stop-and-copy: refuses pre-copy -> stop-and-copy/],
        ['src-device', /x-fault fail-transition@running: refuses pre-copy -> running/],
        ['src-vmm', /0000:00:05\.0: could not return to running: .*pre-copy -> running/],
      ],
      /stopping the VM failed: 0000:00:05\.0: the device refused device_state pre-copy -> stop-and-copy/,
      'left-saving',
    ),
  ],
  {
    bench: () =>
      startDeviceBench({
        sourceFaults: [
          'fail-transition@pre-copy',
          'fail-data@pre-copy,after=1M',
          'fail-transition@stop-and-copy',
          'fail-transition@stopped',
          // The fifth attempt: the stop is refused (the second such fault, after the fourth attempt's stop
          // went through), and so is the notifier's return to running (the fourth transition into
          // running, after those of attempts 2, 3 and 4).
          'fail-transition@stop-and-copy,after=1',
          'fail-transition@running,after=3',
        ],
      }),
    last: {
      name: 'after all of them, a migration to a fresh destination succeeds (the stale save session is ended first)',
      run: async (bench) => {
        checkRetry(await retryToFresh(bench.pair, bench.start));
        await faultFired(bench.lines, 'src-vmm', /vfio_save_setup_stale_session name=0000:00:05\.0 state=pre-copy/);
      },
    },
  },
);

/** The source device server SIGKILLs itself in `phase`: the device is lost, the guest runs on. */
function serverKilled(phase: string, fault: string): FaultRow {
  return {
    name: `during ${phase}: the migration fails naming the lost device, the guest runs on without it`,
    fault: 'source-device-server-sigkill',
    phase,
    bench: () => startDeviceBench({ sourceFaults: [fault] }),
    inject: startMigration,
    after: async (ctx) => {
      const { pair } = ctx;
      await faultFired(ctx.lines, 'src-device', new RegExp(`x-fault kill-data@${phase}: SIGKILL`));
      const dev = pair.procs.srcDevices[0]!.child;
      if (dev.exitCode === null && dev.signalCode === null) await once(dev, 'exit');
      assert.equal(dev.signalCode, 'SIGKILL', 'the device server died by SIGKILL');
      // The VMM reports the device as lost rather than pretending.
      const vfio = await pair.src.execute<VfioInfo[]>('x-query-vfio');
      assert.equal(vfio.length, 1);
      assert.match(vfio[0]!.lost ?? '', /peer closed the connection/);
      const digests = await pair.src.execute<Digests>('x-query-digests');
      assert.deepEqual(digests.devices, [{ name: VFIO_NAME, digest: null, lost: vfio[0]!.lost }]);
      // What the user must do: the device state is gone, so no migration can carry this VM any more.
      // The VMM refuses at once and says so (shut the guest down, restart it with a new device server).
      await assert.rejects(
        pair.src.execute('migrate', { uri: pair.uri }),
        /cannot migrate: device 0000:00:05\.0 is lost .* shut the guest down cleanly and start it again with a new device server/,
      );
      // The guest can still be stopped and continued (the lost device is left out of run-state changes).
      await pair.src.execute('stop');
      await pair.src.execute('cont');
      return undefined;
    },
    expect: {
      status: 'failed',
      error: /^device 0000:00:05\.0 lost \(its device server hung up\) during the migration: /,
      device: 'lost',
      destination: STREAM_ENDS,
      retry: false,
    },
  };
}

faultTable('the source device server is killed (SIGKILL) mid-save', [
  serverKilled('pre-copy', 'kill-data@pre-copy,after=1M'),
  serverKilled('stop-and-copy', 'kill-data@stop-and-copy'),
]);

/** The destination device refuses the state: the destination names why, the source learns it or sees
 * the connection reset, and resumes. */
function destinationRefuses(
  name: string,
  fault: string,
  why: RegExp,
  o: { destination?: FaultRow['destination']; fired?: RegExp } = {},
): FaultRow {
  return {
    name,
    fault,
    phase: 'load',
    destination: o.destination,
    inject: startMigration,
    after: async (ctx, info) => {
      const desc = (await ctx.pair.dst.execute<Info>('query-migrate'))['error-desc'] ?? '';
      console.log(`  destination: ${desc}`);
      // The source learns the destination's reason over the return path when it reads it before its own
      // writes fail: a destination that gives up mid-stream closes the connection, and a source still
      // sending then sees the reset first (as QEMU's would). Either way it fails, and resumes.
      const src = info['error-desc'] ?? '';
      if (/the destination could not load the VM: /.test(src))
        assert.ok(src.includes(desc), `${src} carries "${desc}"`);
      else assert.match(src, /ECONNRESET|EPIPE/);
      if (o.fired) await faultFired(ctx.lines, 'dst-device', o.fired);
      return undefined;
    },
    expect: { status: 'failed', destination: { refused: why }, retry: false },
  };
}

faultTable(
  'the destination device rejects the data',
  [
    destinationRefuses(
      'a device with a different memory size',
      'destination-device-mismatch',
      /section "0000:00:05\.0\/vfio" .*refused: 0000:00:05\.0: loading device data: REGION_WRITE failed at the peer \(EINVAL\)/,
    ),
    // The saved state names its device model: register-file refuses it.
    destinationRefuses(
      'a device of another kind (register-file)',
      'destination-device-other-kind',
      /section "0000:00:05\.0\/vfio" .*refused/,
      { destination: { device: 'register-file', deviceArgs: [] } },
    ),
    destinationRefuses(
      'the destination device fails consuming a chunk (EINVAL on the data_size write)',
      'destination-device-refuses-chunk',
      /PART section "0000:00:05\.0\/vfio" .*refused: 0000:00:05\.0: loading device data: REGION_WRITE failed at the peer \(EINVAL\)/,
      {
        destination: {
          device: 'large-memory',
          deviceArgs: [...DEVICE_ARGS, '--x-fault', 'fail-data@resuming,after=2M,errno=EINVAL'],
        },
        fired: /x-fault fail-data@resuming/,
      },
    ),
  ],
  {
    // The bench's own destination has twice the device memory: its loader refuses the saved state.
    bench: () =>
      startDeviceBench({
        destination: { device: 'large-memory', deviceArgs: ['--device-mem', '8M', '--work-rate', '0'] },
      }),
    last: {
      name: 'then a migration to a fresh, matching destination succeeds',
      run: async (bench) =>
        checkRetry(
          await retryToFresh(bench.pair, bench.start, {
            destination: { device: 'large-memory', deviceArgs: DEVICE_ARGS },
          }),
        ),
    },
  },
);
