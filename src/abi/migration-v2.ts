// VFIO migration v2 constants (Linux 5.18+ uAPI, carried unchanged by vfio-user's DEVICE_FEATURE).
// Constants only: the state machine and its next-step table live with the device/VMM code.
// Facts: docs/migration-v2.md (from Linux include/uapi/linux/vfio.h; libvfio-user include/vfio-user.h).

/** `enum vfio_device_mig_state`. The numbering is not a bit set, unlike the v1 region's device_state. */
export const MigState = {
  ERROR: 0,
  STOP: 1,
  RUNNING: 2,
  STOP_COPY: 3,
  RESUMING: 4,
  RUNNING_P2P: 5,
  PRE_COPY: 6,
  PRE_COPY_P2P: 7,
} as const;

export type MigStateName = keyof typeof MigState;
export type MigStateValue = (typeof MigState)[MigStateName];

/** Number of defined states; any value >= this is invalid (libvfio-user's own bound check is off by one). */
export const MIG_STATE_COUNT = 8;

const STATE_NAMES = Object.keys(MigState) as MigStateName[];

export function isMigState(value: number): value is MigStateValue {
  return Number.isInteger(value) && value >= 0 && value < MIG_STATE_COUNT;
}

/** `STOP_COPY`, …, or `state <n>` for a value outside the enum. */
export function migStateName(value: number): string {
  return isMigState(value) ? STATE_NAMES[value]! : `state ${value}`;
}

/** VFIO_DEVICE_FEATURE_* ids (bits 0-15 of the feature flags word). */
export const FeatureId = {
  PCI_VF_TOKEN: 0,
  MIGRATION: 1,
  MIG_DEVICE_STATE: 2,
  LOW_POWER_ENTRY: 3,
  LOW_POWER_ENTRY_WITH_WAKEUP: 4,
  LOW_POWER_EXIT: 5,
  DMA_LOGGING_START: 6,
  DMA_LOGGING_STOP: 7,
  DMA_LOGGING_REPORT: 8,
  MIG_DATA_SIZE: 9,
} as const;

export type FeatureIdName = keyof typeof FeatureId;

const FEATURE_NAMES = new Map<number, FeatureIdName>(
  Object.entries(FeatureId).map(([k, v]) => [v, k as FeatureIdName]),
);

export function featureName(id: number): string {
  return FEATURE_NAMES.get(id) ?? `feature ${id}`;
}

/** The flags word of `struct vfio_device_feature`: a 16-bit feature id plus operation bits. */
export const FeatureFlag = {
  MASK: 0xffff,
  GET: 1 << 16,
  SET: 1 << 17,
  PROBE: 1 << 18,
} as const;

/** Every bit a valid flags word may have set. */
export const FEATURE_FLAGS_KNOWN = FeatureFlag.MASK | FeatureFlag.GET | FeatureFlag.SET | FeatureFlag.PROBE;

/** `struct vfio_device_feature_migration.flags` (u64, hence bigint). STOP_COPY is mandatory. */
export const MigrationFlag = {
  STOP_COPY: 1n << 0n,
  P2P: 1n << 1n,
  PRE_COPY: 1n << 2n,
} as const;

export const MIGRATION_FLAGS_KNOWN = MigrationFlag.STOP_COPY | MigrationFlag.P2P | MigrationFlag.PRE_COPY;

/** Kernel ioctl numbers, for reference and for a future kernel-VFIO backend: _IO(';', 100 + n). */
export const VFIO_DEVICE_FEATURE_IOCTL = 0x3b75;
export const VFIO_MIG_GET_PRECOPY_INFO_IOCTL = 0x3b79;

/** `struct vfio_precopy_info` size (argsz, flags, initial_bytes, dirty_bytes); kernel only, no vfio-user form. */
export const PRECOPY_INFO_SIZE = 24;
