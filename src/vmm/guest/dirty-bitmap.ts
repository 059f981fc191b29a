// The VMM's dirty log for guest RAM: one bit per page (bit i of word w = page 32w+i) in a
// SharedArrayBuffer, so vCPU worker threads and the main thread share it without copies.
//
// - Writers (vCPUs) write the page first, then set its bit with Atomics.or.
// - The RAM saver takes a whole word at once with Atomics.exchange(word, 0): test-and-clear in one atomic
//   step. A bit set concurrently lands either before the exchange (taken now, and the saver's copy that
//   follows sees the write, which preceded the mark) or after it (the bit stays set for the next pass).
//   Either way no mark is ever lost. Clearing bits one by one (load, then and-not) would lose a mark set
//   between the two.
// - Scans read each word plainly first and exchange only non-zero words: a word that reads zero while a
//   writer sets a bit keeps that bit for the next scan, so skipping it loses nothing, and an empty 1 GiB
//   log (8192 words) scans in a few microseconds.
// - Device-reported dirty pages are ORed in through `sink` at each log sync.

import { popcount32 } from '../../bits.ts';

/** Pages per word of the log (an Int32: bit i of word w is page 32w+i). */
export const DIRTY_WORD_PAGES = 32;

/** Called for each bitmap chunk: bit i of `bitmap` (LSB first) is pfn `firstPfn + i`, for `count` pfns. */
export type DirtyBitmapSink = (firstPfn: bigint, count: number, bitmap: Uint8Array | 'all') => void;

/** A run of consecutive dirty pages: [first, first+count). */
export interface DirtyRun {
  first: number;
  count: number;
}

export class GuestDirtyBitmap {
  readonly words: Int32Array;
  readonly buffer: SharedArrayBuffer;

  constructor(
    readonly pages: number,
    /** pfn of the range's first page (for device reports in guest-physical pfns) */
    readonly basePfn = 0n,
    /** An existing bitmap to share (a vCPU worker passes the VMM's). */
    buffer?: SharedArrayBuffer,
  ) {
    if (!Number.isSafeInteger(pages) || pages < 0) throw new RangeError(`dirty bitmap of ${pages} pages`);
    const bytes = GuestDirtyBitmap.bytesFor(pages);
    this.buffer = buffer ?? new SharedArrayBuffer(bytes);
    if (this.buffer.byteLength < bytes)
      throw new RangeError(`dirty bitmap buffer of ${this.buffer.byteLength} bytes is too small for ${pages} pages`);
    this.words = new Int32Array(this.buffer, 0, bytes / 4);
  }

  /** Bytes of the SharedArrayBuffer behind a bitmap of `pages` pages. */
  static bytesFor(pages: number): number {
    return Math.ceil(pages / 32) * 4;
  }

  get wordCount(): number {
    return this.words.length;
  }

  /** Marks one page (any thread; call after writing the page). */
  set(page: number): void {
    if (!(page >= 0 && page < this.pages)) throw new RangeError(`page ${page} is outside the ${this.pages}-page log`);
    Atomics.or(this.words, page >>> 5, 1 << (page & 31));
  }

  private checkRange(first: number, count: number): void {
    if (
      !Number.isSafeInteger(first) ||
      !Number.isSafeInteger(count) ||
      first < 0 ||
      count < 0 ||
      first + count > this.pages
    )
      throw new RangeError(`pages ${first}+${count} are outside the ${this.pages}-page log`);
  }

  /** Marks pages [first, first+count), a word at a time. */
  setRange(first: number, count: number): void {
    this.checkRange(first, count);
    let page = first;
    const end = first + count;
    while (page < end) {
      const bit = page & 31;
      const n = Math.min(32 - bit, end - page);
      const mask = n === 32 ? -1 : ((1 << n) - 1) << bit;
      Atomics.or(this.words, page >>> 5, mask);
      page += n;
    }
  }

  has(page: number): boolean {
    if (!(page >= 0 && page < this.pages)) return false;
    return ((Atomics.load(this.words, page >>> 5) >>> (page & 31)) & 1) === 1;
  }

  /** Marks every page (the start of a migration: the bulk pass sends everything). */
  setAll(): void {
    this.setRange(0, this.pages);
  }

  /** Clears every bit (marks set concurrently may survive or not: use take* to consume marks). */
  clear(): void {
    const w = this.words;
    for (let i = 0; i < w.length; i++) if (w[i] !== 0) Atomics.store(w, i, 0);
  }

  /** Takes and clears one word atomically: bit i set = page w*32+i was dirty. */
  takeWord(w: number): number {
    return Atomics.exchange(this.words, w, 0);
  }

  /** Dirty pages right now (a snapshot; writers may add more meanwhile). */
  count(): number {
    const w = this.words;
    let n = 0;
    for (let i = 0; i < w.length; i++) {
      const v = w[i]!;
      if (v !== 0) n += popcount32(v);
    }
    return n;
  }

  isEmpty(): boolean {
    const w = this.words;
    for (let i = 0; i < w.length; i++) if (w[i] !== 0) return false;
    return true;
  }

  /**
   * Takes every dirty page, clearing its bit (a word at a time, atomically), and calls cb(page) for it,
   * in ascending order. Returns how many pages it took. Marks set during the walk are either taken by it
   * or left for the next one.
   */
  forEachDirtyAndClear(cb: (page: number) => void): number {
    const w = this.words;
    let n = 0;
    for (let i = 0; i < w.length; i++) {
      if (w[i] === 0) continue;
      let bits = Atomics.exchange(w, i, 0);
      const base = i << 5;
      while (bits !== 0) {
        const low = bits & -bits;
        bits ^= low;
        cb(base + 31 - Math.clz32(low));
        n++;
      }
    }
    return n;
  }

  /**
   * Takes the dirty pages as runs of consecutive pages (each at most maxRun long), in ascending order,
   * taking a word (atomically) only when the walk reaches it, so a consumer that copies each run before
   * asking for the next copies every page after its bit was cleared. Keep the generator to continue a
   * pass later (budget-limited senders do).
   */
  *takeRuns(maxRun = Number.POSITIVE_INFINITY): Generator<DirtyRun> {
    if (!(maxRun >= 1)) throw new RangeError(`maxRun ${maxRun} must be at least 1`);
    const w = this.words;
    let runFirst = 0;
    let runCount = 0;
    for (let i = 0; i < w.length; i++) {
      let next = nextDirtyWord(w, i);
      if (next !== i && runCount > 0) {
        // Page 32i is clean, so no run goes on past it: hand over what we have, then look again (the
        // consumer took its time; more pages may be marked by now).
        yield { first: runFirst, count: runCount };
        runCount = 0;
        next = nextDirtyWord(w, i);
      }
      if (next === w.length) break;
      i = next;
      let bits = Atomics.exchange(w, i, 0);
      const base = i << 5;
      while (bits !== 0) {
        const start = ctz32(bits);
        const len = ctz32(~(bits >>> start)); // the ones from `start` up (32 when the word is all ones)
        bits = len === 32 ? 0 : bits & ~(((1 << len) - 1) << start);
        const page = base + start;
        if (runCount > 0 && runFirst + runCount === page) {
          runCount += len;
        } else {
          if (runCount > 0) yield { first: runFirst, count: runCount };
          runFirst = page;
          runCount = len;
        }
        while (runCount > maxRun) {
          yield { first: runFirst, count: maxRun };
          runFirst += maxRun;
          runCount -= maxRun;
        }
      }
    }
    if (runCount > 0) yield { first: runFirst, count: runCount };
  }

  /**
   * ORs another log of the same size into this one. With `take`, the other log's words are taken
   * (exchanged with 0), so a page is moved, never lost or counted twice.
   */
  merge(other: GuestDirtyBitmap, options: { take?: boolean } = {}): void {
    if (other.pages !== this.pages)
      throw new RangeError(`cannot merge a ${other.pages}-page log into a ${this.pages}-page log`);
    const src = other.words;
    const dst = this.words;
    for (let i = 0; i < src.length; i++) {
      if (src[i] === 0) continue;
      const v = options.take ? Atomics.exchange(src, i, 0) : Atomics.load(src, i);
      if (v !== 0) Atomics.or(dst, i, v);
    }
  }

  /**
   * ORs an LSB-first byte bitmap in: bit i of `bitmap` marks page first+i, for `count` pages. A word of
   * this log at a time, whatever the alignment of `first`.
   */
  orBits(first: number, count: number, bitmap: Uint8Array): void {
    this.checkRange(first, count);
    if (bitmap.byteLength * 8 < count)
      throw new RangeError(`a bitmap of ${bitmap.byteLength} bytes for ${count} pages`);
    const w = this.words;
    let accWord = -1;
    let acc = 0;
    const bytes = Math.ceil(count / 8);
    for (let b = 0; b < bytes; b++) {
      let v = bitmap[b]!;
      if (v === 0) continue;
      const i = b * 8;
      if (count - i < 8) v &= (1 << (count - i)) - 1;
      const page = first + i;
      const word = page >>> 5;
      const sh = page & 31;
      const lo = (v << sh) | 0;
      const hi = sh > 24 ? v >>> (32 - sh) : 0;
      if (word !== accWord) {
        if (acc !== 0) Atomics.or(w, accWord, acc);
        accWord = word;
        acc = 0;
      }
      acc |= lo;
      if (hi !== 0) {
        Atomics.or(w, accWord, acc);
        accWord = word + 1;
        acc = hi;
      }
    }
    if (acc !== 0) Atomics.or(w, accWord, acc);
  }

  /** A sink for SeedRegionClient.dirtyBitmap that ORs a device's report into this bitmap. */
  readonly sink: DirtyBitmapSink = (firstPfn, count, bitmap) => {
    const first = Number(firstPfn - this.basePfn);
    if (first < 0 || first + count > this.pages) {
      throw new RangeError(`device reported pfns ${firstPfn}+${count} outside the guest range`);
    }
    if (bitmap === 'all') this.setRange(first, count);
    else this.orBits(first, count, bitmap);
  };
}

/** The first index from i on whose word reads non-zero, or words.length (a plain, fast loop). */
function nextDirtyWord(words: Int32Array, i: number): number {
  while (i < words.length && words[i] === 0) i++;
  return i;
}

/** Trailing zero bits of a 32-bit value (32 for 0). */
function ctz32(v: number): number {
  return v === 0 ? 32 : 31 - Math.clz32(v & -v);
}
