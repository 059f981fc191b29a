// Typed access to native/ (vfio_native.node): the syscalls Node lacks for vfio-user. The C side is thin;
// every failed syscall throws an Error with `code` (errno name, e.g. 'EAGAIN'), `errno` (number) and
// `syscall`. All fds it creates are close-on-exec; socket fds are nonblocking.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** An Error thrown by the addon for a failed syscall. */
export interface NativeError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

export interface RecvResult {
  /** Bytes read into the buffer; 0 means EOF (the peer closed). */
  bytes: number;
  /** fds that arrived with these bytes, now owned by the caller (close-on-exec). */
  fds: number[];
  /** The ancillary data did not fit maxFds: every fd that arrived was closed. A protocol error. */
  truncated: boolean;
}

export type PollCallback = (err: number, readable: boolean, writable: boolean) => void;

/** A uv_poll_t on the calling thread's event loop. The fd stays the caller's: close the Poller first. */
export interface Poller {
  /** Poll for these conditions (both false = stop). A started Poller keeps the process alive (see unref). */
  start(readable: boolean, writable: boolean): void;
  /** Stop polling; a stopped Poller never keeps the process alive. */
  stop(): void;
  /** Release the uv handle. Idempotent, and safe inside the callback; start() throws afterwards. */
  close(): void;
  ref(): void;
  unref(): void;
}

/**
 * A ChannelThread operation's completion: null and its value, or the failure as every addon call throws
 * it (a NativeError: `code`, `errno`, `syscall`); `packets` (recv only, before its completion): received
 * packets' headers and offsets, copies, back to back (up to 16 packets an event).
 */
export type ChannelThreadCallback = (err: NativeError | null, value: number, packets?: Buffer) => void;

/**
 * A native thread doing one multifd channel's blocking I/O and page copies (native/src/chanthread.c).
 * Each call queues an operation; operations run in order and complete, in order, through the callback.
 * Every call (for its socket) wakes with ECANCELED when the abort eventfd is readable, and with ETIMEDOUT
 * when no byte moved for stallMs. Buffers passed must stay alive until their operation completes.
 */
export interface ChannelThread {
  /** Connects the socket (made by tcpSocket) to a numeric address, setting TCP_NODELAY; timeoutMs -1: none. */
  connect(address: string, port: number, timeoutMs: number): void;
  /** Writes every byte of parts; value: the bytes. */
  writev(parts: readonly Uint8Array[]): void;
  /** Fills parts; value: the bytes read, fewer when the peer closed first. */
  readv(parts: readonly Uint8Array[]): void;
  /**
   * Per packet k: the next headLens[k] bytes of heads, then the counts[k] guest pages at the next offsets
   * (copied through a staging buffer), in one writev; value: the bytes written.
   */
  sendPackets(heads: Uint8Array, headLens: Uint32Array, offsets: Float64Array, counts: Uint32Array): void;
  /**
   * Packets into guest RAM until one carries SYNC (value: the packets read) or the peer closes between
   * packets (value: -1 - the packets read). A packet whose counts the framing refuses (EPROTO) or with an
   * offset outside guest RAM (EINVAL) ends it, its header having gone to the callback.
   */
  recv(): void;
  shutdown(how: 0 | 1 | 2): void;
  /** Reads and drops until the peer closes (value 1) or ms pass (0); useAbort false: ignore the eventfd. */
  discard(ms: number, useAbort: boolean): void;
  /** The last operation: once it completes, the thread has ended. */
  end(): void;
  /** Lets the process exit while operations are queued (a thread with any keeps it alive otherwise). */
  unref(): void;
  /**
   * How packets' pages move (native/src/chanmode.c): 0 chosen by measuring each way's CPU time per byte
   * (the default), 1 through the thread's staging buffer, 2 straight between guest RAM and the socket.
   * Only before the first operation.
   */
  setIoMode(mode: 0 | 1 | 2): void;
  /** Packets moved so far: [through staging, direct]. */
  ioCounts(): [number, number];
}

export interface ChannelThreadConstructor {
  /**
   * fd: the channel's socket (the caller's; close it after end() completed). pieces: mmapShare tokens of
   * guest RAM's mapped pieces, whose mappings the thread holds until it ends. maps: [received, written] per-page maps a receiving channel marks (null: none). fresh: pages
   * never written read as zero. progress[0] is bumped per read or write that moved bytes. framing: header
   * bytes, the byte offsets of its be32 normal page count, zero page count and flags, the SYNC flag, the
   * most pages a packet holds, the page size.
   */
  new (
    fd: number,
    abortFd: number,
    stallMs: number,
    pieces: readonly bigint[],
    maps: readonly [Uint8Array, Uint8Array] | null,
    fresh: boolean,
    progress: Int32Array | null,
    framing: Uint32Array,
    callback: ChannelThreadCallback,
  ): ChannelThread;
}

export interface PollerConstructor {
  /** The callback gets err (an errno, 0 if none), and whether the fd is readable (or hung up) / writable. */
  new (fd: number, callback: PollCallback): Poller;
}

export interface NativeAddon {
  /** A memfd (MFD_CLOEXEC) of `size` bytes; sparse until touched. */
  memfdCreate(name: string, size: number | bigint): number;
  /**
   * A MAP_SHARED mapping of [offset, offset+length) of fd as an external ArrayBuffer, unmapped when it is
   * collected or by munmap(). Node 20 caps one ArrayBuffer at 4 GiB (buffer.constants.MAX_LENGTH).
   * A mapping of 2 MiB or more from an offset that is a multiple of 2 MiB starts on a 2 MiB boundary, so
   * the file's huge pages (a memfd's after MADV_COLLAPSE) can be mapped whole.
   * A store through a view of a read-only mapping (writable false) kills the process with SIGSEGV.
   */
  mmap(fd: number, offset: number | bigint, length: number | bigint, writable: boolean): ArrayBuffer;
  /**
   * Private anonymous memory (zeroed) as an ArrayBuffer held as mmap()'s are, 2 MiB-aligned and advised
   * MADV_HUGEPAGE: transparent huge pages where the kernel has them (advice only), so a large buffer takes
   * a few page faults on first touch instead of one per 4 KiB.
   */
  mmapAnon(length: number | bigint): ArrayBuffer;
  /**
   * Detaches the ArrayBuffer (every view reads as length 0) and lets go of its mapping: unmapped now,
   * unless a view attached on another thread (mmapAttach) still holds it. A second call is a no-op.
   */
  munmap(ab: ArrayBuffer): void;
  /**
   * A token that lets another thread of this process attach (mmapAttach) a view of the same pages: the
   * same mapping, no page faulted in again. The token holds the mapping until it is attached; attach
   * each exactly once (one never attached keeps the pages mapped until the process ends).
   */
  mmapShare(ab: ArrayBuffer): bigint;
  /** An ArrayBuffer over the pages a mmapShare token names, holding them until munmap() or collection. */
  mmapAttach(token: bigint): ArrayBuffer;
  /**
   * madvise(2) on [offset, offset+length) of a mapping returned by mmap (offset on a page boundary; any
   * other ArrayBuffer is a TypeError). `advice` is passed through (see MADV); the kernel rejects what it
   * does not know with EINVAL. Blocks the calling thread for as long as the advice takes.
   */
  madvise(ab: ArrayBuffer, offset: number | bigint, length: number | bigint, advice: number): void;
  close(fd: number): void;
  /** A close-on-exec duplicate of fd (F_DUPFD_CLOEXEC). */
  dup(fd: number): number;
  /** fstat(fd).st_size */
  fdSize(fd: number): number;
  /** mallopt(M_TRIM_THRESHOLD): freed heap up to this size stays mapped for reuse (0 to 2^31-1 bytes). */
  mallocTrimThreshold(bytes: number): void;
  /** An eventfd (EFD_CLOEXEC, plus EFD_NONBLOCK if nonblock). */
  eventfd(initval: number, nonblock: boolean): number;
  /** Adds value to the counter; throws EAGAIN if a nonblocking counter would overflow. */
  eventfdWrite(fd: number, value: bigint | number): void;
  /** Reads and resets the counter; null when it is 0 on a nonblocking eventfd. */
  eventfdRead(fd: number): bigint | null;
  /** A connected AF_UNIX SOCK_STREAM pair, nonblocking and close-on-exec. */
  socketpair(): [number, number];
  /** A listening socket at path, whose file is created with mode 0600 (less umask) with no window. */
  listenUnix(path: string, backlog: number): number;
  /** An accepted connection of any listening socket (nonblocking, close-on-exec), or -1 if none is pending. */
  accept(fd: number): number;
  /** A listening TCP socket on a numeric IPv4/IPv6 address (SO_REUSEADDR; "::" takes IPv4 too); port 0 picks one. */
  listenTcp(address: string, port: number, backlog: number): number;
  /** The port a TCP socket is bound to. */
  localPort(fd: number): number;
  /** A connected nonblocking socket; ENOENT, ECONNREFUSED (and EAGAIN on a full backlog) are thrown. */
  connectUnix(path: string): number;
  /**
   * Asks for a socket send buffer of `bytes` (SO_SNDBUF) and returns the size the kernel granted: Linux
   * caps the request at net.core.wmem_max and doubles it for its own bookkeeping.
   */
  setSendBuffer(fd: number, bytes: number): number;
  /**
   * Nonblocking send; returns bytes sent (maybe fewer than the data's length) or -1 on EAGAIN (nothing
   * sent). `data` may be up to 16 buffers, sent in order as one write (an iovec). fds (at most 253)
   * travel as one SCM_RIGHTS message with the first byte sent; data must not be empty when fds are
   * given. The caller's fds stay open (the kernel passes duplicates).
   */
  sendmsg(fd: number, data: Uint8Array | readonly Uint8Array[], fds: readonly number[]): number;
  /** Nonblocking receive of at most buf.length bytes and at most maxFds (0..253) fds; null on EAGAIN. */
  recvmsg(fd: number, buf: Uint8Array, maxFds: number): RecvResult | null;
  /**
   * CRC-32C (Castagnoli) of data, continuing from seed (a previous result; 0 or omitted to start), so
   * crc32c(b, crc32c(a)) == crc32c(a ++ b). Carry-less multiplication folding (AVX-512 VPCLMULQDQ) or the
   * SSE4.2 CRC32 instruction when the CPU has them, tables otherwise.
   */
  crc32c(data: Uint8Array, seed?: number): number;
  /**
   * Copies src into dst at `at` and returns the CRC-32C of dst[from, at) followed by src, continuing from
   * seed: bytes already written ahead of the copy, then the copy, checksummed in the same pass over src
   * (with VPCLMULQDQ or SSE4.2). RangeError when src does not fit at `at` or overlaps its destination.
   */
  crc32cCopy(dst: Uint8Array, from: number, at: number, src: Uint8Array, seed: number): number;
  /**
   * crc32cCopy with src landing in pieces of `piece` bytes, `gap` bytes of dst (the caller's, written
   * beforehand and checksummed where they lie) before each piece after the first: record headers between
   * pages, one call for a run of pages. The CRC covers dst[from, end of the last piece).
   */
  crc32cCopySpaced(
    dst: Uint8Array,
    from: number,
    at: number,
    src: Uint8Array,
    seed: number,
    piece: number,
    gap: number,
  ): number;
  /**
   * Which crc32c code runs: 'vpclmulqdq' (AVX-512 with VPCLMULQDQ), 'sse4.2', or 'table'. Read once, at
   * load: VFIO_NATIVE_CRC32C=sse4.2 or =table forces a slower one (for tests).
   */
  crc32cImplementation(): 'vpclmulqdq' | 'sse4.2' | 'table';
  /** Whether every byte of data is 0 (a 64-byte-block scan that stops at the first non-zero block). */
  isZero(data: Uint8Array): boolean;
  /**
   * Zero-page detection for one dirty-log word: for each bit k set in `mask` (a u32), whether the 4096
   * bytes at data[k*4096] are all zero; returns those bits. A RangeError if a page asked for is not
   * wholly inside data.
   */
  zeroPages(data: Uint8Array, mask: number): number;
  /**
   * For each bit k set in `mask` (a u32), whether the 4096 bytes at `offset` + k*4096 of fd lie wholly in
   * a hole (never written: they read as zeroes), found with lseek SEEK_DATA/SEEK_HOLE without touching
   * them; returns those bits. `offset` is a multiple of 4096. A swapped-out page counts as data.
   * extent[0..1] gets the last run of data met, [start, end) with end where the next hole starts (unchanged
   * when none was met).
   */
  holePages(fd: number, offset: number, mask: number, extent: Float64Array): number;
  /**
   * Takes dirty pages for multifd, a batch at a time: for each of `words` dirty-log words from `from`
   * (bit b of word w: page 32w+b; taken with an atomic exchange, clean words only read), its pages below
   * `pages` are sorted into zero pages (in holes of fd, found as holePages does with `extent`, unless fd
   * is -1; else by the block scan of zeroPages over `mem`, which maps guest RAM from page `memFirst`)
   * and pages with data, and their byte offsets appended to `zero` and `normal` from queued[1] and
   * queued[0] (both counts updated). Stops before a word once `maxPages` pages were taken or fewer than
   * 32 of `capacity` are left. Returns the words consumed; -1 - that when lseek failed (holes were then
   * not looked for, every page scanned). A RangeError when the words name pages outside mem, or the lists
   * are shorter than capacity.
   */
  takeDirtyPages(
    log: Int32Array,
    from: number,
    words: number,
    pages: number,
    mem: Uint8Array,
    memFirst: number,
    fd: number,
    extent: Float64Array,
    normal: Float64Array,
    zero: Float64Array,
    queued: Uint32Array,
    capacity: number,
    maxPages: number,
  ): number;
  /**
   * pwritev(2) of src into fd at `offset`: src is pieces of `piece` bytes with `gap` bytes between each
   * two (page records: a page, the next record's header, the next page), which land one after another
   * in the file. Returns the bytes written (all of the pieces: short writes are resumed). A RangeError
   * when src is not whole pieces and gaps.
   */
  pwriteSpaced(fd: number, offset: number, src: Uint8Array, piece: number, gap: number): number;
  /**
   * src laid out as for pwriteSpaced, its pieces copied one after another to the start of dst. Returns the
   * bytes copied. A RangeError when src is not whole pieces and gaps, the pieces do not fit in dst, or the
   * two overlap.
   */
  copyUnspaced(dst: Uint8Array, src: Uint8Array, piece: number, gap: number): number;
  /**
   * For tests: a multifd channel's I/O mode chooser in 'auto' (native/src/chanmode.c) fed packet k's CPU
   * ns per byte from staged[k] or direct[k], whichever way it chose for packet k. The way of each packet:
   * 1 staged, 2 direct.
   */
  ioChooserRun(staged: Float64Array, direct: Float64Array): Uint8Array;
  /** An unconnected TCP socket (nonblocking, close-on-exec) of a numeric IPv4/IPv6 address's family. */
  tcpSocket(address: string): number;
  /** TCP_NOTSENT_LOWAT: the most of the socket's data the kernel holds unsent; returns the value read back. */
  setNotsentLowat(fd: number, bytes: number): number;
  Poller: PollerConstructor;
  ChannelThread: ChannelThreadConstructor;
}

/** madvise(2) advice values (Linux, asm-generic) for NativeAddon.madvise. */
export const MADV = {
  WILLNEED: 3,
  DONTNEED: 4,
  REMOVE: 9,
  HUGEPAGE: 14,
  NOHUGEPAGE: 15,
  /** Linux 5.14+: fault the range in readable */
  POPULATE_READ: 22,
  /** Linux 5.14+: fault the range in writable (allocating and zeroing pages as a first write would) */
  POPULATE_WRITE: 23,
  /** Linux 6.1+: make the range's pages transparent huge pages now, copying what they hold */
  COLLAPSE: 25,
} as const;

/** Where `npm ci` (through scripts/build-native.js) puts the addon. */
export const defaultAddonPath = fileURLToPath(new URL('../../native/build/Release/vfio_native.node', import.meta.url));

const require = createRequire(import.meta.url);

const howToBuild =
  'Build it with `npm run build:native` (or reinstall with `npm ci`); that needs a C compiler, make, python3 ' +
  "and the Node headers (include/node under Node's install prefix).";

/** Loads the addon from path, turning "not built" into an error that says how to build it. */
export function loadAddon(path: string = defaultAddonPath): NativeAddon {
  try {
    return require(path) as NativeAddon;
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (code === 'MODULE_NOT_FOUND') {
      throw new Error(`the native addon is not built: ${path} does not exist. ${howToBuild}`, { cause: err });
    }
    if (code === 'ERR_DLOPEN_FAILED') {
      // Typically built for another Node (ABI) or a half-finished build.
      throw new Error(`the native addon at ${path} could not be loaded (${(err as Error).message}). ${howToBuild}`, {
        cause: err,
      });
    }
    throw err;
  }
}

let cached: NativeAddon | undefined;

/** The addon, loaded on first use (so importing a module that may need it costs nothing until then). */
export function native(): NativeAddon {
  cached ??= loadAddon();
  return cached;
}
