// MIG_DATA_READ (cmd 17) / MIG_DATA_WRITE (cmd 18): the v2 device-state stream over messages
// (`struct vfio_user_mig_data` {argsz u32, size u32, data}). Sizes are u32 and bounded by the *client's*
// max_data_xfer_size. READ: request {argsz ≥ 8 + size, size}, reply {argsz = 8 + n, size = n, data};
// n < size means "nothing more for now" (PRE_COPY) or end of stream (STOP_COPY, n = 0).
// WRITE: request {argsz, size, data}, reply header only.

import { DEFAULT_MAX_DATA_XFER_SIZE } from './limits.ts';
import { argszOr, decodeEmpty, encodeEmpty, fail, Reader, Writer } from './wire.ts';

export const MIG_DATA_HEADER_SIZE = 8;

export interface MigDataReadRequest {
  argsz: number;
  size: number;
}

export interface MigData {
  argsz: number;
  /** size = data.byteLength (a view into the input when decoded). */
  data: Uint8Array;
}

export interface MigDataLimits {
  /** The client's max_data_xfer_size (default 1 MiB). */
  maxSize?: number;
}

const READ_REQ = 'MIG_DATA_READ request';
const READ_REP = 'MIG_DATA_READ reply';
const WRITE_REQ = 'MIG_DATA_WRITE request';

function checkSize(msg: string, size: number, argsz: number, limits: MigDataLimits): void {
  const max = limits.maxSize ?? DEFAULT_MAX_DATA_XFER_SIZE;
  if (size > max) fail(msg, 'size', `is ${size}, above max_data_xfer_size ${max}`);
  if (argsz < MIG_DATA_HEADER_SIZE + size) fail(msg, 'argsz', `is ${argsz}, must be at least 8 + size = ${8 + size}`);
}

export function encodeMigDataReadRequest(m: { argsz?: number; size: number }, limits: MigDataLimits = {}) {
  const argsz = argszOr(READ_REQ, m.argsz, MIG_DATA_HEADER_SIZE + m.size);
  checkSize(READ_REQ, m.size, argsz, limits);
  return new Writer(READ_REQ, MIG_DATA_HEADER_SIZE).u32(0, 'argsz', argsz).u32(4, 'size', m.size).out;
}

export function decodeMigDataReadRequest(payload: Uint8Array, limits: MigDataLimits = {}): MigDataReadRequest {
  const r = new Reader(READ_REQ, payload).exactly(MIG_DATA_HEADER_SIZE);
  const m = { argsz: r.u32(0), size: r.u32(4) };
  checkSize(READ_REQ, m.size, m.argsz, limits);
  return m;
}

/**
 * argsz is always 8 + n: it describes the reply, not the request. With `padTo` (the size asked for) the
 * payload is zero-padded to 8 + padTo bytes after the data, as libvfio-user replies: its own client
 * receives into a buffer of exactly that size and refuses a shorter reply.
 */
export function encodeMigDataReadReply(
  m: { data: Uint8Array; padTo?: number },
  limits: MigDataLimits = {},
): Uint8Array {
  const n = m.data.byteLength;
  checkSize(READ_REP, n, MIG_DATA_HEADER_SIZE + n, limits);
  const total = MIG_DATA_HEADER_SIZE + Math.max(n, m.padTo ?? 0);
  checkSize(READ_REP, total - MIG_DATA_HEADER_SIZE, total, limits);
  return new Writer(READ_REP, total)
    .u32(0, 'argsz', MIG_DATA_HEADER_SIZE + n)
    .u32(4, 'size', n)
    .bytes(MIG_DATA_HEADER_SIZE, m.data).out;
}

/**
 * A MIG_DATA_READ reply built in place: `payload` (8 + the size asked for, as libvfio-user sends it) holds
 * `n` bytes of data after the header, put there by the caller; this writes the header and zeroes the
 * padding after the data (the memory may be reused).
 */
export function encodeMigDataReadReplyInPlace(payload: Uint8Array, n: number, limits: MigDataLimits = {}): void {
  const room = payload.byteLength - MIG_DATA_HEADER_SIZE;
  if (!Number.isInteger(n) || n < 0 || n > room) fail(READ_REP, 'size', `is ${n}, the payload has room for ${room}`);
  checkSize(READ_REP, room, payload.byteLength, limits);
  const dv = new DataView(payload.buffer, payload.byteOffset, MIG_DATA_HEADER_SIZE);
  dv.setUint32(0, MIG_DATA_HEADER_SIZE + n, true);
  dv.setUint32(4, n, true);
  payload.fill(0, MIG_DATA_HEADER_SIZE + n);
}

/**
 * A reply received in two parts (see the client's placement): the 8-byte header in `head`, data and any
 * padding in `data`. Returns the data, a view of `data`'s start.
 */
export function decodeMigDataReadReplyParts(head: Uint8Array, data: Uint8Array, limits: MigDataLimits = {}): MigData {
  const r = new Reader(READ_REP, head).exactly(MIG_DATA_HEADER_SIZE, 'header');
  const argsz = r.u32(0);
  const size = r.u32(4);
  checkSize(READ_REP, size, argsz, limits);
  if (argsz !== MIG_DATA_HEADER_SIZE + size) r.fail('argsz', `is ${argsz}, must be 8 + size = ${8 + size}`);
  if (size > data.byteLength) r.fail('size', `is ${size}, the payload carries ${data.byteLength} bytes`);
  return { argsz, data: data.subarray(0, size) };
}

// libvfio-user sends 8 + *requested* bytes even when it produced fewer (zero padding after argsz), so the
// payload may be longer than argsz; the padding is not data and is not returned.
export function decodeMigDataReadReply(payload: Uint8Array, limits: MigDataLimits = {}): MigData {
  const r = new Reader(READ_REP, payload).atLeast(MIG_DATA_HEADER_SIZE);
  const argsz = r.u32(0);
  const size = r.u32(4);
  checkSize(READ_REP, size, argsz, limits);
  if (argsz !== MIG_DATA_HEADER_SIZE + size) r.fail('argsz', `is ${argsz}, must be 8 + size = ${8 + size}`);
  r.atLeast(argsz);
  if (r.length - argsz > (limits.maxSize ?? DEFAULT_MAX_DATA_XFER_SIZE)) r.fail('payload', 'has too much padding');
  return { argsz, data: r.slice(MIG_DATA_HEADER_SIZE, size) };
}

export function encodeMigDataWriteRequest(m: { argsz?: number; data: Uint8Array }, limits: MigDataLimits = {}) {
  const head = encodeMigDataWriteHead({ argsz: m.argsz, size: m.data.byteLength }, limits);
  const out = new Uint8Array(MIG_DATA_HEADER_SIZE + m.data.byteLength);
  out.set(head, 0);
  out.set(m.data, MIG_DATA_HEADER_SIZE);
  return out;
}

/** The 8 bytes before a MIG_DATA_WRITE's `size` bytes of data, for a sender that sends the data by reference. */
export function encodeMigDataWriteHead(m: { argsz?: number; size: number }, limits: MigDataLimits = {}) {
  const argsz = argszOr(WRITE_REQ, m.argsz, MIG_DATA_HEADER_SIZE + m.size);
  checkSize(WRITE_REQ, m.size, argsz, limits);
  return new Writer(WRITE_REQ, MIG_DATA_HEADER_SIZE).u32(0, 'argsz', argsz).u32(4, 'size', m.size).out;
}

/** The payload must hold exactly `size` bytes of data (libvfio-user refuses short ones as EINVAL). */
export function decodeMigDataWriteRequest(payload: Uint8Array, limits: MigDataLimits = {}): MigData {
  const r = new Reader(WRITE_REQ, payload).atLeast(MIG_DATA_HEADER_SIZE);
  const argsz = r.u32(0);
  const size = r.u32(4);
  checkSize(WRITE_REQ, size, argsz, limits);
  r.exactly(MIG_DATA_HEADER_SIZE + size, `payload (size ${size})`);
  return { argsz, data: r.slice(MIG_DATA_HEADER_SIZE, size) };
}

export function encodeMigDataWriteReply(): Uint8Array {
  return encodeEmpty();
}

export function decodeMigDataWriteReply(payload: Uint8Array): void {
  decodeEmpty('MIG_DATA_WRITE reply', payload);
}
