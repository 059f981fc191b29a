// The migration region's register block, in both of its published layouts, and the device_state bits.
// Facts: the seed thread ("[PATCH v4 01/13] vfio: KABI for migration interface", June 2019) and Linux 5.8
// include/uapi/linux/vfio.h. Integers are host byte order (little-endian on every host we run on).

import type { StructSpec } from './fields.ts';

/**
 * The generations of the device's migration interface: the seed's 2019 region (`seed`), Linux 5.8's region
 * (`v1`), and Linux 5.18+'s DEVICE_FEATURE state machine (`v2`).
 */
export type MigrationFlavor = 'seed' | 'v1' | 'v2';
export const MIGRATION_FLAVORS: readonly MigrationFlavor[] = ['seed', 'v1', 'v2'];
/** What a VMM may be told to use: one flavor, or `auto` (the newest the device offers). */
export type FlavorChoice = MigrationFlavor | 'auto';
export const FLAVOR_CHOICES: readonly FlavorChoice[] = ['auto', ...MIGRATION_FLAVORS];
/** The flavors found through a migration region's TYPE cap. */
export type RegionFlavor = Exclude<MigrationFlavor, 'v2'>;

/** device_state bits. SAVING|RESUMING (110b) is invalid in the seed; 5.8 reuses it as the error state. */
export const DeviceState = {
  STOPPED: 0,
  RUNNING: 1 << 0,
  SAVING: 1 << 1,
  RESUMING: 1 << 2,
  MASK: 0b111,
  /** seed name for SAVING|RESUMING */
  INVALID: (1 << 1) | (1 << 2),
  /** 5.8 name for SAVING|RESUMING reported by a driver after an internal failure */
  ERROR: (1 << 1) | (1 << 2),
} as const;

/** The five states a user may request (value & MASK). 5 (RESUMING|RUNNING), 6 and 7 are never valid requests. */
export const VALID_DEVICE_STATES = [0, 1, 2, 3, 4] as const;

const NAMES: Record<number, string> = {
  0: 'stopped',
  1: 'running',
  2: 'stop-and-copy',
  3: 'pre-copy',
  4: 'resuming',
  5: 'invalid(resuming|running)',
  6: 'invalid(saving|resuming)',
  7: 'invalid(all)',
};

export function deviceStateName(state: number): string {
  return NAMES[state & DeviceState.MASK] ?? `state ${state}`;
}

/** The seed's region type and subtype (v4 draft). */
export const SEED_REGION_TYPE = 2;
export const SEED_REGION_SUBTYPE = 1;
/** Linux 5.8's region type and subtype (VFIO_REGION_TYPE_MIGRATION, later _DEPRECATED). */
export const V1_REGION_TYPE = 3;
export const V1_REGION_SUBTYPE = 1;

/** copied_pfns value meaning "every page in the range is dirty" (unsigned all-ones, as review asked). */
export const DIRTY_PFNS_ALL = 0xffff_ffff_ffff_ffffn;
/** copied_pfns value meaning "no page in the rest of the range is dirty". */
export const DIRTY_PFNS_NONE = 0n;

export type SeedField =
  | 'device_state'
  | 'reserved'
  | 'pending_bytes'
  | 'data_offset'
  | 'data_size'
  | 'start_pfn'
  | 'page_size'
  | 'total_pfns'
  | 'copied_pfns';

/** The seed's 64-byte `struct vfio_device_migration_info` (packed). */
export const SEED_MIGRATION_INFO: StructSpec<SeedField> = {
  name: 'vfio_device_migration_info (seed v4)',
  size: 64,
  fields: [
    { name: 'device_state', offset: 0, width: 4 },
    { name: 'reserved', offset: 4, width: 4 },
    { name: 'pending_bytes', offset: 8, width: 8 },
    { name: 'data_offset', offset: 16, width: 8 },
    { name: 'data_size', offset: 24, width: 8 },
    { name: 'start_pfn', offset: 32, width: 8 },
    { name: 'page_size', offset: 40, width: 8 },
    { name: 'total_pfns', offset: 48, width: 8 },
    { name: 'copied_pfns', offset: 56, width: 8 },
  ],
};

export type V1Field = 'device_state' | 'reserved' | 'pending_bytes' | 'data_offset' | 'data_size';

/** Linux 5.8's final 32-byte `struct vfio_device_migration_info`. */
export const V1_MIGRATION_INFO: StructSpec<V1Field> = {
  name: 'vfio_device_migration_info (linux 5.8)',
  size: 32,
  fields: [
    { name: 'device_state', offset: 0, width: 4 },
    { name: 'reserved', offset: 4, width: 4 },
    { name: 'pending_bytes', offset: 8, width: 8 },
    { name: 'data_offset', offset: 16, width: 8 },
    { name: 'data_size', offset: 24, width: 8 },
  ],
};

/** 5.8's VFIO_DEVICE_STATE_VALID: with RESUMING set, the low three bits must be exactly RESUMING. */
export function v1StateValid(state: number): boolean {
  return (state & DeviceState.RESUMING) === 0 || (state & DeviceState.MASK) === DeviceState.RESUMING;
}

export function v1StateIsError(state: number): boolean {
  return (state & DeviceState.MASK) === DeviceState.ERROR;
}

export function v1SetError(state: number): number {
  return ((state & ~DeviceState.MASK) | DeviceState.ERROR) >>> 0;
}
