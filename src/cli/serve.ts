// `vfio-migrate serve`: host one sample device behind a vfio-user socket until SIGINT/SIGTERM.
import { parseFaultSpec, withFaults } from '../device/fault-injection.ts';
import type { DataSectionKind } from '../device/region-layout.ts';
import { createSampleDevice } from '../device/samples/index.ts';
import { HostedDevice } from '../vfio-user/hosted-device.ts';
import { VfioUserServer } from '../vfio-user/server.ts';
import type { ServeOptions } from './options/serve.ts';

export async function runServe(o: ServeOptions): Promise<number> {
  const kind: DataSectionKind = o.dataSection;
  const faults = (o.xFault ?? []).map(parseFaultSpec);
  const log = o.quiet ? () => {} : (line: string) => process.stderr.write(`serve[${process.pid}]: ${line}\n`);
  const sample = createSampleDevice(o.device, {
    log,
    memSize: o.deviceMem,
    workRate: o.workRate,
    fill: o.deviceFill,
    precopyQuota: o.xPrecopyQuota,
  });
  // Fault lines are printed even when quiet: a test reading stderr learns the fault really fired.
  const device = withFaults(sample, faults, {
    log: (line) => process.stderr.write(`serve[${process.pid}]: ${line}\n`),
  });
  const host = new HostedDevice(device, { flavor: o.flavor, dataSection: kind });
  const server = new VfioUserServer(host, { log }).listen(o.socket);
  console.log(`serving ${device.model} on ${server.path} (flavor ${o.flavor}, ${kind} data section)`);
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
