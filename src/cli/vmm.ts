// `vfio-migrate vmm`: a VMM process: guest RAM, a synthetic guest, vfio-user devices, a QMP socket, and
// live migration out (QMP `migrate`) or in (`--incoming`).
import { parseArgs } from 'node:util';
import type { WritePattern } from '../vmm/guest/workload-control.ts';
import { MigrationRecorder } from '../vmm/migration-recorder.ts';
import { QmpServer } from '../vmm/qmp/server.ts';
import { vendorCommands, vmmBackend } from '../vmm/qmp-commands.ts';
import { Tracer } from '../vmm/trace.ts';
import { FLAVOR_CHOICES, type FlavorChoice } from '../vmm/vfio/attach.ts';
import { Vmm } from '../vmm/vmm.ts';
import { parseSize } from './format.ts';

export const vmmUsage = `usage: vfio-migrate vmm --device-socket PATH --qmp PATH [options]
  --device-socket PATH[,precopy=off]
                        a vfio-user device (repeat for several); precopy=off leaves a v2 device's
                        PRE_COPY unused (stop-copy only)
  --flavor F            migration interface to drive on each device: auto (default: the newest one the
                        device offers), seed, v1 or v2 (refused if the device does not offer it)
  --qmp PATH            QMP control socket to create (mode 0600)
  --incoming URI        wait for a migration: tcp:HOST:PORT (port 0 picks one) or file:PATH
  --paused              after an incoming migration, stay paused until QMP 'cont' (QEMU's -S)
  --mem SIZE            guest RAM (default 1G)
  --vcpus N             synthetic vCPUs (default 2)
  --dirty-rate N        guest page writes per second, all vCPUs (default 20000; 0 = idle guest)
  --pattern P           random | hot | sequential (default hot)
  --fill KIND           zero (default) or random: guest RAM contents at boot (a non-zero guest to migrate)
  --prefault            fault all of guest RAM in at startup (QEMU's -mem-prealloc), not on first use
  --trace PATTERN       trace events, e.g. 'vfio_*' (to stderr)
  --dma-regions N       map guest RAM into each device as N equal DMA regions (default 1), as QEMU maps
                        one per RAM section
  --intx                wire each device's INTx to an eventfd (SET_IRQS)
  --stall-timeout MS    a migration link that moves no data this long fails, on either side, as does
                        a destination that does not answer READY within it (default 10000)
  --record FILE         write this VMM's migrations as JSON lines: QMP events, query-migrate samples,
                        results (vfio-migrate report FILE renders them; docs/report.md)
  --record-interval MS  sampling interval of --record while a migration is active (default 100)`;

export async function runVmm(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      'device-socket': { type: 'string', multiple: true, default: [] },
      flavor: { type: 'string', default: 'auto' },
      qmp: { type: 'string' },
      incoming: { type: 'string' },
      paused: { type: 'boolean', default: false },
      mem: { type: 'string', default: '1G' },
      vcpus: { type: 'string', default: '2' },
      'dirty-rate': { type: 'string', default: '20000' },
      pattern: { type: 'string', default: 'hot' },
      fill: { type: 'string', default: 'zero' },
      prefault: { type: 'boolean', default: false },
      trace: { type: 'string', default: '' },
      'stall-timeout': { type: 'string', default: '10000' },
      'dma-regions': { type: 'string', default: '1' },
      intx: { type: 'boolean', default: false },
      record: { type: 'string' },
      'record-interval': { type: 'string', default: '100' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(vmmUsage);
    return 0;
  }
  if (!values.qmp) throw new Error(`--qmp is required\n${vmmUsage}`);
  const pattern = values.pattern as WritePattern;
  if (!['random', 'hot', 'sequential'].includes(pattern))
    throw new Error('--pattern must be random, hot or sequential');
  const flavor = values.flavor as FlavorChoice;
  if (!FLAVOR_CHOICES.includes(flavor)) throw new Error(`--flavor must be one of ${FLAVOR_CHOICES.join(', ')}`);
  if (values.fill !== 'zero' && values.fill !== 'random') throw new Error('--fill must be zero or random');
  const log = (line: string) => process.stderr.write(`vmm[${process.pid}]: ${line}\n`);
  const rate = Number(values['dirty-rate']);
  const vmm = await Vmm.create({
    memSize: parseSize(values.mem!),
    deviceSockets: values['device-socket']!,
    incoming: values.incoming !== undefined,
    workload: { vcpus: Math.max(1, Number(values.vcpus)), pagesPerSecond: rate, pattern },
    trace: new Tracer(values.trace!),
    log,
    stallTimeoutMs: Number(values['stall-timeout']),
    fill: values.fill as 'zero' | 'random',
    prefault: values.prefault,
    flavor,
    dmaRegions: Number(values['dma-regions']),
    intx: values.intx,
  });
  let quit: () => void = () => {};
  const quitting = new Promise<void>((r) => {
    quit = r;
  });
  const qmp = await QmpServer.listen(values.qmp, vmmBackend(vmm, quit), { commands: vendorCommands(vmm), log });
  const recorder = values.record
    ? MigrationRecorder.open(values.record, vmm.migration, { intervalMs: Number(values['record-interval']), log })
    : undefined;
  vmm.eventSink = (e, d) => {
    qmp.emitEvent(e, d);
    recorder?.event(e, d);
  };
  console.log(`vmm ready: ${vmm.memory.size} bytes of guest RAM, ${vmm.devices.length} device(s), QMP on ${qmp.path}`);
  if (values.incoming) {
    vmm.migration
      .incoming(values.incoming, (port) => console.log(`incoming: listening on port ${port}`), !values.paused)
      .then(
        () => log(`incoming migration completed; the VM ${values.paused ? 'waits for cont' : 'runs here'}`),
        (err: Error) => log(`incoming migration failed: ${err.message}; the VM does not start here`),
      );
  }
  process.once('SIGINT', () => quit());
  process.once('SIGTERM', () => quit());
  await quitting;
  await qmp.close();
  await vmm.close();
  await recorder?.close();
  return 0;
}
