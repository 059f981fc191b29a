// What the multifd channel threads and the migration's main thread say to each other (QEMU's
// MultiFDSendParams / MultiFDRecvParams, whose fields the threads share under a mutex; here, messages).
// Each channel is one worker_thread that uses the main thread's own mapping of guest RAM (as QEMU's
// threads share its address space) and does its TCP connection's I/O, so page contents never pass
// through the main thread. The main thread owns the connection's descriptor and the channel's abort
// eventfd (ChannelFds), and closes them once the thread has exited, however it ended.

import { Worker } from 'node:worker_threads';
import { native } from '../../native/addon.ts';
import type { SharedGuestMemory } from '../guest/guest-memory.ts';
import { workerEntry } from '../worker-entry.ts';

export interface SendWorkerConfig {
  role: 'send';
  /** Guest RAM, read-only in practice for a sending channel. */
  memory: SharedGuestMemory;
  /** The destination, a numeric address (resolved by the main thread) and port. */
  address: string;
  port: number;
  /** An unconnected socket for the channel to connect (native tcpSocket). */
  socketFd: number;
  abortFd: number;
  uuid: Uint8Array;
  id: number;
  /** No write progress for this long is a dead channel. */
  stallTimeoutMs: number;
}

export interface RecvWorkerConfig {
  role: 'recv';
  memory: SharedGuestMemory;
  /** The accepted connection's descriptor. */
  socketFd: number;
  abortFd: number;
  /** Channel uuid to insist on; null: none set (QEMU checks only when -uuid was given). */
  uuid: Uint8Array | null;
  /** Shared per-page maps (ram-handler.ts): received at least once; written with data or a fill. */
  received: Uint8Array;
  written: Uint8Array;
  /** The memory read as zero wherever nothing was written (a fresh destination). */
  fresh: boolean;
  /** Shared counter [0]: bumped per chunk read, so the main stream's stall check sees channel progress. */
  progress: Int32Array;
}

/**
 * Main -> sending channel. `packets`: consecutive packets numbered from packetNum, their pages
 * `normal` then `zero` taken MULTIFD_PACKET_PAGES at a time (the last packet takes the rest); with `sync`
 * the last one carries the SYNC flag (with no pages: one empty SYNC packet). One message and one write
 * for several packets: the channel's JavaScript per message, not per packet.
 */
export type ToSender =
  | { type: 'packets'; normal: Float64Array; zero: Float64Array; packetNum: number; packets: number; sync: boolean }
  | { type: 'end' };

/** Sending channel -> main. `packets`: how many of them went out with those bytes. */
export type FromSender =
  | Ready
  | { type: 'connected' }
  | { type: 'sent'; bytes: number; packets: number }
  | { type: 'closed' }
  | { type: 'error'; message: string; errno: string };

/** Main -> receiving channel. `drain`: the load failed; end our side, read and discard until the source
 * closes or `ms` pass, then say `drained`. */
export type ToReceiver = { type: 'release' } | { type: 'drain'; ms: number };

/** Receiving channel -> main. */
export type FromReceiver =
  | Ready
  | { type: 'hello'; id: number }
  /** A SYNC packet arrived; the channel waits for 'release'. packets: all received on this channel so far. */
  | { type: 'sync'; packetNum: number; packets: number }
  | { type: 'eof'; packets: number }
  | { type: 'drained' }
  | { type: 'error'; message: string; errno: string };

/**
 * A thread -> its pool, once its code is loaded (so it can start a channel at once). A thread taken from
 * the pool before that still sends it: a channel's owner ignores it.
 */
export type Ready = { type: 'ready' };

/** The channel threads' entry code (resolved once, as workload.ts does for the vCPUs). */
const entry = workerEntry(import.meta.url, 'multifd-worker');

/** Main -> a channel thread, first: what it is for (a pooled thread starts without it). */
export interface StartChannel {
  type: 'start';
  cfg: SendWorkerConfig | RecvWorkerConfig;
}

/**
 * Channel threads started before they are needed. A thread's start-up (a V8 isolate, and under tsx the
 * loader and the modules compiled again) takes a few hundred ms of CPU: paid when a migration begins, it
 * delayed the first page by that much per channel on a 2-core host. QEMU's multifd threads are cheap to
 * create at the migration's start; ours are made ready when the capability is set (`keep`), and again
 * after each migration (`refill`). Idle threads do not keep the process alive.
 */
export class ChannelThreadPool {
  /**
   * The idle threads, oldest first: whether each has loaded its code, and how to take the pool's
   * listeners off it when it leaves the pool.
   */
  private readonly idle = new Map<Worker, { loaded: boolean; release: () => void }>();
  private wanted = 0;

  /** Idle threads asked for, and how many of them have loaded their code (x-query-multifd-threads). */
  get readiness(): { wanted: number; ready: number } {
    let ready = 0;
    for (const t of this.idle.values()) if (t.loaded) ready++;
    return { wanted: this.wanted, ready };
  }

  /** Keeps `n` idle threads ready (0: none, the idle ones end). */
  keep(n: number): void {
    this.wanted = n;
    for (const w of [...this.idle.keys()].slice(n)) {
      this.idle.delete(w);
      void w.terminate();
    }
    this.refill();
  }

  /** Starts idle threads up to what keep() asked for. */
  refill(): void {
    while (this.idle.size < this.wanted) {
      const w = new Worker(entry, { eval: true });
      const drop = () => this.idle.delete(w);
      const ready = (m: Ready) => {
        const t = this.idle.get(w);
        if (t && m.type === 'ready') t.loaded = true;
      };
      w.once('message', ready);
      w.once('exit', drop);
      w.once('error', drop);
      // Only these listeners come off when the thread is taken: Node's own on a Worker (those that start
      // and stop its message port as 'message' listeners come and go) must stay.
      const release = () => {
        w.off('message', ready);
        w.off('exit', drop);
        w.off('error', drop);
      };
      w.unref();
      this.idle.set(w, { loaded: false, release });
    }
  }

  /** A channel thread for `cfg`: an idle one if ready, else a new one. It keeps the process alive. */
  start(cfg: SendWorkerConfig | RecvWorkerConfig): Worker {
    const [oldest] = this.idle;
    if (oldest) {
      this.idle.delete(oldest[0]);
      oldest[1].release();
    }
    const w = oldest?.[0] ?? new Worker(entry, { eval: true });
    w.ref();
    w.postMessage({ type: 'start', cfg } satisfies StartChannel);
    return w;
  }

  /** Ends the idle threads. */
  close(): void {
    this.keep(0);
  }
}

/** Abort eventfds of channels not yet closed: written when the process exits (see ChannelFds). */
const live = new Set<number>();
let exitHookSet = false;

/**
 * A channel thread's descriptors, owned by the main thread: its socket and the eventfd that stops its
 * blocking calls (ECANCELED). abort() before terminating the thread: a thread blocked in poll() runs no
 * JavaScript, so Worker.terminate() alone would wait for the call to return; the process's exit joins
 * every thread, so those not yet closed are aborted then too.
 */
export class ChannelFds {
  readonly abortFd: number;
  private closed = false;

  constructor(readonly socketFd: number) {
    this.abortFd = native().eventfd(0, true);
    live.add(this.abortFd);
    if (!exitHookSet) {
      exitHookSet = true;
      process.once('exit', () => {
        for (const fd of live) native().eventfdWrite(fd, 1);
      });
    }
  }

  /** Wakes the thread out of any blocking call, for good: every call after this fails with ECANCELED. */
  abort(): void {
    if (!this.closed) native().eventfdWrite(this.abortFd, 1);
  }

  /** Resolves once `worker` (this channel's thread) has exited and both descriptors are closed. */
  closeOnExit(worker: Worker): Promise<void> {
    return new Promise((resolve) =>
      worker.once('exit', () => {
        this.close();
        resolve();
      }),
    );
  }

  /** After the thread exited: closes both descriptors. */
  private close(): void {
    if (this.closed) return;
    this.closed = true;
    live.delete(this.abortFd);
    native().close(this.socketFd);
    native().close(this.abortFd);
  }
}
