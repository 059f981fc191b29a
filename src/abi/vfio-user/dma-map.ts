// DMA_MAP (cmd 2): one 32-byte `struct vfio_user_dma_map`; the backing fd, if any, rides along as fd 0.
// The reply is header only.

import { argszOr, checkFlags, checkRange, decodeEmpty, encodeEmpty, fail, Reader, Writer } from './wire.ts';

export const DmaMapFlag = {
  READ: 1 << 0,
  WRITE: 1 << 1,
  /** HEAD: mmap the passed fd (the default whenever an fd is present). */
  MMAP: 1 << 2,
  /** HEAD: access the passed fd with pread/pwrite instead of mmap. */
  FILE_IO: 1 << 3,
} as const;

export const DMA_MAP_FLAGS_KNOWN = DmaMapFlag.READ | DmaMapFlag.WRITE | DmaMapFlag.MMAP | DmaMapFlag.FILE_IO;
export const DMA_MAP_SIZE = 32;

export interface DmaMapRequest {
  argsz: number;
  flags: number;
  /** Offset into the passed fd; 0 without one. */
  offset: bigint;
  /** IOVA (guest-physical base). */
  address: bigint;
  size: bigint;
}

const REQ = 'DMA_MAP request';

// MMAP and FILE_IO choose one access mode; libvfio-user refuses both at once.
function checkMapFlags(flags: number): void {
  checkFlags(REQ, 'flags', flags, DMA_MAP_FLAGS_KNOWN);
  const both = DmaMapFlag.MMAP | DmaMapFlag.FILE_IO;
  if ((flags & both) === both) fail(REQ, 'flags', 'has both MMAP and FILE_IO');
}

export function encodeDmaMapRequest(m: Omit<DmaMapRequest, 'argsz'> & { argsz?: number }): Uint8Array {
  checkMapFlags(m.flags);
  checkRange(REQ, 'address', m.address, m.size);
  return new Writer(REQ, DMA_MAP_SIZE)
    .u32(0, 'argsz', argszOr(REQ, m.argsz, DMA_MAP_SIZE))
    .u32(4, 'flags', m.flags)
    .u64(8, 'offset', m.offset)
    .u64(16, 'address', m.address)
    .u64(24, 'size', m.size).out;
}

// MMAP and FILE_IO each need an fd: that depends on the fds that came with the message, so the server
// checks it, not this codec.
export function decodeDmaMapRequest(payload: Uint8Array): DmaMapRequest {
  const r = new Reader(REQ, payload).exactly(DMA_MAP_SIZE);
  const argsz = r.u32(0);
  if (argsz < DMA_MAP_SIZE) r.fail('argsz', `is ${argsz}, must be at least ${DMA_MAP_SIZE}`);
  const flags = r.u32(4);
  checkMapFlags(flags);
  const m = { argsz, flags, offset: r.u64(8), address: r.u64(16), size: r.u64(24) };
  checkRange(REQ, 'address', m.address, m.size);
  return m;
}

export function encodeDmaMapReply(): Uint8Array {
  return encodeEmpty();
}

export function decodeDmaMapReply(payload: Uint8Array): void {
  decodeEmpty('DMA_MAP reply', payload);
}
