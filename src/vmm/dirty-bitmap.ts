// The VMM's dirty log for one guest RAM range: one bit per page. Device-reported dirty pages are merged
// into it (through `sink`) next to the pages the vCPUs dirtied, and the RAM saver takes them out.

import type { DirtyBitmapSink } from './seed-region-client.ts';

export class GuestDirtyBitmap {
  readonly words: Uint32Array;

  constructor(
    readonly pages: number,
    /** pfn of the range's first page */
    readonly basePfn = 0n,
  ) {
    this.words = new Uint32Array(Math.ceil(pages / 32));
  }

  set(page: number): void {
    this.words[page >>> 5]! |= 1 << (page & 31);
  }

  has(page: number): boolean {
    return ((this.words[page >>> 5]! >>> (page & 31)) & 1) === 1;
  }

  count(): number {
    let n = 0;
    for (let i = 0; i < this.words.length; i++) {
      let v = this.words[i]!;
      while (v) {
        v &= v - 1;
        n++;
      }
    }
    return n;
  }

  clear(): void {
    this.words.fill(0);
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
