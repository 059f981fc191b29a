// The VMM's dirty log for guest RAM: one bit per page in a SharedArrayBuffer. vCPU workers set bits with
// Atomics.or after they write a page; the RAM saver takes 32 pages at a time with Atomics.exchange(w, 0),
// so a page marked while it is being taken is either in this take or stays marked for the next. Device-
// reported dirty pages are merged in through `sink` at each log sync.

import type { DirtyBitmapSink } from './seed-region-client.ts';

export class GuestDirtyBitmap {
  readonly words: Int32Array;
  readonly buffer: SharedArrayBuffer;

  constructor(
    readonly pages: number,
    /** pfn of the range's first page (for device reports in guest-physical pfns) */
    readonly basePfn = 0n,
    buffer?: SharedArrayBuffer,
  ) {
    const bytes = Math.ceil(pages / 32) * 4;
    this.buffer = buffer ?? new SharedArrayBuffer(bytes);
    if (this.buffer.byteLength < bytes)
      throw new RangeError(`dirty bitmap buffer of ${this.buffer.byteLength} bytes is too small`);
    this.words = new Int32Array(this.buffer, 0, bytes / 4);
  }

  get wordCount(): number {
    return this.words.length;
  }

  set(page: number): void {
    Atomics.or(this.words, page >>> 5, 1 << (page & 31));
  }

  has(page: number): boolean {
    return ((Atomics.load(this.words, page >>> 5) >>> (page & 31)) & 1) === 1;
  }

  /** Marks every page (the start of a migration: the bulk pass sends everything). */
  setAll(): void {
    const full = Math.floor(this.pages / 32);
    for (let w = 0; w < full; w++) Atomics.store(this.words, w, -1);
    const rest = this.pages % 32;
    if (rest) Atomics.or(this.words, full, (1 << rest) - 1);
  }

  clear(): void {
    for (let w = 0; w < this.words.length; w++) Atomics.store(this.words, w, 0);
  }

  /** Takes and clears one word: bit i set = page w*32+i was dirty. */
  takeWord(w: number): number {
    return Atomics.exchange(this.words, w, 0);
  }

  count(): number {
    let n = 0;
    for (let i = 0; i < this.words.length; i++) {
      let v = Atomics.load(this.words, i);
      while (v) {
        v &= v - 1;
        n++;
      }
    }
    return n;
  }

  /** A sink for SeedRegionClient.dirtyBitmap that ORs a device's report into this bitmap. */
  readonly sink: DirtyBitmapSink = (firstPfn, count, bitmap) => {
    const first = Number(firstPfn - this.basePfn);
    if (first < 0 || first + count > this.pages) {
      throw new RangeError(`device reported pfns ${firstPfn}+${count} outside the guest range`);
    }
    for (let i = 0; i < count; i++) {
      if (bitmap === 'all' || ((bitmap[i >>> 3]! >>> (i & 7)) & 1) === 1) this.set(first + i);
    }
  };
}
