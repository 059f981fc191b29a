// FdSocket and FdServer: nonblocking UNIX stream sockets that carry fds (SCM_RIGHTS), driven by the event
// loop through the addon's Poller. net.Socket cannot do this: it drops ancillary data.
//
// How fds line up with bytes (what a framing layer builds on). The sender attaches a write's fds to the
// FIRST sendmsg of that write, so they travel with its first byte; partial sends continue without them.
// Linux hands fds to the recvmsg that reads that first byte, but one recvmsg may also return bytes queued
// before it. So a 'data' chunk's fds arrived with SOME byte of that chunk, and a reader that never lets a
// recvmsg cross a message boundary knows exactly which message they belong to: set `readSize` to return
// the bytes left in the current header or message (libvfio-user reads the 16-byte header, then the rest).
//
// Where received bytes land: by default in a slab (small reads) or a fresh buffer (large ones), which the
// 'data' chunk then owns. A reader that knows where the bytes belong (a framing layer filling a message
// body) sets `readTarget` and receives straight into that memory: no buffer allocated, nothing to copy.
import { EventEmitter } from 'node:events';
import { lstatSync, statSync, unlinkSync } from 'node:fs';
import { VfioError } from '../errors.ts';
import { type NativeError, native, type Poller, type RecvResult } from './addon.ts';
import { FdAcceptor } from './fd-acceptor.ts';

/** The kernel's SCM_MAX_FD: the most fds one sendmsg can carry, so a default that never truncates. */
export const MAX_FDS_PER_MESSAGE = 253;
/** Most buffers one write (one sendmsg) takes: the addon's limit. */
export const MAX_PARTS_PER_WRITE = 16;
const DEFAULT_READ_SIZE = 64 * 1024;
const MAX_READ_SIZE = 16 * 1024 * 1024;
const SLAB_SIZE = 256 * 1024;
/** recvmsg calls per readable event before yielding to the rest of the loop (epoll is level-triggered). */
const READS_PER_EVENT = 32;

export interface FdSocketEvents {
  /** Bytes in stream order, with the fds that arrived alongside them (now owned by the listener). */
  data: [chunk: Uint8Array, fds: number[]];
  /** The write queue has emptied after write() had to queue. */
  drain: [];
  /** A real failure (not a peer hangup); 'close' follows. */
  error: [err: Error];
  /** Emitted once: after destroy()/end(), an error, or the peer's hangup (EOF, ECONNRESET, EPIPE). */
  close: [];
}

export interface FdSocketOptions {
  /** Most fds accepted per recvmsg; more is a protocol error (EFAULT, as libvfio-user). Default 253. */
  maxFds?: number;
  /** Bytes the next recvmsg may read (see the note at the top of this file). Default: 64 KiB. */
  readSize?: () => number;
  /** Memory the next recvmsg should fill (see FdSocket.readTarget). Default: none. */
  readTarget?: () => Uint8Array | null;
}

interface PendingWrite {
  data: Uint8Array;
  /** Our own duplicates of the caller's fds, until the first byte of this write is sent. */
  fds: number[] | null;
}

function sysError(code: string, errno: number, message: string): NativeError {
  return Object.assign(new Error(`${message} (${code})`), { code, errno, syscall: '' });
}

function errCode(err: unknown): unknown {
  return (err as { code?: unknown } | null)?.code;
}

/** The peer went away: a clean close, not an error. */
function isHangup(err: unknown): boolean {
  const code = errCode(err);
  return code === 'ECONNRESET' || code === 'EPIPE';
}

/** `parts` without their first `n` bytes. */
function skip(parts: readonly Uint8Array[], n: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const p of parts) {
    if (n >= p.length) n -= p.length;
    else {
      out.push(n > 0 ? p.subarray(n) : p);
      n = 0;
    }
  }
  return out;
}

function closeAll(fds: readonly number[]): void {
  for (const fd of fds) native().close(fd);
}

export class FdSocket extends EventEmitter<FdSocketEvents> {
  /** The bytes the next recvmsg may read; replace it to keep reads within message boundaries. */
  readSize: () => number;
  /**
   * When set and it returns a non-empty view, the next recvmsg reads into that view (at most its length,
   * and at most readSize()) instead of a buffer of the socket's own, and the 'data' chunk is a view of it.
   * The memory is the reader's: the socket never keeps a reference to it after that recvmsg.
   */
  readTarget: (() => Uint8Array | null) | null;
  readonly maxFds: number;
  #fd: number;
  #poller: Poller;
  #queue: PendingWrite[] = [];
  #queuedBytes = 0;
  #destroyed = false;
  #ending = false;
  #hungUp = false;
  #paused = false;
  #slab = new Uint8Array(0);
  #slabOffset = 0;

  /** Takes ownership of fd, a connected nonblocking UNIX stream socket. */
  constructor(fd: number, options: FdSocketOptions = {}) {
    super();
    this.#fd = fd;
    this.maxFds = options.maxFds ?? MAX_FDS_PER_MESSAGE;
    this.readSize = options.readSize ?? (() => DEFAULT_READ_SIZE);
    this.readTarget = options.readTarget ?? null;
    try {
      this.#poller = new (native().Poller)(fd, (err, readable, writable) => this.#onPoll(err, readable, writable));
    } catch (err) {
      native().close(fd); // ours from the start, even when we cannot use it
      throw err;
    }
    // Polling can only report in a later loop turn, after the caller has attached its listeners.
    this.#updatePolling();
  }

  /** A connected pair in this process (a test, or a socket to hand to a child or a peer over SCM_RIGHTS). */
  static pair(options?: FdSocketOptions): [FdSocket, FdSocket] {
    const [a, b] = native().socketpair();
    return [new FdSocket(a, options), new FdSocket(b, options)];
  }

  /** Connects at once (UNIX sockets never connect asynchronously); throws ENOENT, ECONNREFUSED, EAGAIN. */
  static connect(path: string, options?: FdSocketOptions): FdSocket {
    return new FdSocket(native().connectUnix(path), options);
  }

  /**
   * Asks for a send buffer of `bytes` (SO_SNDBUF) and returns the size granted (Linux caps the request at
   * net.core.wmem_max, then doubles it for its bookkeeping).
   */
  setSendBuffer(bytes: number): number {
    if (this.#destroyed) throw sysError('EBADF', 9, 'socket is closed');
    return native().setSendBuffer(this.#fd, bytes);
  }

  /** The socket's fd, or -1 once destroyed. */
  get fd(): number {
    return this.#destroyed ? -1 : this.#fd;
  }

  get destroyed(): boolean {
    return this.#destroyed;
  }

  /** Whether write() accepts data: false once destroyed, ending, or the peer has hung up ('close' may follow later). */
  get writable(): boolean {
    return !this.#destroyed && !this.#ending && !this.#hungUp;
  }

  /** Bytes accepted by write() but not yet sent: the backpressure signal. */
  get writableLength(): number {
    return this.#queuedBytes;
  }

  /**
   * Sends data, with fds on its first byte. Whatever cannot be sent now is queued (data by reference, as
   * net.Socket does: don't modify it until 'drain'; fds as duplicates, so the caller may close its own at
   * once). Writes go out in order; a write's fds never ride on another write's bytes. Several buffers
   * (`data` an array: a message's head and its bulk data by reference) go out as one sendmsg, as one
   * buffer would: a peer that expects a message to arrive whole (libvfio-user reads a message's body
   * with one recv) must not find the socket holding only its head.
   */
  write(data: Uint8Array | readonly Uint8Array[], fds: readonly number[] = []): void {
    if (this.#destroyed || this.#ending || this.#hungUp) {
      throw sysError('ERR_SOCKET_CLOSED', 0, 'write on a closed FdSocket');
    }
    if (fds.length > MAX_FDS_PER_MESSAGE) throw new RangeError(`at most ${MAX_FDS_PER_MESSAGE} fds per write`);
    let parts = (data instanceof Uint8Array ? [data] : data).filter((p) => p.length > 0);
    if (parts.length > MAX_PARTS_PER_WRITE) throw new RangeError(`at most ${MAX_PARTS_PER_WRITE} buffers per write`);
    if (parts.length === 0) {
      if (fds.length > 0) throw new RangeError('fds need at least one byte of data to travel with');
      return;
    }
    let restFds = fds;
    if (this.#queue.length === 0) {
      const n = this.#send(parts, fds);
      if (n === null) return;
      if (n > 0) {
        parts = skip(parts, n);
        restFds = [];
      }
      if (parts.length === 0) return;
    }
    parts.forEach((p, i) => {
      const dups = i === 0 && restFds.length > 0 ? restFds.map((fd) => native().dup(fd)) : null;
      this.#queue.push({ data: p, fds: dups });
      this.#queuedBytes += p.length;
    });
    this.#updatePolling();
  }

  /** Closes once every queued byte is sent (no half-close: vfio-user never needs one). */
  end(): void {
    if (this.#destroyed || this.#ending) return;
    if (this.#queue.length === 0) this.destroy();
    else this.#ending = true;
  }

  /** Closes now: queued writes are dropped (their fd duplicates closed). 'error' (if err) then 'close'. */
  destroy(err?: Error): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.#poller.close(); // before close(fd): never leave an fd number polled after it is reused
    native().close(this.#fd);
    this.#dropWrites();
    process.nextTick(() => {
      if (err) this.emit('error', err);
      this.emit('close');
    });
  }

  /** Stops reading (the kernel buffer then pushes back on the peer) until resume(). */
  pause(): void {
    this.#paused = true;
    this.#updatePolling();
  }

  resume(): void {
    this.#paused = false;
    this.#updatePolling();
  }

  /** Whether this socket keeps the process alive (default: yes, like net.Socket). */
  ref(): void {
    if (!this.#destroyed) this.#poller.ref();
  }

  unref(): void {
    if (!this.#destroyed) this.#poller.unref();
  }

  #dropWrites(): void {
    for (const w of this.#queue) if (w.fds) closeAll(w.fds);
    this.#queue = [];
    this.#queuedBytes = 0;
  }

  #updatePolling(): void {
    if (this.#destroyed) return;
    this.#poller.start(!this.#paused, this.#queue.length > 0);
  }

  /** One sendmsg: bytes sent, -1 if the socket is full, or null if the socket is now closed. */
  #send(parts: readonly Uint8Array[], fds: readonly number[]): number | null {
    try {
      return native().sendmsg(this.#fd, parts.length === 1 ? parts[0]! : parts, fds);
    } catch (err) {
      if (isHangup(err)) this.#hangup();
      else this.destroy(err as Error);
      return null;
    }
  }

  #onPoll(err: number, readable: boolean, writable: boolean): void {
    if (this.#destroyed) return;
    if (err !== 0) {
      // ECONNRESET here means the peer closed with our data unread (the addon reads SO_ERROR for us).
      const e = new VfioError(err, 'poll on FdSocket failed');
      if (isHangup(e)) this.#hangup();
      else this.destroy(e);
      return;
    }
    if (writable) this.#flush();
    if (readable) this.#read(READS_PER_EVENT);
  }

  #flush(): void {
    while (this.#queue.length > 0) {
      // One sendmsg: the oldest write and those behind it that bring no fds of their own.
      const head = this.#queue[0]!;
      const parts = [head.data];
      for (let i = 1; i < this.#queue.length && parts.length < MAX_PARTS_PER_WRITE; i++) {
        const w = this.#queue[i]!;
        if (w.fds) break;
        parts.push(w.data);
      }
      const n = this.#send(parts, head.fds ?? []);
      if (n === null || n < 0) return;
      if (head.fds) {
        closeAll(head.fds); // sent with the first byte: the peer has its own copies now
        head.fds = null;
      }
      this.#queuedBytes -= n;
      for (let left = n; left > 0; ) {
        const w = this.#queue[0]!;
        if (left < w.data.length) {
          w.data = w.data.subarray(left);
          break;
        }
        left -= w.data.length;
        this.#queue.shift();
      }
    }
    if (this.#ending) {
      this.destroy();
      return;
    }
    this.#updatePolling();
    this.emit('drain');
  }

  #buffer(size: number): { buf: Uint8Array; fromSlab: boolean } {
    if (size > SLAB_SIZE / 4) return { buf: new Uint8Array(size), fromSlab: false };
    if (this.#slab.length - this.#slabOffset < size) {
      this.#slab = new Uint8Array(SLAB_SIZE);
      this.#slabOffset = 0;
    }
    return { buf: this.#slab.subarray(this.#slabOffset, this.#slabOffset + size), fromSlab: true };
  }

  #read(budget: number): void {
    for (let i = 0; i < budget && !this.#destroyed && !this.#paused; i++) {
      const want = Math.floor(this.readSize());
      const size = Number.isNaN(want) ? DEFAULT_READ_SIZE : Math.min(Math.max(1, want), MAX_READ_SIZE);
      const target = this.readTarget?.();
      const { buf, fromSlab } =
        target && target.byteLength > 0
          ? { buf: target.byteLength > size ? target.subarray(0, size) : target, fromSlab: false }
          : this.#buffer(size);
      let r: RecvResult | null;
      try {
        r = native().recvmsg(this.#fd, buf, this.maxFds);
      } catch (err) {
        if (isHangup(err) && !this.#hungUp) this.#hangup();
        else this.destroy(isHangup(err) ? undefined : (err as Error));
        return;
      }
      if (r === null) return;
      if (r.truncated) {
        // The addon closed whatever arrived; which message the missing fds belonged to is unknowable.
        this.destroy(
          VfioError.of('EFAULT', `received more fds than maxFds (${this.maxFds}); ancillary data truncated`),
        );
        return;
      }
      if (r.bytes === 0) {
        this.destroy(); // EOF: everything the peer sent has been delivered
        return;
      }
      if (fromSlab) this.#slabOffset += (r.bytes + 7) & ~7; // chunks never share bytes
      const chunk = buf.subarray(0, r.bytes);
      // Nobody to own the fds: close them rather than leak them.
      if (!this.emit('data', chunk, r.fds)) closeAll(r.fds);
    }
  }

  /**
   * The peer is gone (ECONNRESET, EPIPE). Our writes are moot, but bytes it sent before leaving may still be
   * queued for us: deliver them, then close. A paused socket closes once resumed and drained.
   */
  #hangup(): void {
    if (this.#destroyed) return;
    if (!this.#hungUp) {
      this.#hungUp = true;
      const hadQueued = this.#queue.length > 0;
      this.#dropWrites();
      // The queue is empty now: a reader paused until it drains must hear so, or it never resumes to
      // see the EOF.
      if (hadQueued) process.nextTick(() => this.emit('drain'));
    }
    if (this.#paused) {
      this.#updatePolling();
      return;
    }
    this.#read(Number.POSITIVE_INFINITY); // ends in EOF (destroy) unless a listener paused us
    if (!this.#destroyed && !this.#paused) this.destroy();
  }
}

export interface FdServerEvents {
  connection: [socket: FdSocket];
  error: [err: Error];
  close: [];
}

export interface FdServerOptions {
  backlog?: number;
  /** Options for every accepted FdSocket. */
  socket?: FdSocketOptions;
}

export class FdServer extends EventEmitter<FdServerEvents> {
  #options: FdServerOptions;
  #acceptor: FdAcceptor | null = null;
  #path: string | null = null;
  #inode: { dev: number; ino: number } | null = null;
  #closed = false;

  constructor(options: FdServerOptions = {}) {
    super();
    this.#options = options;
  }

  /** The path listened on, or null. */
  get path(): string | null {
    return this.#path;
  }

  /**
   * Listens at path (socket file mode 0600). A leftover socket file with no server behind it (a crashed
   * predecessor) is replaced; a live server or a file that is not a socket makes this throw EADDRINUSE.
   */
  listen(path: string): this {
    if (this.#acceptor || this.#closed) throw sysError('ERR_SERVER_ALREADY_LISTEN', 0, 'FdServer.listen called twice');
    removeStaleSocket(path);
    const fd = native().listenUnix(path, this.#options.backlog ?? 128);
    const st = statSync(path);
    this.#path = path;
    this.#inode = { dev: st.dev, ino: st.ino };
    this.#acceptor = new FdAcceptor(fd, {
      connection: (c) => {
        const socket = new FdSocket(c, this.#options.socket);
        if (!this.emit('connection', socket)) socket.destroy();
      },
      error: (e) => this.emit('error', e),
    });
    return this;
  }

  /** Stops listening and removes the socket file (only if it is still ours). Accepted sockets stay open. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#acceptor) {
      this.#acceptor.close();
      if (this.#path !== null && this.#inode !== null) {
        const st = lstatSync(this.#path, { throwIfNoEntry: false });
        if (st && st.dev === this.#inode.dev && st.ino === this.#inode.ino) unlinkSync(this.#path);
      }
    }
    process.nextTick(() => this.emit('close'));
  }

  ref(): void {
    this.#acceptor?.ref();
  }

  unref(): void {
    this.#acceptor?.unref();
  }
}

/** Unlinks path if it is a socket nobody listens on; throws EADDRINUSE if it is anything else. */
function removeStaleSocket(path: string): void {
  const st = lstatSync(path, { throwIfNoEntry: false });
  if (!st) return;
  if (!st.isSocket()) throw sysError('EADDRINUSE', 98, `${path} exists and is not a socket`);
  let probe: number;
  try {
    probe = native().connectUnix(path);
  } catch (err) {
    const code = errCode(err);
    if (code === 'ECONNREFUSED') {
      unlinkSync(path); // stale: nobody accepts there
      return;
    }
    if (code === 'ENOENT') return; // went away meanwhile
    if (code === 'EAGAIN') throw sysError('EADDRINUSE', 98, `a server is listening at ${path} (backlog full)`);
    throw err;
  }
  native().close(probe);
  throw sysError('EADDRINUSE', 98, `a server is listening at ${path}`);
}
