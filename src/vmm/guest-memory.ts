// Guest RAM: a memfd the VMM maps, vCPU workers map, and device servers map through DMA_MAP. Node 20
// caps one ArrayBuffer at 4 GiB, so larger guests are mapped in 1 GiB pieces behind page accessors.

import { createHash } from 'node:crypto';
import { native } from '../native/addon.ts';

export const PAGE_SIZE = 4096;
const PIECE = 1 << 30;
const ZERO_PAGE = Buffer.alloc(PAGE_SIZE);

export class GuestMemory {
  readonly pages: number;
  private readonly pieces: Uint8Array[] = [];
  private closed = false;

  private constructor(
    readonly fd: number,
    readonly size: number,
  ) {
    this.pages = size / PAGE_SIZE;
    for (let at = 0; at < size; at += PIECE) {
      this.pieces.push(new Uint8Array(native().mmap(fd, at, Math.min(PIECE, size - at), true)));
    }
  }

  /** New, zeroed guest RAM of `size` bytes (a multiple of 4096). */
  static create(size: number, name = 'vfio-migrate-guest-ram'): GuestMemory {
    if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE_SIZE !== 0) {
      throw new RangeError(`guest memory size ${size} must be a positive multiple of ${PAGE_SIZE}`);
    }
    return new GuestMemory(native().memfdCreate(name, size), size);
  }

  /** Maps guest RAM someone else created, from its memfd (a vCPU worker does this). */
  static map(fd: number, size: number): GuestMemory {
    return new GuestMemory(fd, size);
  }

  /** Page `i` as a view (writes go to guest RAM). */
  page(i: number): Uint8Array {
    const at = i * PAGE_SIZE;
    const piece = this.pieces[Math.floor(at / PIECE)]!;
    const off = at % PIECE;
    return piece.subarray(off, off + PAGE_SIZE);
  }

  /** A zero-page test at memcmp speed. */
  isZeroPage(i: number): boolean {
    const p = this.page(i);
    return Buffer.from(p.buffer, p.byteOffset, PAGE_SIZE).equals(ZERO_PAGE);
  }

  /**
   * One 16-byte digest per page (SHA-256, truncated): two guests are equal page for page exactly when
   * their digest arrays are (short of a hash collision).
   */
  pageDigests(first = 0, count = this.pages - first): Uint8Array {
    const out = new Uint8Array(count * 16);
    for (let i = 0; i < count; i++) {
      out.set(
        createHash('sha256')
          .update(this.page(first + i))
          .digest()
          .subarray(0, 16),
        i * 16,
      );
    }
    return out;
  }

  /** Closes the mappings; `keepFd` leaves the memfd open (when it is not ours to close). */
  close(keepFd = false): void {
    if (this.closed) return;
    this.closed = true;
    for (const p of this.pieces) native().munmap(p.buffer as ArrayBuffer);
    if (!keepFd) native().close(this.fd);
  }
}

/** The pages whose digests differ (at most `limit` of them). */
export function differingPages(a: Uint8Array, b: Uint8Array, limit = 10): number[] {
  const out: number[] = [];
  const n = Math.min(a.byteLength, b.byteLength) / 16;
  for (let i = 0; i < n && out.length < limit; i++) {
    if (Buffer.compare(a.subarray(i * 16, i * 16 + 16), b.subarray(i * 16, i * 16 + 16)) !== 0) out.push(i);
  }
  if (a.byteLength !== b.byteLength && out.length < limit) out.push(n);
  return out;
}
