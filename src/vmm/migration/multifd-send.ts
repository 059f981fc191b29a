// The source's multifd channels (QEMU's multifd_send_setup, multifd_queue_page, multifd_send_sync_main):
// N extra TCP connections to the destination's migration address, each sent on by its own thread
// (multifd-worker.ts). The main thread takes pages from the dirty log, as without multifd, and hands
// BATCH packets of up to MULTIFD_PACKET_PAGES page offsets at a time to whichever channel has room; the
// channel sends the pages from guest memory. Packet numbers are global, in the order handed out.

import { lookup } from 'node:dns/promises';
import type { Worker } from 'node:worker_threads';
import { Errno } from '../../abi/errno.ts';
import { native } from '../../native/addon.ts';
import { MULTIFD_PACKET_PAGES } from '../../stream/multifd.ts';
import type { GuestMemory } from '../guest/guest-memory.ts';
import { MigrationError } from './errors.ts';
import { ChannelFds, type ChannelThreadPool, type FromSender, type ToSender } from './multifd-threads.ts';
import type { RamChannelsOut } from './ram-handler.ts';

/**
 * Packets handed to a channel at once (one message: 4 MiB of pages), so that the messages between the
 * threads are paid per 8 packets.
 */
const BATCH = 8;
/**
 * Packets handed to a channel and not yet written by it (two batches, 8 MiB): enough that the channel
 * always has the next batch waiting while the main thread hears of the last one (with one packet at a
 * time, 2 in flight left it idle between packets: 4 channels moved 15% less than with 8). A batch is page
 * offsets only: the channel copies the pages as it sends them.
 */
const IN_FLIGHT = 2 * BATCH;

export interface MultifdSendOptions {
  memory: GuestMemory;
  host: string;
  port: number;
  channels: number;
  uuid: Uint8Array;
  stallTimeoutMs: number;
  /** Where the channel threads come from (started ahead when the capability was set). */
  threads: ChannelThreadPool;
}

interface Channel {
  worker: Worker;
  fds: ChannelFds;
  inFlight: number;
  exited: Promise<void>;
}

export class MultifdSender implements RamChannelsOut {
  private readonly channels: Channel[] = [];
  private normal: number[] = [];
  private zero: number[] = [];
  private packetNum = 0;
  private next = 0;
  private error: MigrationError | null = null;
  private waiter: (() => void) | null = null;
  /** Packet bytes the channels wrote. */
  bytes = 0;

  private constructor() {}

  /** Opens every channel (connected, init packet written) or fails with the first channel's reason. */
  static async open(o: MultifdSendOptions): Promise<MultifdSender> {
    const s = new MultifdSender();
    let address: string;
    try {
      address = (await lookup(o.host)).address;
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      throw new MigrationError(Errno.EINVAL, `multifd: cannot resolve ${o.host}: ${e.message}`);
    }
    const connected: Promise<void>[] = [];
    try {
      for (let id = 0; id < o.channels; id++) {
        const up = s.startChannel(o, address, id);
        up.catch(() => {}); // seen through Promise.all below, or moot once an earlier channel failed to start
        connected.push(up);
      }
      await Promise.all(connected);
    } catch (err) {
      if (!(err instanceof MigrationError)) {
        // No socket or eventfd to be had (EMFILE, say): the channels started so far stop at once.
        const e = err as NodeJS.ErrnoException;
        s.fail(new MigrationError(errnoNamed(e.code ?? 'EIO'), `multifd: ${e.message}`));
      }
      await s.close();
      throw s.error ?? err;
    }
    return s;
  }

  /** Starts channel `id`'s thread on a socket of its own; resolves once it connected and sent its init packet. */
  private startChannel(o: MultifdSendOptions, address: string, id: number): Promise<void> {
    const socketFd = native().tcpSocket(address);
    let fds: ChannelFds;
    try {
      fds = new ChannelFds(socketFd);
    } catch (err) {
      native().close(socketFd);
      throw err;
    }
    const worker = o.threads.start({
      role: 'send',
      memory: o.memory.share(),
      address,
      port: o.port,
      socketFd: fds.socketFd,
      abortFd: fds.abortFd,
      uuid: o.uuid,
      id,
      stallTimeoutMs: o.stallTimeoutMs,
    });
    const ch: Channel = { worker, fds, inFlight: 0, exited: fds.closeOnExit(worker) };
    this.channels.push(ch);
    return new Promise<void>((resolve, reject) => {
      worker.on('message', (m: FromSender) => {
        if (m.type === 'connected') resolve();
        else if (m.type === 'sent') {
          ch.inFlight -= m.packets;
          this.bytes += m.bytes;
          this.wake();
        } else if (m.type === 'error') {
          this.fail(new MigrationError(errnoNamed(m.errno), m.message));
          reject(this.error);
        }
      });
      worker.on('error', (e) => {
        this.fail(new MigrationError(Errno.EIO, `multifd channel ${id}: thread failed: ${e.message}`));
        reject(this.error);
      });
      worker.on('exit', () => {
        this.fail(new MigrationError(Errno.EIO, `multifd channel ${id}: thread exited`));
        reject(this.error);
      });
    });
  }

  private fail(e: MigrationError): void {
    this.error ??= e;
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  /** A channel that can take `packets` more (round robin over those that can). */
  private async room(packets: number): Promise<Channel> {
    for (;;) {
      if (this.error) throw this.error;
      // Round robin over the channels with room (QEMU picks the next idle channel likewise).
      for (let k = 0; k < this.channels.length; k++) {
        const ch = this.channels[(this.next + k) % this.channels.length]!;
        if (ch.inFlight + packets <= IN_FLIGHT) {
          this.next = (this.next + k + 1) % this.channels.length;
          return ch;
        }
      }
      await new Promise<void>((r) => {
        this.waiter = r;
      });
    }
  }

  /** Packets the queued pages fill (at least one, for a SYNC packet with no pages). */
  private packetsQueued(): number {
    return Math.max(1, Math.ceil((this.normal.length + this.zero.length) / MULTIFD_PACKET_PAGES));
  }

  private post(ch: Channel, sync: boolean): void {
    const packets = this.packetsQueued();
    const normal = Float64Array.from(this.normal);
    const zero = Float64Array.from(this.zero);
    this.normal = [];
    this.zero = [];
    ch.inFlight += packets;
    const m: ToSender = { type: 'packets', normal, zero, packetNum: this.packetNum, packets, sync };
    this.packetNum += packets;
    ch.worker.postMessage(m, [normal.buffer, zero.buffer]);
  }

  queue(offset: number, zero: boolean): Promise<void> | undefined {
    if (this.error) return Promise.reject(this.error);
    (zero ? this.zero : this.normal).push(offset);
    if (this.normal.length + this.zero.length < BATCH * MULTIFD_PACKET_PAGES) return undefined;
    return this.room(BATCH).then((ch) => this.post(ch, false));
  }

  async sync(): Promise<void> {
    if (this.normal.length + this.zero.length > 0) this.post(await this.room(this.packetsQueued()), false);
    // A SYNC packet on every channel, behind whatever it still has to send.
    for (const ch of this.channels) {
      while (ch.inFlight + 1 > IN_FLIGHT) await this.idle();
      this.post(ch, true);
    }
    while (this.channels.some((c) => c.inFlight > 0)) await this.idle();
  }

  private async idle(): Promise<void> {
    if (this.error) throw this.error;
    await new Promise<void>((r) => {
      this.waiter = r;
    });
    if (this.error) throw this.error;
  }

  /** Ends every channel (after the migration: a clean close; on failure: at once). */
  async close(): Promise<void> {
    await Promise.all(
      this.channels.map(async (ch) => {
        const stop = () => {
          ch.fds.abort();
          void ch.worker.terminate();
        };
        if (!this.error) ch.worker.postMessage({ type: 'end' } satisfies ToSender);
        // A clean close waits (a safety net of 6 s: the channel itself waits 5) for the destination to
        // close its side behind the last packet.
        const t = setTimeout(stop, this.error ? 0 : 6000);
        ch.worker.on('message', (m: FromSender) => {
          if (m.type === 'closed') stop();
        });
        await ch.exited;
        clearTimeout(t);
      }),
    );
  }
}

export function errnoNamed(name: string): number {
  return name in Errno ? Errno[name as keyof typeof Errno] : Errno.ECONNRESET;
}
