// Guest RAM: a memfd the VMM maps, every vCPU worker maps, and each device server maps through DMA_MAP
// (the same bytes, seen at once by all). Node 20 caps one ArrayBuffer at 4 GiB, so the memory is mapped
// in pieces (1 GiB by default, at most 2 GiB) and page(i)/read/write hide the seams: a page never
// straddles two pieces.
//
// Page digests prove two guests equal page for page: SHA-256 of each 4 KiB page, truncated to 16 bytes
// (a collision needs ~2^64 pages even when searched for; these are checks, not a defence against an
// adversary who controls both sides). Zero pages short-cut to a precomputed digest after a memcmp.

import * as crypto from 'node:crypto';
import { fstatSync } from 'node:fs';
import { MADV, native } from '../../native/addon.ts';
import { DIRTY_WORD_PAGES } from './dirty-bitmap.ts';

export const PAGE_SIZE = 4096;
export const PAGE_SHIFT = 12;
/** Bytes of one page digest. */
export const DIGEST_SIZE = 16;
/** The default mapping piece: 1 GiB. */
export const DEFAULT_PIECE = 2 ** 30;
/** The largest piece: 2 GiB (below Node 20's 4 GiB ArrayBuffer cap, and a safe Int32Array index range). */
export const MAX_PIECE = 2 ** 31;

/** The memfd name a VMM's guest RAM has (it shows as /memfd:NAME in /proc/PID/maps and fd links). */
export const GUEST_RAM_NAME = 'vfio-migrate-guest-ram';

const ZERO_PAGE = new Uint8Array(PAGE_SIZE);
/** How many hole queries a sparse guest's "is every page allocated?" answer stands for (knownAllData). */
const ALL_DATA_RECHECK = 256;

/** SHA-256 of one page, into out[at, at+16). crypto.hash (Node 20.12+) skips a Hash object per page. */
const oneShot = (crypto as { hash?: (alg: string, data: Uint8Array, enc: string) => Buffer }).hash;
function digestInto(page: Uint8Array, out: Uint8Array, at: number): void {
  const d = oneShot ? oneShot('sha256', page, 'buffer') : crypto.createHash('sha256').update(page).digest();
  out.set(d.subarray(0, DIGEST_SIZE), at);
}

const ZERO_DIGEST = new Uint8Array(DIGEST_SIZE);
digestInto(ZERO_PAGE, ZERO_DIGEST, 0);

/**
 * Pages queued to go out (a multifd batch), by byte offset: pages that go with their contents (`normal`)
 * and zero pages (`zero`, offsets only), each list in the order taken.
 */
export interface PageQueue {
  readonly normal: Float64Array;
  readonly zero: Float64Array;
  /** [pages in normal, pages in zero] */
  readonly queued: Uint32Array;
  /** The most pages normal and zero hold together (both lists are at least this long). */
  readonly capacity: number;
}

/** A run of pages: [first, first+count). */
export interface PageRange {
  first: number;
  count: number;
}

export interface MapOptions {
  /** Bytes per mapping piece: a multiple of 4096, at most MAX_PIECE (default 1 GiB). For tests of seams. */
  pieceSize?: number;
  /**
   * Advise the pieces MADV_HUGEPAGE, as QEMU advises guest RAM: huge pages on first touch where the
   * kernel's shmem THP setting is "advise" (it is advice: "never", the usual default, ignores it).
   */
  adviseHugePages?: boolean;
}

/** What collapseHugePages() made of a range. */
export interface HugePagesResult {
  /** Bytes of the range in whole 2 MiB blocks of a piece: the most that can be huge pages. */
  eligibleBytes: number;
  /** Bytes collapsed into huge pages. */
  hugeBytes: number;
  /** Why not all were: the errno MADV_COLLAPSE failed with (EINVAL: Linux before 6.1, or THP off), else null. */
  failure: string | null;
  ms: number;
}

/** A transparent huge page on x86-64 (and Linux's usual size elsewhere). */
export const HUGE_PAGE_SIZE = 2 ** 21;

export interface PrefaultResult {
  /** Pages in the range. */
  pages: number;
  /** Whether the kernel populated the range (MADV_POPULATE_WRITE, Linux 5.14+); else only touched. */
  populated: boolean;
  /** Milliseconds in madvise, and in touching every page from JS. */
  populateMs: number;
  touchMs: number;
}

export class GuestMemory {
  readonly pages: number;
  readonly pieceSize: number;
  private readonly pieces: Uint8Array[] = [];
  /** Int32 views of the pieces, for atomic touches (prefault). */
  private readonly words: Int32Array[] = [];
  private isClosed = false;
  /** The run of data zeroPageMask last met in the memfd, [start, end) in bytes: all data then. */
  private readonly dataExtent = new Float64Array(2);
  /** Whether the memfd answers SEEK_DATA/SEEK_HOLE (every memfd does; a failure turns this off). */
  private seekHoles = true;
  /** knownAllData's calls left before it asks the kernel again (fstat) whether every page is allocated. */
  private allDataRecheck = 0;
  /** Per 2 MiB block: collapsed into a huge page here (collapseHugePages), so a sweep passes it by. */
  private readonly hugeBlocks: Uint8Array;
  /** hugeBlockReady's answer from the kernel: the run of data a block's first pages start. */
  private readonly blockExtent = new Float64Array(2);

  private constructor(
    /** The memfd: pass it with DMA_MAP (IOVA 0 = guest-physical 0) and to vCPU workers. */
    readonly fd: number,
    readonly size: number,
    options: MapOptions,
  ) {
    const piece = options.pieceSize ?? DEFAULT_PIECE;
    if (
      !Number.isSafeInteger(piece) ||
      piece <= 0 ||
      piece > MAX_PIECE ||
      (piece & (piece - 1)) !== 0 ||
      piece < PAGE_SIZE
    )
      throw new RangeError(`piece size ${piece} must be a power of two from ${PAGE_SIZE} to ${MAX_PIECE}`);
    checkSize(size);
    this.pieceSize = piece;
    this.pages = size / PAGE_SIZE;
    this.hugeBlocks = new Uint8Array(Math.ceil(size / HUGE_PAGE_SIZE));
    try {
      for (let at = 0; at < size; at += piece) {
        const ab = native().mmap(fd, at, Math.min(piece, size - at), true);
        this.pieces.push(new Uint8Array(ab));
        if (options.adviseHugePages && ab.byteLength >= HUGE_PAGE_SIZE) adviseHuge(ab);
        this.words.push(new Int32Array(ab));
      }
    } catch (err) {
      for (const p of this.pieces) native().munmap(p.buffer as ArrayBuffer);
      throw err;
    }
  }

  /** New, zeroed guest RAM of `size` bytes (a positive multiple of 4096); sparse until touched. */
  static create(size: number, name = GUEST_RAM_NAME, options: MapOptions = {}): GuestMemory {
    checkSize(size);
    const fd = native().memfdCreate(name, size);
    try {
      return new GuestMemory(fd, size, options);
    } catch (err) {
      native().close(fd);
      throw err;
    }
  }

  /**
   * Maps guest RAM someone else created, from its memfd (a vCPU worker does this). close(true) leaves the
   * fd open; close() closes it.
   */
  static map(fd: number, size: number, options: MapOptions = {}): GuestMemory {
    return new GuestMemory(fd, size, options);
  }

  /**
   * This guest RAM for a native thread of the process (a multifd channel): one mmapShare token per
   * mapping piece, each to be handed over once. The thread uses this mapping, as QEMU's threads share its
   * address space (a mapping of its own would fault in every page again, and, sending, the kernel read
   * pages through a fresh mapping more slowly), and holds it until it ends: close() here unmaps nothing
   * a channel still uses.
   */
  share(): bigint[] {
    if (this.isClosed) throw new Error('guest memory is closed');
    return this.pieces.map((p) => native().mmapShare(p.buffer as ArrayBuffer));
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Guest RAM as its mapped pieces (guest-physical offset, view), e.g. to serve a device's DMA messages. */
  pieceViews(): { offset: number; bytes: Uint8Array }[] {
    return this.pieces.map((bytes, i) => ({ offset: i * this.pieceSize, bytes }));
  }

  /** Page `i` as a view into guest RAM: writes through it are guest writes (nobody marks them dirty). */
  page(i: number): Uint8Array {
    return this.pageRun(i, 1);
  }

  /**
   * Pages `i` .. `i + count - 1` as one view when they lie in one mapped piece; else as many of them as
   * the piece holds (at least page `i`). For I/O straight from or into guest RAM (a channel's writev or
   * read of a run of pages).
   */
  pageRun(i: number, count: number): Uint8Array {
    if (!(i >= 0 && i < this.pages) || this.isClosed) this.badPage(i);
    const at = i * PAGE_SIZE;
    const piece = this.pieces[Math.floor(at / this.pieceSize)]!;
    const off = at % this.pieceSize;
    const n = Math.max(1, Math.min(count, this.pages - i, (this.pieceSize - off) / PAGE_SIZE));
    return piece.subarray(off, off + n * PAGE_SIZE);
  }

  private badPage(i: number): never {
    if (this.isClosed) throw new Error('guest memory is closed');
    throw new RangeError(`page ${i} is outside the guest's ${this.pages} pages`);
  }

  /** Copies [offset, offset+dest.length) of guest RAM into dest (or into a new array of `length` bytes). */
  read(offset: number, dest: Uint8Array | number): Uint8Array {
    const out = typeof dest === 'number' ? new Uint8Array(dest) : dest;
    this.span(offset, out.byteLength, (piece, off, len, done) => {
      out.set(piece.subarray(off, off + len), done);
    });
    return out;
  }

  /** Writes data at `offset` of guest RAM (as the guest would; nobody marks the pages dirty). */
  write(offset: number, data: Uint8Array): void {
    this.span(offset, data.byteLength, (piece, off, len, done) => {
      piece.set(data.subarray(done, done + len), off);
    });
  }

  /** Calls fn for each piece-local part of [offset, offset+length). */
  private span(
    offset: number,
    length: number,
    fn: (piece: Uint8Array, off: number, len: number, done: number) => void,
  ): void {
    if (this.isClosed) throw new Error('guest memory is closed');
    if (
      !Number.isSafeInteger(offset) ||
      !Number.isSafeInteger(length) ||
      offset < 0 ||
      length < 0 ||
      offset + length > this.size
    )
      throw new RangeError(`range ${offset}+${length} is outside the guest's ${this.size} bytes`);
    let done = 0;
    while (done < length) {
      const at = offset + done;
      const p = Math.floor(at / this.pieceSize);
      const off = at - p * this.pieceSize;
      const len = Math.min(length - done, this.pieceSize - off);
      fn(this.pieces[p]!, off, len, done);
      done += len;
    }
  }

  /**
   * Writes pages `first`.. from src, laid out as a stream's page records are (each page, then `gap`
   * bytes that are not written, then the next page), through the memfd rather than the mapping
   * (pwritev, native/src/pwrite.c). For pages never written: the kernel allocates each without zeroing
   * it first and maps none into this process, where a write through the mapping costs a fault (or a
   * populate) that allocates and zeroes the page before the copy overwrites it. On pages already
   * mapped, the mapping is the faster way in. Returns the number of pages written.
   */
  writePagesThroughFd(first: number, src: Uint8Array, gap: number): number {
    const n = spacedPages(src, gap);
    const r = this.range(first, n);
    native().pwriteSpaced(this.fd, r.first * PAGE_SIZE, src, PAGE_SIZE, gap);
    return n;
  }

  /**
   * The same layout as writePagesThroughFd, written through the mapping: for pages already mapped (a
   * prefaulted guest, or pages written before), one native copy per mapped piece the run lies in.
   * Returns the number of pages written.
   */
  writePagesSpaced(first: number, src: Uint8Array, gap: number): number {
    const n = spacedPages(src, gap);
    this.range(first, n);
    for (let done = 0; done < n; ) {
      const run = this.pageRun(first + done, n - done);
      const pages = run.byteLength / PAGE_SIZE;
      const from = done * (PAGE_SIZE + gap);
      native().copyUnspaced(run, src.subarray(from, from + pages * (PAGE_SIZE + gap) - gap), PAGE_SIZE, gap);
      done += pages;
    }
    return n;
  }

  /** Whether page i is all zeroes (the native block scan, native/src/zero.c). */
  isZeroPage(i: number): boolean {
    return native().isZero(this.page(i));
  }

  /**
   * Which of up to 32 pages from `first` are all zeroes: bit k of `mask` asks about page first+k, and the
   * result has the bits of those that are. Pages never written (holes of the memfd) are found without
   * reading them, since reading a hole would allocate it (the lseek this takes moves the memfd's file
   * position, which nothing here uses: every user maps it); the rest are scanned, with one native call
   * when the run lies in one mapping piece (it does unless the pieces are smaller than 128 KiB, as only
   * tests make them), else page by page.
   */
  zeroPageMask(first: number, mask: number): number {
    if (mask === 0) return 0;
    const last = first + 31 - Math.clz32(mask);
    if (!(first >= 0 && last < this.pages) || this.isClosed) this.badPage(first < 0 ? first : last);
    const holes = this.holePages(first, last, mask);
    const rest = mask & ~holes;
    return rest === 0 ? holes : holes | this.scanZeroPages(first, last, rest);
  }

  /**
   * Takes dirty pages from a dirty log (GuestDirtyBitmap's words) for multifd: up to `words` words from
   * word `from`, each taken atomically, their pages sorted as zeroPageMask would and their offsets
   * appended to the queue's lists. Stops before a word once `maxPages` pages were taken (at least one
   * word is, if the queue has room) or the queue has room for fewer than 32 more, and at the end of the
   * mapping piece the words start in (the caller asks again from there). Returns the words consumed:
   * their marks are cleared, every page they had is in the queue.
   */
  takeDirtyPages(log: Int32Array, from: number, words: number, q: PageQueue, maxPages: number): number {
    const first = from * DIRTY_WORD_PAGES;
    if (!(first >= 0 && first < this.pages) || this.isClosed) this.badPage(first);
    if (q.capacity > q.normal.length || q.capacity > q.zero.length)
      throw new RangeError(`queue capacity ${q.capacity} exceeds its lists (${q.normal.length}, ${q.zero.length})`);
    const piecePages = this.pieceSize / PAGE_SIZE;
    // Pieces smaller than a word (tests of seams only): a word at a time, through zeroPageMask.
    if (piecePages < DIRTY_WORD_PAGES) return this.takeDirtyWords(log, from, words, q, maxPages);
    const p = Math.floor(first / piecePages);
    const n = Math.min(words, ((p + 1) * piecePages - first) / DIRTY_WORD_PAGES);
    const fd = this.seekHoles && !this.knownAllData() ? this.fd : -1;
    const limit = Math.max(1, Math.min(maxPages, q.capacity));
    const piece = this.pieces[p]!;
    const r = native().takeDirtyPages(
      log,
      from,
      n,
      this.pages,
      piece,
      p * piecePages,
      fd,
      this.dataExtent,
      q.normal,
      q.zero,
      q.queued,
      q.capacity,
      limit,
    );
    if (r >= 0) return r;
    this.seekHoles = false; // lseek failed: the pages were scanned instead, and from now on all are
    return -1 - r;
  }

  /** takeDirtyPages a word at a time in JavaScript, for mappings in pieces smaller than a word. */
  private takeDirtyWords(log: Int32Array, from: number, words: number, q: PageQueue, maxPages: number): number {
    const { normal, zero, queued } = q;
    let taken = 0;
    let w = from;
    for (; w < from + words; w++) {
      if (taken >= Math.max(1, maxPages) || q.capacity - queued[0]! - queued[1]! < DIRTY_WORD_PAGES) break;
      const first = w * DIRTY_WORD_PAGES;
      let bits = Atomics.exchange(log, w, 0);
      // Bits past the end of RAM (a last partial word) name no page.
      if (first + DIRTY_WORD_PAGES > this.pages) bits &= (1 << (this.pages - first)) - 1;
      const zeros = this.zeroPageMask(first, bits);
      for (; bits !== 0; bits &= bits - 1, taken++) {
        const low = bits & -bits;
        const offset = (first + 31 - Math.clz32(low)) * PAGE_SIZE;
        if ((zeros & low) !== 0) zero[queued[1]!++] = offset;
        else normal[queued[0]!++] = offset;
      }
    }
    return w - from;
  }

  /**
   * The pages of the mask (bit k: page first+k, up to page `last`) in holes of the memfd: never written,
   * zeroes without being read. A file that cannot say (lseek fails) is read from then on.
   */
  private holePages(first: number, last: number, mask: number): number {
    // Inside dataExtent the memfd was all data when last asked, and data never turns back into a hole
    // here (nothing punches holes into guest RAM), so those pages need no lseek.
    const at = first * PAGE_SIZE;
    if (!this.seekHoles || (at >= this.dataExtent[0]! && (last + 1) * PAGE_SIZE <= this.dataExtent[1]!)) return 0;
    if (this.knownAllData()) return 0;
    try {
      return native().holePages(this.fd, at, mask, this.dataExtent) | 0;
    } catch {
      this.seekHoles = false;
      return 0;
    }
  }

  /**
   * Whether the memfd has no hole at all (dataExtent then covers it). A memfd with every page allocated
   * has none to find: one fstat, not lseek(SEEK_HOLE) walking every page of guest RAM (about 15 ms per
   * GiB here, in the migration's first pass).
   */
  private knownAllData(): boolean {
    if (this.dataExtent[0] === 0 && this.dataExtent[1] === this.size) return true;
    // A sparse guest is asked about once per ALL_DATA_RECHECK calls, not on every word or batch of a
    // pass (an fstat and its Stats object each: about a sixth of a sparse 1 GiB guest's first pass).
    // Saying "not known" meanwhile is always safe: the lseeks then find the pages' data or holes.
    if (this.allDataRecheck-- > 0) return false;
    this.allDataRecheck = ALL_DATA_RECHECK;
    try {
      if (fstatSync(this.fd).blocks * 512 < this.size) return false;
    } catch {
      this.seekHoles = false;
      return false;
    }
    this.dataExtent[0] = 0;
    this.dataExtent[1] = this.size;
    return true;
  }

  /** zeroPageMask's scan of the pages that hold memory. */
  private scanZeroPages(first: number, last: number, mask: number): number {
    const at = first * PAGE_SIZE;
    const end = (last + 1) * PAGE_SIZE;
    const p = Math.floor(at / this.pieceSize);
    if (Math.floor((end - 1) / this.pieceSize) === p) {
      const off = at - p * this.pieceSize;
      return native().zeroPages(this.pieces[p]!.subarray(off, end - p * this.pieceSize), mask) | 0;
    }
    let zero = 0;
    for (let bits = mask; bits !== 0; bits &= bits - 1) {
      const k = 31 - Math.clz32(bits & -bits);
      if (native().isZero(this.page(first + k))) zero |= 1 << k;
    }
    return zero;
  }

  /** The 16-byte digest of page i. */
  pageDigest(i: number): Uint8Array {
    return this.pageDigests(i, 1);
  }

  /**
   * One DIGEST_SIZE-byte digest per page of the range (default: every page), concatenated: digest k is
   * page first+k's. Two ranges hold the same bytes exactly when their digest arrays are equal (short of a
   * SHA-256 collision). ~0.9 GB/s of non-zero pages on one core (4.5 µs a page); zero pages ~15 GB/s.
   * Pages never written (holes of the memfd) get the zero page's digest unread: reading one would
   * allocate it (shmem has no shared zero page), so a fresh destination's digests would fill its RAM.
   */
  pageDigests(first?: number | PageRange, count?: number): Uint8Array {
    const r = this.range(first, count);
    const out = new Uint8Array(r.count * DIGEST_SIZE);
    for (let k = 0; k < r.count; k += 32) {
      const n = Math.min(32, r.count - k);
      const holes = this.holePages(r.first + k, r.first + k + n - 1, n === 32 ? -1 : (1 << n) - 1);
      for (let j = 0; j < n; j++) {
        const at = (k + j) * DIGEST_SIZE;
        const p = (holes >>> j) & 1 ? null : this.page(r.first + k + j);
        if (!p || Buffer.compare(p, ZERO_PAGE) === 0) out.set(ZERO_DIGEST, at);
        else digestInto(p, out, at);
      }
    }
    return out;
  }

  /** All of guest RAM was faulted into this mapping (prefault of the whole range): nothing left to populate. */
  allFaultedIn = false;

  /**
   * Faults the range in (default: all of guest RAM) before it is written, so a loader does not pay a
   * page fault per page: MADV_POPULATE_WRITE (the kernel allocates and maps every page in one call),
   * then one atomic no-op write (Atomics.or with 0) per page from this thread, which takes whatever
   * first-access cost is left (a hypervisor's shadow page tables, here). The touch never changes a byte,
   * so this is safe on live memory that vCPUs or devices are writing. It blocks this thread meanwhile.
   * Measured here on a fresh 1 GiB memfd: loading it cold 3.5 s (0.3 GB/s); prefault 0.9 s (populate
   * 0.3 s + touch 0.6 s) and then loading 0.1 s. Only this mapping gains: another process (a device
   * server) still maps the pages on its own first access, though it finds them allocated.
   */
  prefault(first?: number | PageRange, count?: number): PrefaultResult {
    const r = this.range(first, count);
    // Memfd pages stay mapped once faulted in (nothing here unmaps or punches holes in guest RAM).
    if (r.first === 0 && r.count === this.pages) this.allFaultedIn = true;
    let populated = true;
    let t = performance.now();
    this.forPieceParts(r, (p, off, len) => {
      if (!populated) return;
      try {
        native().madvise(this.pieces[p]!.buffer as ArrayBuffer, off, len, MADV.POPULATE_WRITE);
      } catch (err) {
        // Kernels before 5.14 do not know the advice (EINVAL); touching alone still does the job.
        if ((err as { code?: string }).code !== 'EINVAL') throw err;
        populated = false;
      }
    });
    const populateMs = performance.now() - t;
    t = performance.now();
    this.forPieceParts(r, (p, off, len) => {
      const w = this.words[p]!;
      for (let i = off >>> 2, end = (off + len) >>> 2; i < end; i += PAGE_SIZE >>> 2) Atomics.or(w, i, 0);
    });
    return { pages: r.count, populated, populateMs, touchMs: performance.now() - t };
  }

  /**
   * Makes the range's whole 2 MiB blocks transparent huge pages now (MADV_COLLAPSE, Linux 6.1+), which the
   * kernel does for a memfd whatever `shmem_enabled` says, short of "deny" (a memfd otherwise gets huge pages
   * only where that setting allows them, "never" by default). Each block's first page is touched first (an
   * atomic no-op write, safe on live memory) since the kernel collapses no block that holds no page at all;
   * the collapse copies what a block holds into the new page, so it allocates memory as a prefault does.
   * Why: each mapping then maps 2 MiB with one page-table entry (vn_mmap places pieces on 2 MiB boundaries
   * for this), and where the kernel copies between a socket and guest RAM (multifd channels writing from
   * and reading into it) a miss per 4 KiB page cost several times the copy itself on the machines measured
   * (docs/performance.md). Blocks the kernel cannot collapse (no huge page free, say) stay 4 KiB pages: the
   * first such failure ends the attempt and is reported, nothing else changes.
   */
  collapseHugePages(first?: number | PageRange, count?: number): HugePagesResult {
    const r = this.range(first, count);
    const t = performance.now();
    const out: HugePagesResult = { eligibleBytes: 0, hugeBytes: 0, failure: null, ms: 0 };
    if (this.pieceSize < HUGE_PAGE_SIZE) return { ...out, ms: performance.now() - t };
    this.forPieceParts(r, (p, off, len) => {
      const start = Math.ceil(off / HUGE_PAGE_SIZE) * HUGE_PAGE_SIZE;
      const end = Math.floor((off + len) / HUGE_PAGE_SIZE) * HUGE_PAGE_SIZE;
      const ab = this.pieces[p]!.buffer as ArrayBuffer;
      for (let at = start; at < end; at += HUGE_PAGE_SIZE) {
        out.eligibleBytes += HUGE_PAGE_SIZE;
        if (out.failure !== null) continue;
        Atomics.or(this.words[p]!, at >>> 2, 0);
        // EAGAIN: a page of the block was busy for a moment (locked, under writeback): once more.
        for (let tries = 2; tries > 0; tries--) {
          try {
            native().madvise(ab, at, HUGE_PAGE_SIZE, MADV.COLLAPSE);
            out.hugeBytes += HUGE_PAGE_SIZE;
            this.hugeBlocks[(p * this.pieceSize + at) / HUGE_PAGE_SIZE] = 1;
            break;
          } catch (err) {
            const code = (err as { code?: string }).code ?? 'EIO';
            if (code !== 'EAGAIN' || tries === 1) out.failure = code;
          }
        }
      }
    });
    out.ms = performance.now() - t;
    return out;
  }

  /** 2 MiB blocks of guest RAM (the last may be short, and is never collapsed). */
  get hugeBlockCount(): number {
    return this.hugeBlocks.length;
  }

  /**
   * Whether block `b` (2 MiB) is worth collapsing now: not collapsed here yet, and every page of it
   * allocated in the memfd (one run of data covers it: lseek), so that collapsing it takes no more memory
   * than it holds. A block with holes is left alone: collapsing would allocate them (a sparse guest would
   * grow to its full size).
   */
  hugeBlockReady(b: number): boolean {
    const at = b * HUGE_PAGE_SIZE;
    if (!(b >= 0 && at + HUGE_PAGE_SIZE <= this.size) || this.hugeBlocks[b] || this.isClosed) return false;
    const extent = this.blockExtent;
    extent.fill(0); // an answer that sets no run must not leave the last block's standing
    try {
      // Its first 32 pages asked about: with none a hole, the walk reports the run of data they start.
      if (native().holePages(this.fd, at, 0xffffffff, extent) !== 0) return false;
    } catch {
      return false; // lseek failed: no way to tell, so no collapse
    }
    return extent[0]! <= at && extent[1]! >= at + HUGE_PAGE_SIZE;
  }

  /** Calls fn(piece, byteOffset, byteLength) for each piece-local part of a page range. */
  private forPieceParts(r: PageRange, fn: (piece: number, off: number, len: number) => void): void {
    const perPiece = this.pieceSize / PAGE_SIZE;
    let page = r.first;
    const end = r.first + r.count;
    while (page < end) {
      const p = Math.floor(page / perPiece);
      const n = Math.min(end - page, (p + 1) * perPiece - page);
      fn(p, (page - p * perPiece) * PAGE_SIZE, n * PAGE_SIZE);
      page += n;
    }
  }

  private range(first?: number | PageRange, count?: number): PageRange {
    const r: PageRange =
      typeof first === 'object' ? first : { first: first ?? 0, count: count ?? this.pages - (first ?? 0) };
    if (
      !Number.isSafeInteger(r.first) ||
      !Number.isSafeInteger(r.count) ||
      r.first < 0 ||
      r.count < 0 ||
      r.first + r.count > this.pages
    )
      throw new RangeError(`pages ${r.first}+${r.count} are outside the guest's ${this.pages} pages`);
    if (this.isClosed) throw new Error('guest memory is closed');
    return r;
  }

  /** Unmaps every piece (views read as empty from then on) and closes the memfd unless `keepFd`. */
  close(keepFd = false): void {
    if (this.isClosed) return;
    this.isClosed = true;
    for (const p of this.pieces) native().munmap(p.buffer as ArrayBuffer);
    this.pieces.length = 0;
    this.words.length = 0;
    if (!keepFd) native().close(this.fd);
  }
}

/** MADV_HUGEPAGE on a mapping; a kernel built without THP answers EINVAL, and advice is all this is. */
function adviseHuge(ab: ArrayBuffer): void {
  try {
    native().madvise(ab, 0, ab.byteLength, MADV.HUGEPAGE);
  } catch (err) {
    if ((err as { code?: string }).code !== 'EINVAL') throw err;
  }
}

function checkSize(size: number): void {
  if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE_SIZE !== 0)
    throw new RangeError(`guest memory size ${size} must be a positive multiple of ${PAGE_SIZE}`);
}

export interface DigestComparison {
  /** Both arrays cover the same pages with the same digests. */
  equal: boolean;
  /** Pages in each array (they differ when the arrays are of different lengths). */
  pagesA: number;
  pagesB: number;
  /** How many of the pages both arrays cover differ. */
  differing: number;
  /** The first differing pages (at most `limit`), as indexes into the arrays. */
  first: number[];
}

/** Digests compared in blocks this big with one memcmp; only differing blocks are looked into. */
const BLOCK_DIGESTS = 1024;

/**
 * Compares two pageDigests() arrays: whether they are equal, how many pages differ and the first
 * `limit` of them. Equal arrays cost one memcmp; a differing 64 KiB block is searched digest by digest.
 */
export function compareDigests(a: Uint8Array, b: Uint8Array, limit = 10): DigestComparison {
  if (a.byteLength % DIGEST_SIZE !== 0 || b.byteLength % DIGEST_SIZE !== 0)
    throw new RangeError(`digest arrays must be multiples of ${DIGEST_SIZE} bytes`);
  const pagesA = a.byteLength / DIGEST_SIZE;
  const pagesB = b.byteLength / DIGEST_SIZE;
  const n = Math.min(pagesA, pagesB);
  const first: number[] = [];
  let differing = 0;
  for (let blk = 0; blk < n; blk += BLOCK_DIGESTS) {
    const end = Math.min(n, blk + BLOCK_DIGESTS);
    if (
      Buffer.compare(
        a.subarray(blk * DIGEST_SIZE, end * DIGEST_SIZE),
        b.subarray(blk * DIGEST_SIZE, end * DIGEST_SIZE),
      ) === 0
    )
      continue;
    for (let i = blk; i < end; i++) {
      const o = i * DIGEST_SIZE;
      if (Buffer.compare(a.subarray(o, o + DIGEST_SIZE), b.subarray(o, o + DIGEST_SIZE)) !== 0) {
        differing++;
        if (first.length < limit) first.push(i);
      }
    }
  }
  return { equal: differing === 0 && pagesA === pagesB, pagesA, pagesB, differing, first };
}

/**
 * The pages whose digests differ (at most `limit` of them); when the arrays are of different lengths and
 * room is left, the first page only one of them covers is listed too.
 */
export function differingPages(a: Uint8Array, b: Uint8Array, limit = 10): number[] {
  const c = compareDigests(a, b, limit);
  const out = c.first;
  if (c.pagesA !== c.pagesB && out.length < limit) out.push(Math.min(c.pagesA, c.pagesB));
  return out;
}

/** How many pages `src` holds laid out as page records (each page, then `gap` bytes); refuses another layout. */
function spacedPages(src: Uint8Array, gap: number): number {
  const n = (src.byteLength + gap) / (PAGE_SIZE + gap);
  if (!Number.isInteger(n) || n < 1)
    throw new RangeError(`${src.byteLength} bytes are not whole pages with gaps of ${gap}`);
  return n;
}
