// Which migration interfaces a vfio-user device offers, found the ways a VMM finds them: a device-specific
// region (index ≥ 9) whose TYPE cap names a migration region (the seed's 2/1, Linux 5.8's 3/1), or
// DEVICE_FEATURE(MIGRATION, GET) answering with STOP_COPY (Linux 5.18+, libvfio-user since 2023; QEMU's
// vfio_migration_init asks the same question of a kernel device).

import { Errno } from '../abi/errno.ts';
import type { MigrationFlavor } from '../abi/migration.ts';
import { FeatureId, MigrationFlag } from '../abi/migration-v2.ts';
import { decodeMigrationData } from '../abi/vfio-user/feature-migration.ts';
import { VfioError } from '../errors.ts';
import type { VfioUserClient } from './client.ts';
import { findMigrationRegion, type MigrationRegionFound } from './region-port.ts';

export type OfferedMigration =
  | { flavor: 'seed' | 'v1'; region: MigrationRegionFound }
  | { flavor: 'v2' /** MigrationFlag bits: STOP_COPY, P2P, PRE_COPY. */; flags: bigint };

const REFUSALS = new Set<number>([Errno.EINVAL, Errno.ENOTTY, Errno.ENOTSUP]);

/** The v2 MIGRATION flags the device reports, or null when it answers that it has no such feature. */
export async function migrationFeatureFlags(client: VfioUserClient): Promise<bigint | null> {
  try {
    const reply = await client.deviceFeature({ feature: FeatureId.MIGRATION, get: true });
    const { flags } = decodeMigrationData(reply.data);
    return (flags & MigrationFlag.STOP_COPY) !== 0n ? flags : null;
  } catch (err) {
    // A device (or a server of an older era) without the feature refuses the command: EINVAL from
    // libvfio-user, ENOTTY from a kernel driver, ENOTSUP from others. Anything else is a real failure.
    if (err instanceof VfioError && REFUSALS.has(err.errno)) return null;
    throw err;
  }
}

/** Every migration interface the device offers, region flavors first. */
export async function discoverMigration(client: VfioUserClient): Promise<OfferedMigration[]> {
  const offered: OfferedMigration[] = [];
  const region = await findMigrationRegion(client);
  if (region) offered.push({ flavor: region.flavor, region });
  const flags = await migrationFeatureFlags(client);
  if (flags !== null) offered.push({ flavor: 'v2', flags });
  return offered;
}

/** "seed, v2" or "none", for messages. */
export function describeOffered(offered: readonly OfferedMigration[]): string {
  return offered.length ? offered.map((o) => o.flavor).join(', ') : 'none';
}

/** The flavors in an offer list (a forced flavor is checked against these). */
export function offeredFlavors(offered: readonly OfferedMigration[]): MigrationFlavor[] {
  return offered.map((o) => o.flavor);
}
