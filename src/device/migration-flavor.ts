// What a region-based migration flavor (the 2019 seed, Linux 5.8 "v1") offers its host: a device-specific
// region the VMM reads and writes, over the one MigrationBackend a device implements. The host picks the
// flavor module; the device never knows which one serves it. Counterpart: libvfio-user's v1-era
// vfu_setup_device_migration_callbacks, which put a device's callbacks behind region index 9.

import { SEED_REGION_SUBTYPE, SEED_REGION_TYPE, V1_REGION_SUBTYPE, V1_REGION_TYPE } from '../abi/migration.ts';
import type { MigrationBackend } from './backend.ts';
import type { DataSectionKind, RegionLayout } from './region-layout.ts';
import { SeedMigrationRegion, seedRegionLayout } from './seed-region.ts';
import { V1MigrationRegion, v1RegionLayout } from './v1-region.ts';

export type RegionFlavor = 'seed' | 'v1';
export const REGION_FLAVORS: readonly RegionFlavor[] = ['seed', 'v1'];

export interface MigrationRegion {
  readonly layout: RegionLayout;
  /** device_state in the v1/seed bit values (RUNNING 1, SAVING 2, RESUMING 4; v1 error 6). */
  readonly state: number;
  read(offset: number, length: number): Uint8Array;
  readInto(offset: number, dest: Uint8Array): void;
  /** A read with no copy, where the bytes stay put until the next access (see MigrationRegionAccess). */
  readView(offset: number, length: number): Uint8Array | undefined;
  /** `data` is valid during the call only (a server reuses a large request's memory): copy what is kept. */
  write(offset: number, data: Uint8Array): void;
  /** Device reset: the region returns to running with no session. */
  reset(): void;
}

export interface RegionFlavorOptions {
  backend: MigrationBackend;
  kind: DataSectionKind;
  dataSize: number;
  /** Seed only: room for one dirty-bitmap chunk in the region. */
  bitmapSize: number;
}

export interface RegionFlavorModule {
  readonly flavor: RegionFlavor;
  /** The region's TYPE capability. */
  readonly type: { type: number; subtype: number };
  /** Whether the VMM learns dirty pages through the region (seed) or through DIRTY_PAGES (v1). */
  readonly dirtyPagesInRegion: boolean;
  layout(options: Omit<RegionFlavorOptions, 'backend'>): RegionLayout;
  create(options: RegionFlavorOptions & { sectionMemory?: Uint8Array }): MigrationRegion;
}

export const REGION_FLAVOR_MODULES: Readonly<Record<RegionFlavor, RegionFlavorModule>> = {
  seed: {
    flavor: 'seed',
    type: { type: SEED_REGION_TYPE, subtype: SEED_REGION_SUBTYPE },
    dirtyPagesInRegion: true,
    layout: (o) => seedRegionLayout(o),
    create: (o) => new SeedMigrationRegion(o),
  },
  v1: {
    flavor: 'v1',
    type: { type: V1_REGION_TYPE, subtype: V1_REGION_SUBTYPE },
    dirtyPagesInRegion: false,
    layout: (o) => v1RegionLayout(o),
    create: (o) => new V1MigrationRegion(o),
  },
};
