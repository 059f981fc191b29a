// DEVICE_GET_INFO (cmd 4): `struct vfio_user_device_info` (16 bytes) both ways; no capability chain.

import { argszOr, checkFlags, Reader, Writer } from './wire.ts';

export const DeviceInfoFlag = {
  RESET: 1 << 0,
  PCI: 1 << 1,
} as const;

export const DEVICE_INFO_FLAGS_KNOWN = DeviceInfoFlag.RESET | DeviceInfoFlag.PCI;
export const DEVICE_INFO_SIZE = 16;

/** Regions a libvfio-user PCI device reports: 9 in HEAD, 10 in the v1 era (migration region at index 9). */
export const NUM_REGIONS_V2 = 9;
export const NUM_REGIONS_V1 = 10;
export const NUM_IRQS = 5;

export interface DeviceInfo {
  argsz: number;
  flags: number;
  numRegions: number;
  numIrqs: number;
}

const REQ = 'DEVICE_GET_INFO request';
const REP = 'DEVICE_GET_INFO reply';

function encode(msg: string, m: Omit<DeviceInfo, 'argsz'> & { argsz?: number }): Uint8Array {
  return new Writer(msg, DEVICE_INFO_SIZE)
    .u32(0, 'argsz', argszOr(msg, m.argsz, DEVICE_INFO_SIZE))
    .u32(4, 'flags', m.flags)
    .u32(8, 'num_regions', m.numRegions)
    .u32(12, 'num_irqs', m.numIrqs).out;
}

function decode(msg: string, payload: Uint8Array): DeviceInfo {
  const r = new Reader(msg, payload).exactly(DEVICE_INFO_SIZE);
  const argsz = r.u32(0);
  if (argsz < DEVICE_INFO_SIZE) r.fail('argsz', `is ${argsz}, must be at least ${DEVICE_INFO_SIZE}`);
  return { argsz, flags: r.u32(4), numRegions: r.u32(8), numIrqs: r.u32(12) };
}

/** Only argsz matters in a request; the other fields are outputs and are carried as sent. */
export function encodeDeviceInfoRequest(m: Partial<DeviceInfo> = {}): Uint8Array {
  return encode(REQ, { argsz: m.argsz, flags: m.flags ?? 0, numRegions: m.numRegions ?? 0, numIrqs: m.numIrqs ?? 0 });
}

export function decodeDeviceInfoRequest(payload: Uint8Array): DeviceInfo {
  return decode(REQ, payload);
}

export function encodeDeviceInfoReply(m: Omit<DeviceInfo, 'argsz'> & { argsz?: number }): Uint8Array {
  checkFlags(REP, 'flags', m.flags, DEVICE_INFO_FLAGS_KNOWN);
  return encode(REP, m);
}

export function decodeDeviceInfoReply(payload: Uint8Array): DeviceInfo {
  const m = decode(REP, payload);
  checkFlags(REP, 'flags', m.flags, DEVICE_INFO_FLAGS_KNOWN);
  return m;
}
