// The destination's multifd channels (QEMU's multifd_recv_new_channel, multifd_recv_sync_main): the
// extra connections the source opens to the migration address, each received on by its own thread
// (multifd-worker.ts) that writes pages straight into guest memory. The ordering rule: a channel that
// got its SYNC packet waits until the main stream's MULTIFD_FLUSH has come and every channel got its
// SYNC; only then are they all released into the next pass. At every flush the packets received over all
// channels must be every packet the source numbered up to the last SYNC (pages expected = received).

import type { Worker } from 'node:worker_threads';
import { Errno } from '../../abi/errno.ts';
import { native } from '../../native/addon.ts';
import type { GuestMemory } from '../guest/guest-memory.ts';
import { MigrationError } from './errors.ts';
import { errnoNamed } from './multifd-send.ts';
import { ChannelFds, type ChannelThreadPool, type FromReceiver, type ToReceiver } from './multifd-threads.ts';
import type { RamChannelsIn } from './ram-handler.ts';

export interface MultifdRecvOptions {
  memory: GuestMemory;
  channels: number;
  /** null: no uuid set here, any is taken (as QEMU without -uuid). */
  uuid: Uint8Array | null;
  maps: { received: Uint8Array; written: Uint8Array; fresh: boolean };
  /** How long a flush waits for channels (one that never connects, or sends nothing): a safety net. */
  stallTimeoutMs: number;
  /** Where the channel threads come from (started ahead when the capability was set). */
  threads: ChannelThreadPool;
}

interface Channel {
  worker: Worker;
  fds: ChannelFds;
  id: number;
  /** The SYNC it is waiting at, if any. */
  sync: { packetNum: number; packets: number } | null;
  exited: Promise<void>;
}

export class MultifdReceiver implements RamChannelsIn {
  private readonly channels: Channel[] = [];
  private error: MigrationError | null = null;
  private waiter: (() => void) | null = null;
  private flushes = 0;
  private readonly progressCount = new Int32Array(new SharedArrayBuffer(4));
  /** Rejects when a channel fails: the load (waiting on the main stream) races it. */
  readonly failed: Promise<never>;
  private rejectFailed!: (e: MigrationError) => void;

  constructor(private readonly o: MultifdRecvOptions) {
    this.failed = new Promise<never>((_, reject) => {
      this.rejectFailed = reject;
    });
    this.failed.catch(() => {});
  }

  /** A connection that is not the main stream (its descriptor, now ours): a channel, handed to its own thread. */
  adopt(socketFd: number): void {
    if (this.error) {
      native().close(socketFd);
      return;
    }
    if (this.channels.length >= this.o.channels) {
      native().close(socketFd);
      this.fail(
        new MigrationError(Errno.EPROTO, `multifd: more than the ${this.o.channels} channels set here connected`),
      );
      return;
    }
    const m = this.o.memory;
    const fds = new ChannelFds(socketFd);
    const worker = this.o.threads.start({
      role: 'recv',
      memory: m.share(),
      socketFd,
      abortFd: fds.abortFd,
      uuid: this.o.uuid,
      received: this.o.maps.received,
      written: this.o.maps.written,
      fresh: this.o.maps.fresh,
      progress: this.progressCount,
    });
    const ch: Channel = {
      worker,
      fds,
      id: -1,
      sync: null,
      exited: fds.closeOnExit(worker),
    };
    this.channels.push(ch);
    worker.on('message', (msg: FromReceiver) => {
      if (msg.type === 'ready') return;
      if (msg.type === 'hello') {
        if (msg.id >= this.o.channels || this.channels.some((c) => c !== ch && c.id === msg.id))
          this.fail(
            new MigrationError(
              Errno.EPROTO,
              `multifd: channel id ${msg.id} repeated or out of 0..${this.o.channels - 1}`,
            ),
          );
        ch.id = msg.id;
      } else if (msg.type === 'sync') ch.sync = { packetNum: msg.packetNum, packets: msg.packets };
      else if (msg.type === 'error') this.fail(new MigrationError(errnoNamed(msg.errno), msg.message));
      this.wake();
    });
    worker.on('error', (e) => this.fail(new MigrationError(Errno.EIO, `multifd channel thread failed: ${e.message}`)));
  }

  private fail(e: MigrationError): void {
    if (this.error) return;
    this.error = e;
    this.rejectFailed(e);
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  async flush(): Promise<void> {
    const deadline = performance.now() + this.o.stallTimeoutMs;
    for (;;) {
      if (this.error) throw this.error;
      if (this.channels.length === this.o.channels && this.channels.every((c) => c.sync)) break;
      const left = deadline - performance.now();
      if (left <= 0) {
        const missing = this.o.channels - this.channels.length;
        throw new MigrationError(
          Errno.ETIMEDOUT,
          missing > 0
            ? `multifd: ${missing} of ${this.o.channels} channels never connected within ${this.o.stallTimeoutMs} ms`
            : `multifd: no SYNC on channel(s) ${this.channels
                .filter((c) => !c.sync)
                .map((c) => c.id)
                .join(', ')} within ${this.o.stallTimeoutMs} ms`,
        );
      }
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiter = () => {
          clearTimeout(t);
          r();
        };
      });
    }
    // Every packet numbered up to the last SYNC was sent before it on some channel (the source numbers
    // them in the order it hands them out, and syncs only once all were written): all must be here.
    const expected = Math.max(...this.channels.map((c) => c.sync!.packetNum)) + 1;
    const received = this.channels.reduce((n, c) => n + c.sync!.packets, 0);
    if (received !== expected)
      throw new MigrationError(
        Errno.EPROTO,
        `multifd: ${received} packets received by flush ${this.flushes + 1}, the source sent ${expected}`,
      );
    this.flushes++;
    for (const c of this.channels) {
      c.sync = null;
      c.worker.postMessage({ type: 'release' } satisfies ToReceiver);
    }
  }

  /** Moves while any channel receives (see IncomingOptions.progress). */
  progress(): number {
    return Atomics.load(this.progressCount, 0);
  }

  async finish(): Promise<void> {
    if (this.error) throw this.error;
    if (this.flushes === 0)
      throw new MigrationError(Errno.EPROTO, 'multifd: the stream ended without a single channel flush');
  }

  /**
   * Stops every channel thread (their connections close with them). After a failed load (`lingerMs` > 0)
   * the source must hear why on the main stream first: a channel closed with unread data would reset,
   * and the source would report that reset instead. So each channel then drains (our side ended, its
   * bytes discarded) until the source closes it or `lingerMs` pass, in the background.
   */
  async close(lingerMs = 0): Promise<void> {
    // Every channel's blocking read ends now (ECANCELED); a draining one then reads without it.
    for (const c of this.channels) c.fds.abort();
    if (lingerMs <= 0) {
      for (const c of this.channels) void c.worker.terminate();
      await Promise.all(this.channels.map((c) => c.exited));
      return;
    }
    for (const c of this.channels) {
      const end = () => void c.worker.terminate();
      const t = setTimeout(end, lingerMs + 1000);
      t.unref();
      c.worker.on('message', (m: FromReceiver) => {
        if (m.type === 'drained') end();
      });
      void c.exited.then(() => clearTimeout(t));
      c.worker.unref();
      c.worker.postMessage({ type: 'drain', ms: lingerMs } satisfies ToReceiver);
    }
  }
}
