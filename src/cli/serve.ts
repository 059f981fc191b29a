// `vfio-migrate serve`: host one sample device behind a vfio-user socket until SIGINT/SIGTERM.
import { parseArgs } from 'node:util';
import { parseFaultSpec, withFaults } from '../device/fault-injection.ts';
import type { DataSectionKind } from '../device/region-layout.ts';
import { createSampleDevice, SAMPLE_DEVICES } from '../device/samples/index.ts';
import { HostedDevice, SERVED_FLAVORS, type ServedFlavor } from '../vfio-user/hosted-device.ts';
import { VfioUserServer } from '../vfio-user/server.ts';
import { parseSize } from './format.ts';

export const serveUsage = `usage: vfio-migrate serve --device NAME --socket PATH [options]
  --device NAME         ${SAMPLE_DEVICES.join(' | ')}
  --socket PATH         UNIX socket to create (mode 0600)
  --flavor FLAVOR       migration protocol flavor: seed (default; the 2019 region with its dirty bitmap)
                        v1 (the Linux 5.8 region, dirty pages through DIRTY_PAGES) or v2 (DEVICE_FEATURE
                        state machine, MIG_DATA_READ/WRITE; 9 regions)
  --data-section KIND   mmapped (default) or trapped
  --device-mem SIZE     large-memory device memory (default 256M)
  --work-rate N         large-memory device writes per second while running (default 2000)
  --device-fill KIND    large-memory initial memory: zero (default) or random
  --quiet               no log lines on stderr
  --x-precopy-quota SIZE (testing) large-memory: release at most SIZE of state per pre-copy round
                        (then an empty chunk ends the round), so a migration takes several rounds
  --x-fault SPEC        (testing) inject a device fault; repeatable. SPEC = WHAT@STATE[,count=N][,after=SIZE]
                        WHAT: fail-transition | kill-transition | fail-data | kill-data (kill = SIGKILL self)
                        STATE: stopped | running | stop-and-copy | pre-copy | resuming; see
                        src/device/fault-injection.ts`;

export async function runServe(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      device: { type: 'string' },
      socket: { type: 'string' },
      flavor: { type: 'string', default: 'seed' },
      'data-section': { type: 'string', default: 'mmapped' },
      'device-mem': { type: 'string', default: '256M' },
      'work-rate': { type: 'string', default: '2000' },
      'device-fill': { type: 'string', default: 'zero' },
      quiet: { type: 'boolean', default: false },
      'x-fault': { type: 'string', multiple: true, default: [] },
      'x-precopy-quota': { type: 'string', default: '0' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(serveUsage);
    return 0;
  }
  if (!values.device || !values.socket) throw new Error(`--device and --socket are required\n${serveUsage}`);
  const flavor = values.flavor as ServedFlavor;
  if (!SERVED_FLAVORS.includes(flavor)) {
    throw new Error(`flavor "${values.flavor}" is not served (supported: ${SERVED_FLAVORS.join(', ')})`);
  }
  const kind = values['data-section'] as DataSectionKind;
  if (kind !== 'mmapped' && kind !== 'trapped') throw new Error('--data-section must be mmapped or trapped');
  const faults = values['x-fault']!.map(parseFaultSpec);
  const sample = createSampleDevice(values.device, {
    memSize: parseSize(values['device-mem']!),
    workRate: Number(values['work-rate']),
    fill: values['device-fill'] === 'random' ? 'random' : 'zero',
    precopyQuota: parseSize(values['x-precopy-quota']!),
  });
  if (values['device-fill'] !== 'random' && values['device-fill'] !== 'zero')
    throw new Error('--device-fill must be zero or random');
  const log = values.quiet ? () => {} : (line: string) => process.stderr.write(`serve[${process.pid}]: ${line}\n`);
  // Fault lines are printed even when quiet: a test reading stderr learns the fault really fired.
  const device = withFaults(sample, faults, {
    log: (line) => process.stderr.write(`serve[${process.pid}]: ${line}\n`),
  });
  const host = new HostedDevice(device, { flavor, dataSection: kind });
  const server = new VfioUserServer(host, { log }).listen(values.socket);
  console.log(`serving ${device.model} on ${server.path} (flavor ${values.flavor}, ${kind} data section)`);
  await new Promise<void>((resolve) => {
    const stop = (sig: string) => {
      log(`${sig}: shutting down`);
      resolve();
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
  server.close();
  host.close();
  return 0;
}
