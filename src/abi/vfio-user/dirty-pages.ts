// DIRTY_PAGES (cmd 14, v1 era only): {argsz u32, flags u32} with exactly one of START, STOP, GET_BITMAP.
// GET_BITMAP appends a bitmap range {iova, size, bitmap.pgsize, bitmap.size} (packed `struct
// vfio_user_bitmap_range`, 32 bytes); its reply is {argsz = 40 + bitmap size, flags = GET_BITMAP, the range
// echoed, bitmap @40}. (The v1-era spec text calls the range 40 bytes with the bitmap at 48, counting a
// 24-byte bitmap header; libvfio-user's struct and its tests use 32 and 40, and so do we.) If the request's
// argsz is too small the reply is only request-argsz long, its argsz says what is needed, and the client
// retries. START/STOP replies are empty.

import { dirtyBitmapSize } from './bitmap.ts';
import { SERVER_MAX_DATA_XFER_SIZE } from './limits.ts';
import { argszOr, checkRange, decodeEmpty, encodeEmpty, fail, hex, Reader, Writer } from './wire.ts';

export const DirtyPagesFlag = {
  START: 1 << 0,
  STOP: 1 << 1,
  GET_BITMAP: 1 << 2,
} as const;

export const DIRTY_PAGES_SIZE = 8;
export const BITMAP_RANGE_SIZE = 32;
/** Offset of the bitmap in a GET_BITMAP reply payload. */
export const DIRTY_PAGES_BITMAP_OFFSET = DIRTY_PAGES_SIZE + BITMAP_RANGE_SIZE;

export interface BitmapRange {
  iova: bigint;
  size: bigint;
  pgsize: bigint;
  /** Bitmap bytes: exactly ceil(pages / 64) * 8. */
  bitmapSize: bigint;
}

export interface DirtyPagesRequest {
  argsz: number;
  flags: number;
  /** Present exactly with GET_BITMAP. */
  range?: BitmapRange;
}

export type DirtyPagesBitmapReply =
  | { complete: true; argsz: number; range: BitmapRange; bitmap: Uint8Array }
  /** The client's argsz was too small; `argsz` is what it must ask for. */
  | { complete: false; argsz: number };

const REQ = 'DIRTY_PAGES request';
const REP = 'DIRTY_PAGES reply';

function checkOp(msg: string, flags: number): void {
  if (flags !== DirtyPagesFlag.START && flags !== DirtyPagesFlag.STOP && flags !== DirtyPagesFlag.GET_BITMAP) {
    fail(msg, 'flags', `is ${hex(flags)}, must be exactly one of START, STOP, GET_BITMAP`);
  }
}

function checkRangeFields(msg: string, range: BitmapRange): number {
  checkRange(msg, 'iova', range.iova, range.size);
  const want = dirtyBitmapSize(msg, range.size, range.pgsize);
  if (range.bitmapSize !== want) fail(msg, 'bitmap.size', `is ${range.bitmapSize}, must be ${want}`);
  if (want > BigInt(SERVER_MAX_DATA_XFER_SIZE)) fail(msg, 'bitmap.size', `is ${want}, above the transfer limit`);
  return Number(want);
}

function writeRange(w: Writer, range: BitmapRange): Writer {
  return w
    .u64(8, 'iova', range.iova)
    .u64(16, 'size', range.size)
    .u64(24, 'bitmap.pgsize', range.pgsize)
    .u64(32, 'bitmap.size', range.bitmapSize);
}

function readRange(r: Reader): BitmapRange {
  return { iova: r.u64(8), size: r.u64(16), pgsize: r.u64(24), bitmapSize: r.u64(32) };
}

/** argsz defaults to what the full reply needs (40 + bitmap) for GET_BITMAP, else 8. */
export function encodeDirtyPagesRequest(m: Omit<DirtyPagesRequest, 'argsz'> & { argsz?: number }): Uint8Array {
  checkOp(REQ, m.flags);
  const get = m.flags === DirtyPagesFlag.GET_BITMAP;
  if (get !== (m.range !== undefined)) fail(REQ, 'range', 'must be given exactly with GET_BITMAP');
  if (!m.range)
    return new Writer(REQ, DIRTY_PAGES_SIZE).u32(0, 'argsz', argszOr(REQ, m.argsz, 8)).u32(4, 'flags', m.flags).out;
  const bytes = checkRangeFields(REQ, m.range);
  const argsz = m.argsz ?? DIRTY_PAGES_BITMAP_OFFSET + bytes;
  if (argsz < DIRTY_PAGES_SIZE || argsz > SERVER_MAX_DATA_XFER_SIZE) fail(REQ, 'argsz', `is ${argsz}, out of range`);
  return writeRange(new Writer(REQ, DIRTY_PAGES_BITMAP_OFFSET), m.range).u32(0, 'argsz', argsz).u32(4, 'flags', m.flags)
    .out;
}

export function decodeDirtyPagesRequest(payload: Uint8Array): DirtyPagesRequest {
  const r = new Reader(REQ, payload).atLeast(DIRTY_PAGES_SIZE);
  const m: DirtyPagesRequest = { argsz: r.u32(0), flags: r.u32(4) };
  checkOp(REQ, m.flags);
  if (m.argsz < DIRTY_PAGES_SIZE) r.fail('argsz', `is ${m.argsz}, must be at least ${DIRTY_PAGES_SIZE}`);
  if (m.flags !== DirtyPagesFlag.GET_BITMAP) {
    r.exactly(DIRTY_PAGES_SIZE);
    return m;
  }
  r.exactly(DIRTY_PAGES_BITMAP_OFFSET);
  if (m.argsz > SERVER_MAX_DATA_XFER_SIZE) r.fail('argsz', `is ${m.argsz}, above ${SERVER_MAX_DATA_XFER_SIZE}`);
  m.range = readRange(r);
  checkRangeFields(REQ, m.range);
  return m;
}

/** START and STOP are answered with an empty payload. */
export function encodeDirtyPagesControlReply(): Uint8Array {
  return encodeEmpty();
}

export function decodeDirtyPagesControlReply(payload: Uint8Array): void {
  decodeEmpty(REP, payload);
}

export function encodeDirtyPagesBitmapReply(m: { range: BitmapRange; bitmap: Uint8Array }): Uint8Array {
  const bytes = checkRangeFields(REP, m.range);
  if (m.bitmap.byteLength !== bytes) fail(REP, 'bitmap', `is ${m.bitmap.byteLength} bytes, must be ${bytes}`);
  return writeRange(new Writer(REP, DIRTY_PAGES_BITMAP_OFFSET + bytes), m.range)
    .u32(0, 'argsz', DIRTY_PAGES_BITMAP_OFFSET + bytes)
    .u32(4, 'flags', DirtyPagesFlag.GET_BITMAP)
    .bytes(DIRTY_PAGES_BITMAP_OFFSET, m.bitmap).out;
}

/** The reply when the request's argsz (≥ 8) is below `needed`: request-argsz bytes, only 8 meaningful. */
export function encodeDirtyPagesShortReply(needed: number, requestArgsz: number): Uint8Array {
  if (requestArgsz < DIRTY_PAGES_SIZE || requestArgsz >= needed) {
    fail(REP, 'argsz', `short reply needs 8 <= request argsz (${requestArgsz}) < needed (${needed})`);
  }
  return new Writer(REP, requestArgsz).u32(0, 'argsz', needed).u32(4, 'flags', DirtyPagesFlag.GET_BITMAP).out;
}

export function decodeDirtyPagesBitmapReply(payload: Uint8Array): DirtyPagesBitmapReply {
  const r = new Reader(REP, payload).atLeast(DIRTY_PAGES_SIZE);
  const argsz = r.u32(0);
  const flags = r.u32(4);
  if (flags !== DirtyPagesFlag.GET_BITMAP) r.fail('flags', `is ${hex(flags)}, must be GET_BITMAP`);
  // Short reply: libvfio-user leaves bytes 8.. uninitialized, so they are not read.
  if (r.length < argsz) return { complete: false, argsz };
  r.atLeast(DIRTY_PAGES_BITMAP_OFFSET);
  const range = readRange(r);
  const bytes = checkRangeFields(REP, range);
  if (argsz !== DIRTY_PAGES_BITMAP_OFFSET + bytes) {
    r.fail('argsz', `is ${argsz}, must be ${DIRTY_PAGES_BITMAP_OFFSET + bytes} for the range`);
  }
  r.exactly(argsz);
  return { complete: true, argsz, range, bitmap: r.slice(DIRTY_PAGES_BITMAP_OFFSET, bytes) };
}
