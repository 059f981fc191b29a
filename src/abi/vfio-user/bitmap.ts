// Dirty bitmap sizing shared by DMA_UNMAP, DIRTY_PAGES and DMA_LOGGING_REPORT: one bit per page, in
// little-endian u64 words (bit n = byte n/8, bit n%8 = page n of the range).

import { fail } from './wire.ts';

/**
 * Bytes of the bitmap for `size` bytes of IOVA at `pgsize` granularity: ceil(pages / 64) * 8, with pages
 * rounded up. Like libvfio-user, a zero page size or a range smaller than one page is EINVAL.
 */
export function dirtyBitmapSize(msg: string, size: bigint, pgsize: bigint): bigint {
  if (pgsize === 0n) fail(msg, 'pgsize', 'is 0');
  if (size < pgsize) fail(msg, 'size', `is ${size}, smaller than the page size ${pgsize}`);
  const pages = (size + pgsize - 1n) / pgsize;
  return ((pages + 63n) / 64n) * 8n;
}

export function isPowerOfTwo(v: bigint): boolean {
  return v > 0n && (v & (v - 1n)) === 0n;
}
