// The VMM behind its QMP socket: the standard commands through the QMP server's typed backend (which
// checks arguments, URIs and ranges the way QEMU does before anything reaches the VMM), plus vendor `x-`
// commands (QEMU's prefix for unstable ones) that tests and the demo use to prove two VMs equal.

import { VfioError } from '../errors.ts';
import { CAPABILITY_NAMES, type CapabilityName } from './migration/capabilities.ts';
import { MigrationError } from './migration/errors.ts';
import type { QmpCommand, QmpVmmBackend } from './qmp/commands.ts';
import { QmpError } from './qmp/protocol.ts';
import { deviceLostMessage, type Vmm } from './vmm.ts';

/** A VMM refusal as QMP sends it: its class with the reason alone (no errno name, which QEMU never sends). */
function qmpError(err: unknown): unknown {
  if (err instanceof MigrationError) return new QmpError(err.qmpClass, err.desc);
  if (err instanceof VfioError) return new QmpError('GenericError', err.detail);
  return err;
}

async function mapped<T>(fn: () => T | Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw qmpError(err);
  }
}

/** The standard commands' backend on a VMM; `quit` ends the process once the reply is out. */
export function vmmBackend(vmm: Vmm, quit: () => void, incoming?: (uri: string) => void): QmpVmmBackend {
  const m = vmm.migration;
  return {
    migrate: (uri) =>
      mapped(() => {
        const lost = vmm.devices.find((d) => d.driver.lost);
        if (lost) throw new QmpError('GenericError', `cannot migrate: ${deviceLostMessage(lost)}`);
        m.migrate(uri);
      }),
    queryMigrate: () => m.info(),
    migrateCancel: () => mapped(() => m.cancel()),
    setMigrationParameters: (p) =>
      m.setParameters({
        ...(p['downtime-limit'] !== undefined ? { downtimeLimit: p['downtime-limit'] } : {}),
        ...(p['max-bandwidth'] !== undefined ? { maxBandwidth: p['max-bandwidth'] } : {}),
        ...(p['avail-switchover-bandwidth'] !== undefined
          ? { availSwitchoverBandwidth: p['avail-switchover-bandwidth'] }
          : {}),
        ...(p['multifd-channels'] !== undefined ? { multifdChannels: p['multifd-channels'] } : {}),
        ...(p['x-multifd-io'] !== undefined ? { multifdIo: p['x-multifd-io'] } : {}),
      }),
    queryMigrationParameters: () => ({
      'downtime-limit': m.parameters.downtimeLimit,
      'max-bandwidth': m.parameters.maxBandwidth,
      'avail-switchover-bandwidth': m.parameters.availSwitchoverBandwidth,
      'multifd-channels': m.parameters.multifdChannels,
      'x-multifd-io': m.parameters.multifdIo,
    }),
    capabilityNames: CAPABILITY_NAMES,
    setMigrationCapabilities: (changes) =>
      mapped(() => m.setCapabilities(changes as { capability: CapabilityName; state: boolean }[])),
    queryMigrationCapabilities: () =>
      CAPABILITY_NAMES.map((capability) => ({ capability, state: m.capabilities[capability] })),
    migrateIncoming: (uri) =>
      mapped(() => {
        // QEMU's qmp_migrate_incoming checks, in its words.
        if (!vmm.options.incoming)
          throw new QmpError('GenericError', "'-incoming' was not specified on the command line");
        if (m.status !== 'none') throw new QmpError('GenericError', 'The incoming migration has already been started');
        if (!incoming) throw new QmpError('GenericError', 'this VMM takes no deferred incoming migration');
        incoming(uri);
      }),
    queryStatus: () => ({ running: vmm.runState.running, status: vmm.runState.state }),
    stop: () => mapped(() => vmm.stop()),
    cont: () =>
      mapped(() => {
        // QEMU's qmp_cont refuses while an incoming migration has not finished.
        if (vmm.runState.state === 'inmigrate') throw new QmpError('GenericError', 'Migration is not finalized yet');
        return vmm.cont();
      }),
    quit,
  };
}

/** Vendor commands: digests proving two VMs equal, and each device's migration state. */
export function vendorCommands(vmm: Vmm): Record<string, QmpCommand> {
  return {
    'x-query-digests': {
      args: { pages: { type: 'bool', optional: true } },
      run: (a) =>
        mapped(async () => {
          const d = await vmm.digests();
          // Per-page digests (16 bytes each, base64) let a checker say which pages differ.
          return a.pages ? { ...d, pages: Buffer.from(vmm.memory.pageDigests()).toString('base64') } : d;
        }),
    },
    // Guest RAM's background huge-page sweep (Vmm.startHugePageSweep): where it stands, its passes and what
    // it collapsed (tests wait for a pass; /proc/PID/smaps says what the kernel maps).
    'x-query-guest-memory': {
      args: {},
      run: () => ({
        size: vmm.memory.size,
        'huge-page-sweep': vmm.hugePageSweep?.state ?? 'none',
        'huge-page-passes': vmm.hugePageSweep?.passes ?? 0,
        'swept-huge-bytes': vmm.hugePageSweep?.result.hugeBytes ?? 0,
        // The errno MADV_COLLAPSE failed with, which ended the sweep (the rest stays in 4 KiB pages).
        'swept-failure': vmm.hugePageSweep?.result.failure ?? null,
      }),
    },
    // The synthetic guest's page-write rate, changed live (pages/s over all vCPUs; 0 = idle): lets a test
    // fill RAM, dirty pages until a migration iterates, then quiesce the guest to snapshot its digests.
    'x-guest-dirty-rate': {
      args: { 'pages-per-second': { type: 'int', min: 0, max: 100_000_000 } },
      run: (a) =>
        mapped(() => {
          if (!vmm.workload) throw new QmpError('GenericError', 'this VM has no synthetic guest workload');
          vmm.workload.setRate(a['pages-per-second'] as number);
          return {};
        }),
    },
    // What a guest driver does through a BAR: read or write a device region (hex bytes), so a test can put
    // a pattern into a device and read it back after a migration. The device is named as in x-query-vfio.
    'x-vfio-region-write': {
      args: {
        device: { type: 'str' },
        region: { type: 'int', min: 0, max: 0xffff_ffff },
        offset: { type: 'int', min: 0 },
        data: { type: 'str' },
      },
      run: (a) =>
        mapped(async () => {
          const hex = a.data as string;
          if (!/^([0-9a-fA-F]{2})*$/.test(hex)) throw new QmpError('GenericError', 'data must be hex bytes');
          await deviceNamed(vmm, a.device as string).client.regionWrite(
            a.region as number,
            a.offset as number,
            Buffer.from(hex, 'hex'),
          );
          return {};
        }),
    },
    'x-vfio-region-read': {
      args: {
        device: { type: 'str' },
        region: { type: 'int', min: 0, max: 0xffff_ffff },
        offset: { type: 'int', min: 0 },
        size: { type: 'int', min: 0, max: 1 << 20 },
      },
      run: (a) =>
        mapped(async () => {
          const d = deviceNamed(vmm, a.device as string);
          const data = await d.client.regionRead(a.region as number, a.offset as number, a.size as number);
          return { data: Buffer.from(data).toString('hex') };
        }),
    },
    // Each device's migration state as the device reports it right now (its flavor's number and name), and
    // what moved.
    'x-query-vfio': {
      args: {},
      run: () =>
        mapped(() =>
          Promise.all(
            vmm.devices.map(async (d) => {
              const counters = {
                flavor: d.driver.flavor,
                transferred: d.driver.transferred,
                chunks: d.driver.chunks,
                'precopy-rounds': d.driver.precopyRounds,
              };
              return d.driver.lost
                ? { name: d.name, 'device-state': null, lost: d.driver.lost, ...counters }
                : await d.driver.deviceState().then((s) => ({
                    name: d.name,
                    'device-state': s,
                    'device-state-name': d.driver.stateName(s),
                    ...counters,
                  }));
            }),
          ),
        ),
    },
  };
}

function deviceNamed(vmm: Vmm, name: string) {
  const d = vmm.devices.find((x) => x.name === name);
  if (!d)
    throw new QmpError('DeviceNotFound', `no device ${name} (devices: ${vmm.devices.map((x) => x.name).join(', ')})`);
  return d;
}
