// REGION_READ (cmd 9) / REGION_WRITE (cmd 10): access header {offset u64, region u32, count u32} then data.
// READ: request = header, reply = header + count bytes. WRITE: request = header + count bytes, reply = header.
// Note: libvfio-user answers a count-0 access with an empty payload; these reply decoders insist on the
// 16-byte header the spec describes, so a client should not send count-0 accesses.

import { SERVER_MAX_DATA_XFER_SIZE } from './limits.ts';
import { checkU32, checkU64, fail, Reader, Writer } from './wire.ts';

export const REGION_ACCESS_SIZE = 16;

export interface RegionAccess {
  offset: bigint;
  region: number;
  count: number;
}

/** Access header plus its data; `count` is data.byteLength (a view into the input when decoded). */
export interface RegionAccessData {
  offset: bigint;
  region: number;
  data: Uint8Array;
}

export interface AccessLimits {
  /** Largest count accepted; default libvfio-user's 1 MiB. */
  maxCount?: number;
}

const READ_REQ = 'REGION_READ request';
const READ_REP = 'REGION_READ reply';
const WRITE_REQ = 'REGION_WRITE request';
const WRITE_REP = 'REGION_WRITE reply';

function checkAccess(msg: string, offset: bigint, count: number, limits: AccessLimits): void {
  const max = limits.maxCount ?? SERVER_MAX_DATA_XFER_SIZE;
  if (count > max) fail(msg, 'count', `is ${count}, above the limit ${max}`);
  if (offset + BigInt(count) > 1n << 64n) fail(msg, 'offset', `${offset} + count ${count} wraps past 2^64`);
}

function encodeAccess(msg: string, offset: bigint, region: number, count: number, data?: Uint8Array): Uint8Array {
  checkAccess(msg, offset, count, { maxCount: Number.MAX_SAFE_INTEGER });
  const w = new Writer(msg, REGION_ACCESS_SIZE + (data?.byteLength ?? 0))
    .u64(0, 'offset', offset)
    .u32(8, 'region', region)
    .u32(12, 'count', count);
  if (data) w.bytes(REGION_ACCESS_SIZE, data);
  return w.out;
}

function decodeHead(msg: string, payload: Uint8Array, limits: AccessLimits): { r: Reader; a: RegionAccess } {
  const r = new Reader(msg, payload).atLeast(REGION_ACCESS_SIZE);
  const a = { offset: r.u64(0), region: r.u32(8), count: r.u32(12) };
  checkAccess(msg, a.offset, a.count, limits);
  return { r, a };
}

function decodeWithData(msg: string, payload: Uint8Array, limits: AccessLimits): RegionAccessData {
  const { r, a } = decodeHead(msg, payload, limits);
  r.exactly(REGION_ACCESS_SIZE + a.count, `payload (count ${a.count})`);
  return { offset: a.offset, region: a.region, data: r.slice(REGION_ACCESS_SIZE, a.count) };
}

function decodeBare(msg: string, payload: Uint8Array, limits: AccessLimits): RegionAccess {
  const { r, a } = decodeHead(msg, payload, limits);
  r.exactly(REGION_ACCESS_SIZE);
  return a;
}

export function encodeRegionReadRequest(m: RegionAccess): Uint8Array {
  return encodeAccess(READ_REQ, m.offset, m.region, m.count);
}

export function decodeRegionReadRequest(payload: Uint8Array, limits: AccessLimits = {}): RegionAccess {
  return decodeBare(READ_REQ, payload, limits);
}

export function encodeRegionReadReply(m: RegionAccessData): Uint8Array {
  return encodeAccess(READ_REP, m.offset, m.region, m.data.byteLength, m.data);
}

export function decodeRegionReadReply(payload: Uint8Array, limits: AccessLimits = {}): RegionAccessData {
  return decodeWithData(READ_REP, payload, limits);
}

/**
 * A REGION_READ reply built in place: writes the access header for `m` into the first 16 bytes of
 * `payload` (which must be exactly 16 + m.count bytes) and returns the view the data goes into. The
 * sender fills that view (the region reads straight into it), so the reply costs one buffer and no copy.
 */
export function encodeRegionReadReplyInPlace(payload: Uint8Array, m: RegionAccess): Uint8Array {
  checkReadReplyHead(m);
  if (payload.byteLength !== REGION_ACCESS_SIZE + m.count) {
    fail(READ_REP, 'payload', `is ${payload.byteLength} bytes, must be exactly ${REGION_ACCESS_SIZE + m.count}`);
  }
  writeAccessHead(payload, m);
  return payload.subarray(REGION_ACCESS_SIZE);
}

/**
 * The first 16 bytes of a REGION_READ reply whose `m.count` data bytes the sender sends separately (by
 * reference, straight from the region's memory): the same header encodeRegionReadReplyInPlace writes.
 */
export function encodeRegionReadReplyHead(m: RegionAccess): Uint8Array {
  checkReadReplyHead(m);
  const head = new Uint8Array(REGION_ACCESS_SIZE);
  writeAccessHead(head, m);
  return head;
}

function checkReadReplyHead(m: RegionAccess): void {
  checkAccess(READ_REP, m.offset, m.count, { maxCount: Number.MAX_SAFE_INTEGER });
  checkU64(READ_REP, 'offset', m.offset);
  checkU32(READ_REP, 'region', m.region);
  checkU32(READ_REP, 'count', m.count);
}

function writeAccessHead(out: Uint8Array, m: RegionAccess): void {
  const dv = new DataView(out.buffer, out.byteOffset, REGION_ACCESS_SIZE);
  dv.setBigUint64(0, m.offset, true);
  dv.setUint32(8, m.region, true);
  dv.setUint32(12, m.count, true);
}

/**
 * A REGION_READ reply received in two parts: `head` (the 16-byte access header) and `data`, the bytes
 * that followed it (received straight into the reader's memory). The same checks as
 * decodeRegionReadReply; the result's data is `data` itself.
 */
export function decodeRegionReadReplyParts(
  head: Uint8Array,
  data: Uint8Array,
  limits: AccessLimits = {},
): RegionAccessData {
  const { r, a } = decodeHead(READ_REP, head, limits);
  r.exactly(REGION_ACCESS_SIZE, 'access header');
  if (a.count !== data.byteLength) {
    fail(
      READ_REP,
      'payload',
      `is ${REGION_ACCESS_SIZE + data.byteLength} bytes, must be exactly ${REGION_ACCESS_SIZE + a.count}`,
    );
  }
  return { offset: a.offset, region: a.region, data };
}

export function encodeRegionWriteRequest(m: RegionAccessData): Uint8Array {
  return encodeAccess(WRITE_REQ, m.offset, m.region, m.data.byteLength, m.data);
}

/** The 16 bytes before a REGION_WRITE's `count` bytes of data, for a sender that sends the data by reference. */
export function encodeRegionWriteHead(m: RegionAccess): Uint8Array {
  return encodeAccess(WRITE_REQ, m.offset, m.region, m.count);
}

export function decodeRegionWriteRequest(payload: Uint8Array, limits: AccessLimits = {}): RegionAccessData {
  return decodeWithData(WRITE_REQ, payload, limits);
}

export function encodeRegionWriteReply(m: RegionAccess): Uint8Array {
  return encodeAccess(WRITE_REP, m.offset, m.region, m.count);
}

export function decodeRegionWriteReply(payload: Uint8Array, limits: AccessLimits = {}): RegionAccess {
  return decodeBare(WRITE_REP, payload, limits);
}
