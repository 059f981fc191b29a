// DMA_READ (cmd 11) / DMA_WRITE (cmd 12), sent by the server to the client: header {address u64, count u64}
// then data at offset 16. (QEMU's client header declares count as u32 with data at 12; libvfio-user and the
// spec use u64 and 16, and so do we.) DMA_READ: request = header, reply = header + data. DMA_WRITE: request
// = header + data, reply = header (libvfio-user checks that address and count match its request).

import { DEFAULT_MAX_DATA_XFER_SIZE } from './limits.ts';
import { checkRange, fail, Reader, Writer } from './wire.ts';

export const DMA_ACCESS_SIZE = 16;

export interface DmaAccess {
  address: bigint;
  count: bigint;
}

/** Header plus data; `count` is data.byteLength (a view into the input when decoded). */
export interface DmaAccessData {
  address: bigint;
  data: Uint8Array;
}

export interface DmaAccessLimits {
  /** Largest count accepted: the client's own max_data_xfer_size (default 1 MiB). */
  maxCount?: number;
}

const READ_REQ = 'DMA_READ request';
const READ_REP = 'DMA_READ reply';
const WRITE_REQ = 'DMA_WRITE request';
const WRITE_REP = 'DMA_WRITE reply';

function checkCount(msg: string, count: bigint, limits: DmaAccessLimits): number {
  const max = limits.maxCount ?? DEFAULT_MAX_DATA_XFER_SIZE;
  if (count > BigInt(max)) fail(msg, 'count', `is ${count}, above max_data_xfer_size ${max}`);
  return Number(count);
}

function encodeAccess(msg: string, address: bigint, count: bigint, data?: Uint8Array): Uint8Array {
  checkRange(msg, 'address', address, count);
  const w = new Writer(msg, DMA_ACCESS_SIZE + (data?.byteLength ?? 0))
    .u64(0, 'address', address)
    .u64(8, 'count', count);
  if (data) w.bytes(DMA_ACCESS_SIZE, data);
  return w.out;
}

function decodeHead(msg: string, payload: Uint8Array, limits: DmaAccessLimits) {
  const r = new Reader(msg, payload).atLeast(DMA_ACCESS_SIZE);
  const address = r.u64(0);
  const count = r.u64(8);
  checkRange(msg, 'address', address, count);
  return { r, address, count, n: checkCount(msg, count, limits) };
}

function decodeWithData(msg: string, payload: Uint8Array, limits: DmaAccessLimits): DmaAccessData {
  const { r, address, n } = decodeHead(msg, payload, limits);
  r.exactly(DMA_ACCESS_SIZE + n, `payload (count ${n})`);
  return { address, data: r.slice(DMA_ACCESS_SIZE, n) };
}

function decodeBare(msg: string, payload: Uint8Array, limits: DmaAccessLimits): DmaAccess {
  const { r, address, count } = decodeHead(msg, payload, limits);
  r.exactly(DMA_ACCESS_SIZE);
  return { address, count };
}

export function encodeDmaReadRequest(m: DmaAccess): Uint8Array {
  return encodeAccess(READ_REQ, m.address, m.count);
}

export function decodeDmaReadRequest(payload: Uint8Array, limits: DmaAccessLimits = {}): DmaAccess {
  return decodeBare(READ_REQ, payload, limits);
}

export function encodeDmaReadReply(m: DmaAccessData): Uint8Array {
  return encodeAccess(READ_REP, m.address, BigInt(m.data.byteLength), m.data);
}

export function decodeDmaReadReply(payload: Uint8Array, limits: DmaAccessLimits = {}): DmaAccessData {
  return decodeWithData(READ_REP, payload, limits);
}

export function encodeDmaWriteRequest(m: DmaAccessData): Uint8Array {
  return encodeAccess(WRITE_REQ, m.address, BigInt(m.data.byteLength), m.data);
}

export function decodeDmaWriteRequest(payload: Uint8Array, limits: DmaAccessLimits = {}): DmaAccessData {
  return decodeWithData(WRITE_REQ, payload, limits);
}

export function encodeDmaWriteReply(m: DmaAccess): Uint8Array {
  return encodeAccess(WRITE_REP, m.address, m.count);
}

export function decodeDmaWriteReply(payload: Uint8Array, limits: DmaAccessLimits = {}): DmaAccess {
  return decodeBare(WRITE_REP, payload, limits);
}
