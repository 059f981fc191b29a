// The destination's multifd channels (QEMU's multifd_recv_new_channel, multifd_recv_thread,
// multifd_recv_sync_main): the extra connections the source opens to the migration address, each
// received on by its own native thread (multifd-channel.ts) that writes pages straight into guest memory;
// this main thread checks every packet's header and offsets with the codec as the thread hands them over,
// and fails the load on the first one it refuses. The ordering rule: a channel that got its SYNC packet
// reads no further until the main stream's MULTIFD_FLUSH has come and every channel got its SYNC; only
// then are they all released into the next pass. At every flush the packets received over all channels
// must be every packet the source numbered up to the last SYNC (pages expected = received).

import { Errno } from '../../abi/errno.ts';
import { native } from '../../native/addon.ts';
import { StreamError } from '../../stream/errors.ts';
import {
  decodeMultifdHeader,
  decodeMultifdInit,
  MULTIFD_HEADER_BYTES,
  MULTIFD_INIT_BYTES,
  readMultifdOffsets,
} from '../../stream/multifd.ts';
import type { GuestMemory } from '../guest/guest-memory.ts';
import { MigrationError } from './errors.ts';
import { channelErrno, ioCounts, MultifdChannel, type MultifdIo, type MultifdIoCounts } from './multifd-channel.ts';
import { errnoNamed, RAM_BLOCK } from './multifd-send.ts';
import type { RamChannelsIn } from './ram-handler.ts';

export interface MultifdRecvOptions {
  memory: GuestMemory;
  channels: number;
  /** null: no uuid set here, any is taken (as QEMU without -uuid). */
  uuid: Uint8Array | null;
  maps: { received: Uint8Array; written: Uint8Array; fresh: boolean };
  /** How long a flush waits for channels (one that never connects, or sends nothing): a safety net. */
  stallTimeoutMs: number;
  /** How the channel threads move pages (default 'auto'). */
  io?: MultifdIo;
}

interface Channel {
  ch: MultifdChannel;
  /** From its init packet; -1 before. */
  id: number;
  /** Packets received, and the number of the last one. */
  packets: number;
  lastPacketNum: number;
  /** The SYNC it is waiting at, if any, and what lets it go on. */
  sync: { packetNum: number; packets: number } | null;
  release: (() => void) | null;
  /** Settles when its life (run) has ended. */
  done: Promise<void>;
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

  /** A connection that is not the main stream (its descriptor, now ours): a channel, with a thread of its own. */
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
    const c: Channel = {
      ch: null!,
      id: -1,
      packets: 0,
      lastPacketNum: -1,
      sync: null,
      release: null,
      done: Promise.resolve(),
    };
    try {
      c.ch = new MultifdChannel({
        socketFd,
        memory: this.o.memory,
        stallMs: -1,
        maps: this.o.maps,
        progress: this.progressCount,
        onPackets: (p) => this.checkPackets(c, p),
        io: this.o.io,
      });
    } catch (err) {
      native().close(socketFd);
      this.channelFailed(c, err);
      return;
    }
    this.channels.push(c);
    c.done = this.run(c);
  }

  /** A channel's life: its init packet, then passes of packets, each ended by a SYNC, until the source closes. */
  private async run(c: Channel): Promise<void> {
    try {
      const init = new Uint8Array(MULTIFD_INIT_BYTES);
      if ((await c.ch.readv([init])) < MULTIFD_INIT_BYTES)
        throw Object.assign(new Error('connection cut before the init packet'), { code: 'ECONNRESET' });
      const hello = decodeMultifdInit(init);
      const uuid = this.o.uuid;
      if (uuid && Buffer.compare(Buffer.from(hello.uuid), Buffer.from(uuid)) !== 0)
        throw Object.assign(
          new Error(`received uuid ${hex(hello.uuid)} and expected uuid ${hex(uuid)} for channel ${hello.id}`),
          { code: 'EINVAL' },
        );
      if (hello.id >= this.o.channels || this.channels.some((o) => o !== c && o.id === hello.id))
        this.fail(
          new MigrationError(
            Errno.EPROTO,
            `multifd: channel id ${hello.id} repeated or out of 0..${this.o.channels - 1}`,
          ),
        );
      c.id = hello.id;
      for (;;) {
        if ((await c.ch.recv()) < 0) {
          // Our FIN back: the source's channel waits for it to know every packet was taken.
          await c.ch.shutdown(1);
          return;
        }
        // A SYNC packet ended: held until the main thread has every channel's (multifd_recv_sync_main).
        const released = new Promise<void>((r) => (c.release = r));
        c.sync = { packetNum: c.lastPacketNum, packets: c.packets };
        this.wake();
        await released;
        c.release = null;
      }
    } catch (err) {
      if (channelErrno(err) === 'ECANCELED') return; // we stopped it: the reason is known already
      this.channelFailed(c, err);
    }
  }

  /**
   * Received packets' headers and offsets, back to back (their pages are in guest RAM already: a load
   * that fails here never runs the VM). Anything the codec refuses fails the load.
   */
  private checkPackets(c: Channel, packets: Buffer): void {
    if (this.error) return;
    try {
      for (let at = 0; at < packets.byteLength; ) {
        const h = decodeMultifdHeader(packets, at);
        const n = h.normalPages + h.zeroPages;
        if (h.ramblock !== RAM_BLOCK && n > 0)
          throw new Error(`packet names RAM block "${h.ramblock}", this VM has "${RAM_BLOCK}"`);
        const offsets = at + MULTIFD_HEADER_BYTES;
        at = offsets + 8 * n;
        if (n > 0) readMultifdOffsets(packets, offsets, h, this.o.memory.size);
        c.packets++;
        c.lastPacketNum = h.packetNum;
      }
    } catch (err) {
      this.channelFailed(c, err);
      c.ch.abort();
    }
  }

  /** A channel failed: the load fails with its reason (what the codec refuses is EPROTO: the source broke the protocol). */
  private channelFailed(c: Channel, err: unknown): void {
    const e = err as Error & { code?: unknown };
    const errno = e instanceof StreamError ? 'EPROTO' : channelErrno(err);
    const message = e.message.replace(/^migration stream: /, '');
    this.fail(
      new MigrationError(
        errnoNamed(errno),
        `multifd channel ${c.id < 0 ? '(before its init packet)' : c.id}: ${message}`,
      ),
    );
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
      c.release?.();
    }
  }

  /** Moves while any channel receives (see IncomingOptions.progress). */
  progress(): number {
    return Atomics.load(this.progressCount, 0);
  }

  /** Packets whose pages the channels moved so far, each way (MultifdIo). */
  get ioCounts(): MultifdIoCounts {
    return ioCounts(this.channels.map((c) => c.ch));
  }

  async finish(): Promise<void> {
    if (this.error) throw this.error;
    if (this.flushes === 0)
      throw new MigrationError(Errno.EPROTO, 'multifd: the stream ended without a single channel flush');
  }

  /**
   * Stops every channel thread (their connections close with them); with no lingering, resolves once
   * every channel's thread and life have ended. After a failed load (`lingerMs` > 0)
   * the source must hear why on the main stream first: a channel closed with unread data would reset,
   * and the source would report that reset instead. So each channel then drains (our side ended, its
   * bytes discarded) until the source closes it or `lingerMs` pass, in the background.
   */
  async close(lingerMs = 0): Promise<void> {
    // Every channel's blocking read ends now (ECANCELED); a draining one then reads without it. One held
    // at its SYNC (a load that failed before the flush let it go) is let go, to meet the same end.
    for (const c of this.channels) {
      c.ch.abort();
      c.release?.();
    }
    if (lingerMs <= 0) {
      await Promise.all(this.channels.map((c) => c.ch.close()));
      await Promise.all(this.channels.map((c) => c.done));
      return;
    }
    for (const c of this.channels) {
      void c.ch.shutdown(1).catch(() => {});
      void c.ch.discard(lingerMs, false).catch(() => {});
      c.ch.unref();
      void c.ch.close();
    }
  }
}

function hex(u: Uint8Array): string {
  return Buffer.from(u).toString('hex');
}
