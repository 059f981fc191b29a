// Pages a device wrote by DMA, at 4 KiB granularity, kept sparse so any IOVA works without registration.
// Reports are read-and-clear: a page written after its bit was reported is set again and reported next time.

import { popcount32 } from '../bits.ts';

export const LOG_PAGE_SHIFT = 12;
export const LOG_PAGE_SIZE = 1 << LOG_PAGE_SHIFT;

/** 32768 pages (128 MiB of IOVA space) per chunk: a 4 KiB bitmap, allocated on first write. */
const CHUNK_SHIFT = 15;
const CHUNK_PAGES = 1 << CHUNK_SHIFT;
const CHUNK_WORDS = CHUNK_PAGES >>> 5;

/** A report over `count` pfns of `pagesPerPfn` log pages each, starting at log page `firstPage`. */
export interface PfnRange {
  readonly firstPage: number;
  readonly pagesPerPfn: number;
  readonly count: number;
}

export class DirtyPageLog {
  private readonly chunks = new Map<number, Uint32Array>();
  private tracking = false;

  get isTracking(): boolean {
    return this.tracking;
  }

  /** Starts logging with an empty log (pages written before the start are not reported). */
  start(): void {
    this.chunks.clear();
    this.tracking = true;
  }

  stop(): void {
    this.tracking = false;
    this.chunks.clear();
  }

  /** Records a DMA write of `length` bytes at `iova`. A no-op while not tracking. */
  mark(iova: number | bigint, length: number): void {
    if (!this.tracking || length <= 0) return;
    const start = typeof iova === 'bigint' ? Number(iova >> BigInt(LOG_PAGE_SHIFT)) : Math.floor(iova / LOG_PAGE_SIZE);
    const endByte = typeof iova === 'bigint' ? iova + BigInt(length) - 1n : iova + length - 1;
    const end =
      typeof endByte === 'bigint' ? Number(endByte >> BigInt(LOG_PAGE_SHIFT)) : Math.floor(endByte / LOG_PAGE_SIZE);
    for (let p = start; p <= end; p++) this.setPage(p);
  }

  /** Number of dirty log pages (for tests and statistics). */
  countPages(): number {
    let n = 0;
    for (const words of this.chunks.values()) for (const w of words) n += popcount32(w);
    return n;
  }

  /** How many of the range's pfns have at least one dirty page. Does not clear. */
  countDirtyPfns(range: PfnRange): number {
    let n = 0;
    let lastPfn = -1;
    this.forEachDirtyPage(range.firstPage, range.count * range.pagesPerPfn, (page) => {
      const pfn = Math.floor((page - range.firstPage) / range.pagesPerPfn);
      if (pfn !== lastPfn) {
        n++;
        lastPfn = pfn;
      }
    });
    return n;
  }

  /**
   * Writes the range's bitmap into `out` (bit n = pfn n, LSB first in each byte: little-endian u64 words)
   * and clears those pages. `out` must hold ceil(count / 8) bytes; it is zeroed first.
   */
  readAndClear(range: PfnRange, out: Uint8Array): void {
    const bytes = Math.ceil(range.count / 8);
    if (out.byteLength < bytes) throw new RangeError(`bitmap buffer ${out.byteLength} < ${bytes} bytes`);
    out.fill(0, 0, bytes);
    this.forEachDirtyPage(range.firstPage, range.count * range.pagesPerPfn, (page) => {
      const pfn = Math.floor((page - range.firstPage) / range.pagesPerPfn);
      out[pfn >>> 3]! |= 1 << (pfn & 7);
    });
    this.clearRange(range.firstPage, range.count * range.pagesPerPfn);
  }

  /** Clears every page of the range. */
  clear(range: PfnRange): void {
    this.clearRange(range.firstPage, range.count * range.pagesPerPfn);
  }

  private setPage(page: number): void {
    const key = Math.floor(page / CHUNK_PAGES);
    let words = this.chunks.get(key);
    if (!words) {
      words = new Uint32Array(CHUNK_WORDS);
      this.chunks.set(key, words);
    }
    const bit = page - key * CHUNK_PAGES;
    words[bit >>> 5]! |= 1 << (bit & 31);
  }

  /** Calls `fn` for each dirty page in [first, first + pages), in ascending order, skipping empty words. */
  private forEachDirtyPage(first: number, pages: number, fn: (page: number) => void): void {
    const end = first + pages;
    const keys = [...this.chunks.keys()]
      .filter((k) => k * CHUNK_PAGES < end && (k + 1) * CHUNK_PAGES > first)
      .sort((a, b) => a - b);
    for (const key of keys) {
      const words = this.chunks.get(key)!;
      const base = key * CHUNK_PAGES;
      const lo = Math.max(first, base) - base;
      const hi = Math.min(end, base + CHUNK_PAGES) - base;
      for (let wi = lo >>> 5; wi <= (hi - 1) >>> 5; wi++) {
        let w = words[wi]!;
        while (w !== 0) {
          const b = 31 - Math.clz32(w & -w);
          w &= w - 1;
          const bit = (wi << 5) + b;
          if (bit >= lo && bit < hi) fn(base + bit);
        }
      }
    }
  }

  private clearRange(first: number, pages: number): void {
    const end = first + pages;
    for (const [key, words] of this.chunks) {
      const base = key * CHUNK_PAGES;
      if (base >= end || base + CHUNK_PAGES <= first) continue;
      const lo = Math.max(first, base) - base;
      const hi = Math.min(end, base + CHUNK_PAGES) - base;
      if (lo === 0 && hi === CHUNK_PAGES) {
        this.chunks.delete(key);
        continue;
      }
      for (let bit = lo; bit < hi; ) {
        if ((bit & 31) === 0 && bit + 32 <= hi) {
          words[bit >>> 5] = 0;
          bit += 32;
        } else {
          words[bit >>> 5]! &= ~(1 << (bit & 31));
          bit++;
        }
      }
    }
  }
}
