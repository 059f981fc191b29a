// Attaching a device's migration driver: find what the device offers (a migration region's TYPE cap, or
// DEVICE_FEATURE MIGRATION) and open the driver of the flavor chosen, as QEMU's vfio_migration_init picks
// between its v1 and v2 code from what the kernel offers. `auto` takes the newest interface offered; a
// forced flavor the device lacks is refused, naming what it offers.

import { Errno } from '../../abi/errno.ts';
import type { FlavorChoice, MigrationFlavor } from '../../abi/migration.ts';
import { VfioError } from '../../errors.ts';
import type { VfioUserClient } from '../../vfio-user/client.ts';
import { describeOffered, discoverMigration, type OfferedMigration } from '../../vfio-user/migration-discovery.ts';
import { noTrace, type Tracer } from '../trace.ts';
import type { DmaRangeRef, VfioMigrationDriver } from './driver.ts';
import { SeedMigrationDriver } from './seed-driver.ts';
import { V1MigrationDriver } from './v1-driver.ts';
import { V2MigrationDriver } from './v2-driver.ts';

export { FLAVOR_CHOICES, type FlavorChoice } from '../../abi/migration.ts';

/** `auto` prefers the newest interface when a device offers several. */
const AUTO_ORDER: readonly MigrationFlavor[] = ['v2', 'v1', 'seed'];

export interface AttachOptions {
  flavor?: FlavorChoice;
  trace?: Tracer;
  /** v2: use PRE_COPY when the device offers it (default true). */
  precopy?: boolean;
  /** v2: the guest ranges mapped into the device, named when dirty logging starts. */
  dmaRanges?: readonly DmaRangeRef[];
}

export function chooseFlavor(
  name: string,
  offered: readonly OfferedMigration[],
  flavor: FlavorChoice,
): OfferedMigration {
  if (offered.length === 0) {
    throw new VfioError(
      Errno.ENOTSUP,
      `${name}: the device offers no migration interface (no migration region, no DEVICE_FEATURE MIGRATION); it cannot be migrated`,
    );
  }
  const pick =
    flavor === 'auto'
      ? AUTO_ORDER.map((f) => offered.find((o) => o.flavor === f)).find((o) => o !== undefined)
      : offered.find((o) => o.flavor === flavor);
  if (!pick) {
    throw new VfioError(
      Errno.ENOTSUP,
      `${name}: migration flavor ${flavor} was asked for, but the device offers ${describeOffered(offered)}`,
    );
  }
  return pick;
}

export async function attachMigrationDriver(
  client: VfioUserClient,
  name: string,
  options: AttachOptions = {},
): Promise<VfioMigrationDriver> {
  const pick = chooseFlavor(name, await discoverMigration(client), options.flavor ?? 'auto');
  const trace = options.trace ?? noTrace;
  switch (pick.flavor) {
    case 'seed':
      return SeedMigrationDriver.open(client, name, pick.region, trace);
    case 'v1':
      return V1MigrationDriver.open(client, name, pick.region, trace);
    case 'v2':
      return V2MigrationDriver.open(client, name, pick.flags, {
        precopy: options.precopy,
        dmaRanges: options.dmaRanges,
        trace,
      });
  }
}
