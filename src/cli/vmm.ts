// `vfio-migrate vmm`: a VMM process: guest RAM, a synthetic guest, vfio-user devices, a QMP socket, and
// live migration out (QMP `migrate`) or in (`--incoming`).
import { native } from '../native/addon.ts';
import { MigrationRecorder } from '../vmm/migration-recorder.ts';
import { QmpServer } from '../vmm/qmp/server.ts';
import { vendorCommands, vmmBackend } from '../vmm/qmp-commands.ts';
import { Tracer } from '../vmm/trace.ts';
import { Vmm } from '../vmm/vmm.ts';
import type { VmmOptions } from './options/vmm.ts';

/** Freed heap a VMM process keeps for reuse: measured in bench `--only profile` (page faults in read()). */
export const VMM_MALLOC_TRIM_THRESHOLD = 64 << 20;

export async function runVmm(o: VmmOptions): Promise<number> {
  const log = (line: string) => process.stderr.write(`vmm[${process.pid}]: ${line}\n`);
  // Keep up to 64 MiB of freed heap mapped instead of returning it to the kernel after each GC and
  // faulting it back in, zeroed (native/src/memory.c). Set when Node's 64 KiB reads carried the stream; the
  // migration now reads into its own buffers (StreamSocket), and vfio-user messages still allocate.
  native().mallocTrimThreshold(VMM_MALLOC_TRIM_THRESHOLD);
  const vmm = await Vmm.create({
    memSize: o.mem,
    deviceSockets: o.deviceSocket ?? [],
    incoming: o.incoming !== undefined,
    workload: { vcpus: o.vcpus, pagesPerSecond: o.dirtyRate, pattern: o.pattern, reserved: o.dmaBuffers },
    trace: new Tracer(o.trace),
    log,
    stallTimeoutMs: o.stallTimeout,
    uuid: o.uuid,
    fill: o.fill,
    prefault: o.prefault ?? false,
    hugePages: o.hugePages,
    flavor: o.flavor,
    dmaRegions: o.dmaRegions,
    intx: o.intx ?? false,
  });
  let quit: () => void = () => {};
  const quitting = new Promise<void>((r) => {
    quit = r;
  });
  const startIncoming = (uri: string) => {
    vmm.migration
      .incoming(uri, (port) => console.log(`incoming: listening on port ${port}`), !o.paused)
      .then(
        () => {
          log(`incoming migration completed; the VM ${o.paused ? 'waits for cont' : 'runs here'}`);
          vmm.startHugePageSweep();
        },
        (err: Error) => log(`incoming migration failed: ${err.message}; the VM does not start here`),
      );
  };
  const qmp = await QmpServer.listen(o.qmp, vmmBackend(vmm, quit, startIncoming), {
    commands: vendorCommands(vmm),
    log,
  });
  const recorder = o.record
    ? MigrationRecorder.open(o.record, vmm.migration, { intervalMs: o.recordInterval, log })
    : undefined;
  vmm.eventSink = (e, d) => {
    qmp.emitEvent(e, d);
    recorder?.event(e, d);
  };
  console.log(`vmm ready: ${vmm.memory.size} bytes of guest RAM, ${vmm.devices.length} device(s), QMP on ${qmp.path}`);
  // QEMU's `-incoming defer`: the migration starts on QMP migrate-incoming, once capabilities are set.
  if (o.incoming && o.incoming !== 'defer') startIncoming(o.incoming);
  process.once('SIGINT', () => quit());
  process.once('SIGTERM', () => quit());
  await quitting;
  await qmp.close();
  await vmm.close();
  await recorder?.close();
  return 0;
}
