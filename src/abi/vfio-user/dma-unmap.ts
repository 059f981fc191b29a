// DMA_UNMAP (cmd 3): 24-byte `struct vfio_user_dma_unmap`, plus a 16-byte bitmap header {pgsize, size}
// when GET_DIRTY_BITMAP asks for the region's dirty pages on the way out (v1 era; HEAD still accepts it).
// The reply echoes the 24 bytes (and the bitmap header followed by the bitmap).

import { dirtyBitmapSize } from './bitmap.ts';
import { SERVER_MAX_DATA_XFER_SIZE } from './limits.ts';
import { argszOr, checkRange, fail, hex, Reader, Writer } from './wire.ts';

export const DmaUnmapFlag = {
  GET_DIRTY_BITMAP: 1 << 0,
  /** Unmap everything; address and size must be 0. */
  ALL: 1 << 1,
} as const;

export const DMA_UNMAP_SIZE = 24;
export const DMA_UNMAP_BITMAP_SIZE = 40;

export interface DmaUnmapRequest {
  argsz: number;
  flags: number;
  address: bigint;
  size: bigint;
  /** Present exactly when flags has GET_DIRTY_BITMAP. */
  bitmap?: { pgsize: bigint; size: bigint };
}

export interface DmaUnmapReply {
  argsz: number;
  flags: number;
  address: bigint;
  size: bigint;
  /** Present exactly when flags has GET_DIRTY_BITMAP; `data` is a view into the input. */
  bitmap?: { pgsize: bigint; data: Uint8Array };
}

const REQ = 'DMA_UNMAP request';
const REP = 'DMA_UNMAP reply';

// Flags are 0, GET_DIRTY_BITMAP or ALL; a combination or any other bit is EINVAL.
function checkUnmap(msg: string, flags: number, address: bigint, size: bigint): boolean {
  if (flags !== 0 && flags !== DmaUnmapFlag.GET_DIRTY_BITMAP && flags !== DmaUnmapFlag.ALL) {
    fail(msg, 'flags', `is ${hex(flags)}, must be 0, GET_DIRTY_BITMAP or ALL`);
  }
  if (flags === DmaUnmapFlag.ALL && (address !== 0n || size !== 0n)) {
    fail(msg, 'address/size', `must be 0 with ALL, got ${hex(address)}+${hex(size)}`);
  }
  checkRange(msg, 'address', address, size);
  return flags === DmaUnmapFlag.GET_DIRTY_BITMAP;
}

function checkArgsz(msg: string, argsz: number, min: number): void {
  if (argsz < min) fail(msg, 'argsz', `is ${argsz}, must be at least ${min}`);
  if (argsz > SERVER_MAX_DATA_XFER_SIZE) fail(msg, 'argsz', `is ${argsz}, above ${SERVER_MAX_DATA_XFER_SIZE}`);
}

/** Bitmap byte count for the region, checked against what the message claims. */
function checkBitmap(msg: string, regionSize: bigint, pgsize: bigint, claimed: bigint): number {
  const want = dirtyBitmapSize(msg, regionSize, pgsize);
  if (claimed !== want) fail(msg, 'bitmap.size', `is ${claimed}, must be ${want} for ${regionSize} bytes`);
  if (want > BigInt(SERVER_MAX_DATA_XFER_SIZE)) fail(msg, 'bitmap.size', `is ${want}, above the transfer limit`);
  return Number(want);
}

export function encodeDmaUnmapRequest(m: Omit<DmaUnmapRequest, 'argsz'> & { argsz?: number }): Uint8Array {
  const dirty = checkUnmap(REQ, m.flags, m.address, m.size);
  if (dirty !== (m.bitmap !== undefined)) fail(REQ, 'bitmap', 'must be given exactly with GET_DIRTY_BITMAP');
  const bytes = m.bitmap ? checkBitmap(REQ, m.size, m.bitmap.pgsize, m.bitmap.size) : 0;
  const min = m.bitmap ? DMA_UNMAP_BITMAP_SIZE + bytes : DMA_UNMAP_SIZE;
  const argsz = argszOr(REQ, m.argsz, min);
  checkArgsz(REQ, argsz, min);
  const w = new Writer(REQ, m.bitmap ? DMA_UNMAP_BITMAP_SIZE : DMA_UNMAP_SIZE)
    .u32(0, 'argsz', argsz)
    .u32(4, 'flags', m.flags)
    .u64(8, 'address', m.address)
    .u64(16, 'size', m.size);
  if (m.bitmap) w.u64(24, 'bitmap.pgsize', m.bitmap.pgsize).u64(32, 'bitmap.size', m.bitmap.size);
  return w.out;
}

export function decodeDmaUnmapRequest(payload: Uint8Array): DmaUnmapRequest {
  const r = new Reader(REQ, payload).atLeast(DMA_UNMAP_SIZE);
  const m: DmaUnmapRequest = { argsz: r.u32(0), flags: r.u32(4), address: r.u64(8), size: r.u64(16) };
  if (!checkUnmap(REQ, m.flags, m.address, m.size)) {
    r.exactly(DMA_UNMAP_SIZE);
    checkArgsz(REQ, m.argsz, DMA_UNMAP_SIZE);
    return m;
  }
  r.exactly(DMA_UNMAP_BITMAP_SIZE);
  m.bitmap = { pgsize: r.u64(24), size: r.u64(32) };
  const bytes = checkBitmap(REQ, m.size, m.bitmap.pgsize, m.bitmap.size);
  checkArgsz(REQ, m.argsz, DMA_UNMAP_BITMAP_SIZE + bytes);
  return m;
}

/** The reply echoes the request's argsz; with a bitmap the payload is 40 + bitmap bytes. */
export function encodeDmaUnmapReply(m: Omit<DmaUnmapReply, 'argsz'> & { argsz?: number }): Uint8Array {
  const dirty = checkUnmap(REP, m.flags, m.address, m.size);
  if (dirty !== (m.bitmap !== undefined)) fail(REP, 'bitmap', 'must be given exactly with GET_DIRTY_BITMAP');
  const bytes = m.bitmap ? checkBitmap(REP, m.size, m.bitmap.pgsize, BigInt(m.bitmap.data.byteLength)) : 0;
  const len = m.bitmap ? DMA_UNMAP_BITMAP_SIZE + bytes : DMA_UNMAP_SIZE;
  const argsz = argszOr(REP, m.argsz, len);
  checkArgsz(REP, argsz, len);
  const w = new Writer(REP, len)
    .u32(0, 'argsz', argsz)
    .u32(4, 'flags', m.flags)
    .u64(8, 'address', m.address)
    .u64(16, 'size', m.size);
  if (m.bitmap) {
    w.u64(24, 'bitmap.pgsize', m.bitmap.pgsize).u64(32, 'bitmap.size', BigInt(bytes));
    w.bytes(DMA_UNMAP_BITMAP_SIZE, m.bitmap.data);
  }
  return w.out;
}

export function decodeDmaUnmapReply(payload: Uint8Array): DmaUnmapReply {
  const r = new Reader(REP, payload).atLeast(DMA_UNMAP_SIZE);
  const m: DmaUnmapReply = { argsz: r.u32(0), flags: r.u32(4), address: r.u64(8), size: r.u64(16) };
  if (!checkUnmap(REP, m.flags, m.address, m.size)) {
    r.exactly(DMA_UNMAP_SIZE);
    checkArgsz(REP, m.argsz, DMA_UNMAP_SIZE);
    return m;
  }
  r.atLeast(DMA_UNMAP_BITMAP_SIZE);
  const pgsize = r.u64(24);
  const bytes = checkBitmap(REP, m.size, pgsize, r.u64(32));
  r.exactly(DMA_UNMAP_BITMAP_SIZE + bytes);
  checkArgsz(REP, m.argsz, DMA_UNMAP_BITMAP_SIZE + bytes);
  m.bitmap = { pgsize, data: r.slice(DMA_UNMAP_BITMAP_SIZE, bytes) };
  return m;
}
