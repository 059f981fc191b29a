// Feature data of DEVICE_FEATURE MIGRATION (id 1: `flags u64`), MIG_DEVICE_STATE (id 2:
// `device_state u32, data_fd s32`) and MIG_DATA_SIZE (id 9: `stop_copy_length u64`, GET only, the kernel's
// struct vfio_device_feature_mig_data_size). These codecs work on the bytes after the 8-byte feature header.

import { MIG_STATE_COUNT, MIGRATION_FLAGS_KNOWN } from '../migration-v2.ts';
import { fail, hex, Reader, Writer } from './wire.ts';

export const MIGRATION_DATA_SIZE = 8;
export const MIG_STATE_DATA_SIZE = 8;
export const MIG_DATA_SIZE_DATA_SIZE = 8;

export interface MigrationData {
  /** MigrationFlag bits (STOP_COPY, P2P, PRE_COPY). libvfio-user reports STOP_COPY|PRE_COPY = 5. */
  flags: bigint;
}

export interface MigStateData {
  /** A MigState value (0..7). */
  deviceState: number;
  /** Kernel: new fd or -1. vfio-user has no fd here; libvfio-user leaves 0. */
  dataFd: number;
}

const MIG = 'DEVICE_FEATURE MIGRATION data';
const STATE = 'DEVICE_FEATURE MIG_DEVICE_STATE data';

function checkMigrationFlags(flags: bigint): void {
  const unknown = flags & ~MIGRATION_FLAGS_KNOWN;
  if (unknown !== 0n) fail(MIG, 'flags', `has unknown bits ${hex(unknown)}`);
}

export function encodeMigrationData(m: MigrationData): Uint8Array {
  checkMigrationFlags(m.flags);
  return new Writer(MIG, MIGRATION_DATA_SIZE).u64(0, 'flags', m.flags).out;
}

export function decodeMigrationData(data: Uint8Array): MigrationData {
  const flags = new Reader(MIG, data).exactly(MIGRATION_DATA_SIZE).u64(0);
  checkMigrationFlags(flags);
  return { flags };
}

// States >= 8 do not exist (libvfio-user's own bound check lets 8 through; we do not).
function checkState(state: number): void {
  if (state >= MIG_STATE_COUNT) fail(STATE, 'device_state', `is ${state}, must be below ${MIG_STATE_COUNT}`);
}

export function encodeMigStateData(m: { deviceState: number; dataFd?: number }): Uint8Array {
  checkState(m.deviceState);
  return new Writer(STATE, MIG_STATE_DATA_SIZE).u32(0, 'device_state', m.deviceState).i32(4, 'data_fd', m.dataFd ?? 0)
    .out;
}

export function decodeMigStateData(data: Uint8Array): MigStateData {
  const r = new Reader(STATE, data).exactly(MIG_STATE_DATA_SIZE);
  const m = { deviceState: r.u32(0), dataFd: r.i32(4) };
  checkState(m.deviceState);
  return m;
}

const SIZE = 'DEVICE_FEATURE MIG_DATA_SIZE data';

/** MIG_DATA_SIZE: the bytes STOP_COPY would produce if the device stopped now (an estimate). */
export function encodeMigDataSizeData(stopCopyLength: bigint): Uint8Array {
  return new Writer(SIZE, MIG_DATA_SIZE_DATA_SIZE).u64(0, 'stop_copy_length', stopCopyLength).out;
}

export function decodeMigDataSizeData(data: Uint8Array): bigint {
  return new Reader(SIZE, data).exactly(MIG_DATA_SIZE_DATA_SIZE).u64(0);
}
