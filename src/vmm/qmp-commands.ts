// The QMP commands a VMM answers, mapped onto the Vmm and its migration controller.

import { VfioError } from '../errors.ts';
import { QmpError } from './qmp/errors.ts';
import type { QmpCommand } from './qmp/server.ts';
import { deviceLostMessage, type Vmm } from './vmm.ts';

function wrap(fn: (args: Record<string, unknown>) => unknown): QmpCommand['run'] {
  return async (args) => {
    try {
      return await fn(args);
    } catch (err) {
      if (err instanceof QmpError) throw err;
      const msg = err instanceof VfioError ? err.message.replace(/ \(E[A-Z0-9]+\)$/, '') : (err as Error).message;
      throw new QmpError('GenericError', msg);
    }
  };
}

export function vmmCommands(vmm: Vmm, quit: () => void): Record<string, QmpCommand> {
  const m = vmm.migration;
  return {
    migrate: {
      args: {
        uri: { type: 'str' },
        detach: { type: 'bool', optional: true },
        resume: { type: 'bool', optional: true },
      },
      run: wrap((a) => {
        if (a.resume) throw new QmpError('GenericError', 'resuming a paused postcopy migration is not supported');
        const lost = vmm.devices.find((d) => d.driver.lost);
        if (lost) throw new QmpError('GenericError', `cannot migrate: ${deviceLostMessage(lost)}`);
        m.migrate(a.uri as string);
        return {};
      }),
    },
    'query-migrate': { args: {}, run: () => m.info() },
    migrate_cancel: { args: {}, run: wrap(() => m.cancel()) },
    'migrate-set-parameters': {
      args: {
        'downtime-limit': { type: 'int', optional: true, min: 0, max: 2_000_000 },
        'max-bandwidth': { type: 'int', optional: true, min: 0, max: Number.MAX_SAFE_INTEGER },
        'avail-switchover-bandwidth': { type: 'int', optional: true, min: 0, max: Number.MAX_SAFE_INTEGER },
      },
      run: wrap((a) => {
        m.setParameters({
          ...(a['downtime-limit'] !== undefined ? { downtimeLimit: a['downtime-limit'] as number } : {}),
          ...(a['max-bandwidth'] !== undefined ? { maxBandwidth: a['max-bandwidth'] as number } : {}),
          ...(a['avail-switchover-bandwidth'] !== undefined
            ? { availSwitchoverBandwidth: a['avail-switchover-bandwidth'] as number }
            : {}),
        });
        return {};
      }),
    },
    'query-migrate-parameters': {
      args: {},
      run: () => ({
        'downtime-limit': m.parameters.downtimeLimit,
        'max-bandwidth': m.parameters.maxBandwidth,
        'avail-switchover-bandwidth': m.parameters.availSwitchoverBandwidth,
      }),
    },
    'query-status': {
      args: {},
      run: () => ({ running: vmm.runState.running, singlestep: false, status: vmm.runState.state }),
    },
    stop: { args: {}, run: wrap(() => vmm.stop()) },
    cont: {
      args: {},
      run: wrap(() => {
        if (vmm.runState.state === 'inmigrate') throw new QmpError('GenericError', 'Migration is not finalized yet');
        return vmm.cont();
      }),
    },
    quit: { args: {}, run: () => quit() },
    // Vendor extension (x- prefix, as QEMU names unstable commands): digests proving two VMs equal.
    'x-query-digests': {
      args: { pages: { type: 'bool', optional: true } },
      run: wrap(async (a) => {
        const d = await vmm.digests();
        // Per-page digests (16 bytes each, base64) let a checker say which pages differ.
        return a.pages ? { ...d, pages: Buffer.from(vmm.memory.pageDigests()).toString('base64') } : d;
      }),
    },
    // Vendor extension: the synthetic guest's page writes per second, changed live (0 = idle guest).
    'x-set-dirty-rate': {
      args: { rate: { type: 'int', min: 0, max: 100_000_000 } },
      run: wrap((a) => {
        if (!vmm.workload) throw new QmpError('GenericError', 'this VM has no synthetic guest');
        vmm.workload.setRate(a.rate as number);
        return {};
      }),
    },
    // Each device's migration-region device_state as the device reports it right now.
    'x-query-vfio': {
      args: {},
      run: wrap(async () =>
        Promise.all(
          vmm.devices.map(async (d) =>
            d.driver.lost
              ? { name: d.name, 'device-state': null, lost: d.driver.lost, transferred: d.driver.transferred }
              : { name: d.name, 'device-state': await d.driver.deviceState(), transferred: d.driver.transferred },
          ),
        ),
      ),
    },
  };
}
