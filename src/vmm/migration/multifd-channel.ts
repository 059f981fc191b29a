// One multifd channel's thread and descriptors (QEMU's MultiFDSendParams / MultiFDRecvParams and the
// thread each has, migration/multifd.c). The thread is native (native/src/chanthread.c): it does the
// channel's blocking socket I/O and its page copies against the main thread's own mapping of guest RAM,
// as QEMU's threads share its address space, and costs no JavaScript engine to start. This class turns
// its queued operations into promises, settled in queue order. The main thread keeps the protocol: it
// encodes each packet's header and checks each received one with the codec (src/stream/multifd.ts).

import { errnoName } from '../../abi/errno.ts';
import { type ChannelThread, type NativeError, native } from '../../native/addon.ts';
import { MULTIFD_FRAMING } from '../../stream/multifd.ts';
import type { GuestMemory } from '../guest/guest-memory.ts';

const FRAMING = new Uint32Array([
  MULTIFD_FRAMING.headerBytes,
  MULTIFD_FRAMING.normalPagesAt,
  MULTIFD_FRAMING.zeroPagesAt,
  MULTIFD_FRAMING.flagsAt,
  MULTIFD_FRAMING.syncFlag,
  MULTIFD_FRAMING.maxPages,
  MULTIFD_FRAMING.pageSize,
]);

export interface ChannelOptions {
  /** The channel's socket: once constructed, the channel owns it (closed once the thread has ended). */
  socketFd: number;
  memory: GuestMemory;
  /** No byte moving for this long fails the operation with ETIMEDOUT (-1: no limit). */
  stallMs: number;
  /** A receiving channel's per-page maps (ram-handler.ts): received at least once; written with data or a fill. */
  maps?: { received: Uint8Array; written: Uint8Array; fresh: boolean };
  /** Shared counter [0]: bumped per read or write that moved bytes (the main stream's stall check). */
  progress?: Int32Array;
  /**
   * Received packets' headers and offsets, back to back, as recv() reads them: several packets a call,
   * every one before recv() completes.
   */
  onPackets?: (packets: Buffer) => void;
  /** How packets' pages move (default 'auto': each way measured, the cheaper used; see MultifdIo). */
  io?: MultifdIo;
}

/**
 * How a channel moves packets' pages: 'staged' through its own buffer (a copy in user space, then the
 * socket), 'direct' between guest RAM and the socket (QEMU's way), 'auto' each way timed by the thread's
 * CPU per byte and the cheaper kept (which one wins depends on the host: docs/performance.md).
 */
export type MultifdIo = 'auto' | 'staged' | 'direct';

export const MULTIFD_IO: readonly MultifdIo[] = ['auto', 'staged', 'direct'];

/** Packets whose pages channels moved each way (query-migrate's x-multifd-io). */
export interface MultifdIoCounts {
  staged: number;
  direct: number;
}

export class MultifdChannel {
  readonly socketFd: number;
  private readonly abortFd: number;
  private readonly thread: ChannelThread;
  /** The operations queued and not yet completed, in order, with the buffers they use. */
  private readonly pending: { resolve: (v: number) => void; reject: (e: Error) => void; keep: unknown }[] = [];
  private ended: Promise<void> | null = null;
  private closed = false;

  constructor(o: ChannelOptions) {
    const n = native();
    this.socketFd = o.socketFd;
    this.abortFd = n.eventfd(0, true);
    try {
      this.thread = new n.ChannelThread(
        o.socketFd,
        this.abortFd,
        o.stallMs,
        o.memory.share(),
        o.maps ? [o.maps.received, o.maps.written] : null,
        o.maps?.fresh ?? false,
        o.progress ?? null,
        FRAMING,
        (err, value, packets) => {
          if (packets) return o.onPackets?.(packets);
          const p = this.pending.shift()!;
          if (err) p.reject(err);
          else p.resolve(value);
        },
      );
      this.thread.setIoMode(MULTIFD_IO.indexOf(o.io ?? 'auto') as 0 | 1 | 2);
    } catch (err) {
      n.close(this.abortFd);
      throw err;
    }
  }

  /** Packets whose pages this channel moved so far, each way. */
  get ioCounts(): MultifdIoCounts {
    const [staged, direct] = this.thread.ioCounts();
    return { staged, direct };
  }

  private queue(call: () => void, keep?: unknown): Promise<number> {
    call();
    return new Promise((resolve, reject) => this.pending.push({ resolve, reject, keep }));
  }

  connect(address: string, port: number, timeoutMs: number): Promise<number> {
    return this.queue(() => this.thread.connect(address, port, timeoutMs));
  }

  writev(parts: Uint8Array[]): Promise<number> {
    return this.queue(() => this.thread.writev(parts), parts);
  }

  /** Fills parts; resolves with the bytes read (fewer: the peer closed first). */
  readv(parts: Uint8Array[]): Promise<number> {
    return this.queue(() => this.thread.readv(parts), parts);
  }

  /** See ChannelThread.sendPackets; resolves with the bytes written. */
  sendPackets(heads: Uint8Array, headLens: Uint32Array, offsets: Float64Array, counts: Uint32Array): Promise<number> {
    return this.queue(
      () => this.thread.sendPackets(heads, headLens, offsets, counts),
      [heads, headLens, offsets, counts],
    );
  }

  /** Packets into guest RAM until a SYNC one (resolves with the packets read) or EOF (-1 - packets read). */
  recv(): Promise<number> {
    return this.queue(() => this.thread.recv());
  }

  shutdown(how: 0 | 1 | 2): Promise<number> {
    return this.queue(() => this.thread.shutdown(how));
  }

  /** Reads and drops until the peer closes (1) or ms pass (0); after abort(), with useAbort false. */
  discard(ms: number, useAbort: boolean): Promise<number> {
    return this.queue(() => this.thread.discard(ms, useAbort));
  }

  /** Lets the process exit while the thread still works (a channel draining after a failed load). */
  unref(): void {
    if (!this.closed) this.thread.unref();
  }

  /** Wakes the thread out of any call, for good: every call after this fails with ECANCELED (but discard without it). */
  abort(): void {
    if (!this.closed) native().eventfdWrite(this.abortFd, 1);
  }

  /**
   * Ends the thread once its queued operations are done (abort() first to make that quick) and closes
   * the socket and eventfd; the same promise for every caller.
   */
  close(): Promise<void> {
    this.ended ??= this.queue(() => this.thread.end()).then(() => {
      this.closed = true;
      native().close(this.socketFd);
      native().close(this.abortFd);
    });
    return this.ended;
  }
}

/** Packets whose pages `channels` moved so far, each way, summed. */
export function ioCounts(channels: readonly MultifdChannel[]): MultifdIoCounts {
  const sum = { staged: 0, direct: 0 };
  for (const ch of channels) {
    const c = ch.ioCounts;
    sum.staged += c.staged;
    sum.direct += c.direct;
  }
  return sum;
}

/** A failed channel operation's errno name (EPROTO for an error that carries none: a broken protocol). */
export function channelErrno(err: unknown): string {
  const e = err as Partial<NativeError>;
  if (typeof e.code === 'string' && /^E[A-Z0-9]+$/.test(e.code)) return e.code;
  return typeof e.errno === 'number' ? errnoName(e.errno) : 'EPROTO';
}
