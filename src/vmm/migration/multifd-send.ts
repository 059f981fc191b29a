// The source's multifd channels (QEMU's multifd_send_setup, multifd_queue_page, multifd_send_sync_main):
// N extra TCP connections to the destination's migration address, each sent on by its own native thread
// (multifd-channel.ts). The RAM saver fills a batch's page lists from the dirty log (a PageQueue, with
// GuestMemory.takeDirtyPages: one native call per batch, not JavaScript per page); a batch goes as up to
// BATCH packets, their headers encoded here, with the page offsets, to whichever channel has room; the
// channel's thread writes the pages out of guest memory (staged or direct: MultifdIo). Packet numbers
// are global, in the order handed out.

import { lookup } from 'node:dns/promises';
import { Errno } from '../../abi/errno.ts';
import { native } from '../../native/addon.ts';
import { TARGET_PAGE_SIZE } from '../../stream/constants.ts';
import {
  encodeMultifdInit,
  MULTIFD_FLAG_SYNC,
  MULTIFD_HEADER_BYTES,
  MULTIFD_PACKET_PAGES,
  writeMultifdHeader,
} from '../../stream/multifd.ts';
import { DIRTY_WORD_PAGES } from '../guest/dirty-bitmap.ts';
import type { GuestMemory, PageQueue } from '../guest/guest-memory.ts';
import { MigrationError } from './errors.ts';
import { channelErrno, ioCounts, MultifdChannel, type MultifdIo, type MultifdIoCounts } from './multifd-channel.ts';
import type { RamChannelsOut } from './ram-handler.ts';

/** The one RAM block a packet names (QEMU's "pc.ram"). */
export const RAM_BLOCK = 'pc.ram';
/** How long a sending channel that ended waits for the destination to close its side. */
const CLOSE_WAIT_MS = 5000;

/** Packets handed to a channel at once (4 MiB of pages): one operation, one completion per 8 packets. */
const BATCH = 8;
/**
 * Packets handed to a channel and not yet written by it (two batches, 8 MiB): enough that the channel
 * always has the next batch waiting while the main thread hears of the last one (with one packet at a
 * time, 2 in flight left it idle between packets: 4 channels moved 15% less than with 8). A batch is page
 * offsets only: the channel copies the pages as it sends them.
 */
const IN_FLIGHT = 2 * BATCH;
/**
 * The most of a channel's data its socket holds unsent (TCP_NOTSENT_LOWAT): one packet's pages. With
 * Linux's default a channel kept up to 4 MiB queued in its socket; where the two VMMs share a host's
 * cores (loopback), each byte then waited that long between the sender's copy and the receiver's, so
 * the receiver copied it from memory rather than cache, and 4 channels paid more CPU per byte than 2
 * (QEMU's channels, handed one packet at a time, hold about this much). In-flight bytes are not
 * limited by it: a long link still fills.
 */
const NOTSENT_LOWAT = MULTIFD_PACKET_PAGES * TARGET_PAGE_SIZE;
/** Pages a batch holds at most. */
const BATCH_PAGES = BATCH * MULTIFD_PACKET_PAGES;
/**
 * A batch goes to a channel once it has room for fewer pages than a dirty-log word's: the saver queues
 * whole words (takeDirtyPages takes none into less room), so a batch's last packet may be a little short
 * of MULTIFD_PACKET_PAGES.
 */
const MIN_ROOM = DIRTY_WORD_PAGES;

export interface MultifdSendOptions {
  memory: GuestMemory;
  host: string;
  port: number;
  channels: number;
  uuid: Uint8Array;
  stallTimeoutMs: number;
  /** How the channel threads move pages (default 'auto'). */
  io?: MultifdIo;
}

/**
 * A batch: its queued pages (a PageQueue), then its packets' headers, lengths and normal-page counts. Kept
 * until its channel wrote it, then reused: a fresh set per batch cost the source's main thread page
 * faults for each (about 5% of its CPU in a 1 GiB migration).
 */
interface Batch extends PageQueue {
  heads: Uint8Array;
  headLens: Uint32Array;
  packetPages: Uint32Array;
}

function newBatch(): Batch {
  return {
    normal: new Float64Array(BATCH_PAGES),
    zero: new Float64Array(BATCH_PAGES),
    queued: new Uint32Array(2),
    capacity: BATCH_PAGES,
    heads: new Uint8Array(BATCH * MULTIFD_HEADER_BYTES + 8 * BATCH_PAGES),
    headLens: new Uint32Array(BATCH),
    packetPages: new Uint32Array(BATCH),
  };
}

interface Channel {
  id: number;
  ch: MultifdChannel;
  inFlight: number;
}

export class MultifdSender implements RamChannelsOut {
  private readonly channels: Channel[] = [];
  /** The batch being filled. */
  private filling = newBatch();
  /** Batches their channels finished with. */
  private readonly spare: Batch[] = [];
  private packetNum = 0;
  private next = 0;
  private error: MigrationError | null = null;
  private waiter: (() => void) | null = null;
  private closing: Promise<void> | null = null;
  /** Packet bytes the channels wrote. */
  bytes = 0;

  private constructor(private readonly stallTimeoutMs: number) {}

  /** Opens every channel (connected, init packet written) or fails with the first channel's reason. */
  static async open(o: MultifdSendOptions): Promise<MultifdSender> {
    const s = new MultifdSender(o.stallTimeoutMs);
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
  private async startChannel(o: MultifdSendOptions, address: string, id: number): Promise<void> {
    const socketFd = native().tcpSocket(address);
    let ch: MultifdChannel;
    try {
      native().setNotsentLowat(socketFd, NOTSENT_LOWAT);
      ch = new MultifdChannel({ socketFd, memory: o.memory, stallMs: o.stallTimeoutMs, io: o.io });
    } catch (err) {
      native().close(socketFd);
      throw err;
    }
    this.channels.push({ id, ch, inFlight: 0 });
    try {
      await ch.connect(address, o.port, o.stallTimeoutMs);
      await ch.writev([encodeMultifdInit({ uuid: o.uuid, id })]);
    } catch (err) {
      throw this.channelFailed(id, err);
    }
  }

  /** Channel `id`'s operation failed: the migration fails with its reason (the first one heard). */
  private channelFailed(id: number, err: unknown): MigrationError {
    const errno = channelErrno(err);
    const message =
      errno === 'ETIMEDOUT' ? `no progress for ${this.stallTimeoutMs} ms: stalled link` : (err as Error).message;
    this.fail(new MigrationError(errnoNamed(errno), `multifd channel ${id}: ${message}`));
    return this.error!;
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

  /** A channel that can take `packets` more now (round robin over those that can), or null. */
  private roomNow(packets: number): Channel | null {
    // Round robin over the channels with room (QEMU picks the next idle channel likewise).
    for (let k = 0; k < this.channels.length; k++) {
      const ch = this.channels[(this.next + k) % this.channels.length]!;
      if (ch.inFlight + packets <= IN_FLIGHT) {
        this.next = (this.next + k + 1) % this.channels.length;
        return ch;
      }
    }
    return null;
  }

  /** A channel that can take `packets` more, once one can. */
  private async room(packets: number): Promise<Channel> {
    for (;;) {
      if (this.error) throw this.error;
      const ch = this.roomNow(packets);
      if (ch) return ch;
      await new Promise<void>((r) => {
        this.waiter = r;
      });
    }
  }

  /** Packets the filling batch's pages fill (at least one, for a SYNC packet with no pages). */
  private packetsQueued(): number {
    const q = this.filling.queued;
    return Math.max(1, Math.ceil((q[0]! + q[1]!) / MULTIFD_PACKET_PAGES));
  }

  /**
   * Hands the filling batch to `c` as packets: their headers encoded here, MULTIFD_PACKET_PAGES pages each
   * (normal pages first, then zero pages; the last packet takes the rest), the last one with SYNC if
   * `sync` (with no pages: one empty SYNC packet).
   */
  private post(c: Channel, sync: boolean): void {
    const packets = this.packetsQueued();
    // The channel reads the batch's arrays until its operation completes: the next batch gets others.
    const batch = this.filling;
    const normal = batch.normal.subarray(0, batch.queued[0]);
    const zero = batch.zero.subarray(0, batch.queued[1]);
    this.filling = this.spare.pop() ?? newBatch();
    this.filling.queued.fill(0);
    const all = normal.length + zero.length;
    const heads = batch.heads.subarray(0, packets * MULTIFD_HEADER_BYTES + 8 * all);
    const headLens = batch.headLens.subarray(0, packets);
    const packetPages = batch.packetPages.subarray(0, packets);
    for (let k = 0, taken = 0, at = 0; k < packets; k++) {
      const end = k === packets - 1 ? all : taken + MULTIFD_PACKET_PAGES;
      const n = normal.subarray(Math.min(taken, normal.length), Math.min(end, normal.length));
      const z = zero.subarray(Math.max(0, taken - normal.length), Math.max(0, end - normal.length));
      const flags = sync && k === packets - 1 ? MULTIFD_FLAG_SYNC : 0;
      const packetNum = this.packetNum + k;
      headLens[k] = writeMultifdHeader(
        heads.subarray(at),
        { flags, pagesAlloc: MULTIFD_PACKET_PAGES, packetNum, ramblock: RAM_BLOCK },
        n,
        z,
      );
      packetPages[k] = n.length;
      at += headLens[k]!;
      taken = end;
    }
    c.inFlight += packets;
    this.packetNum += packets;
    c.ch.sendPackets(heads, headLens, normal, packetPages).then(
      (bytes) => {
        c.inFlight -= packets;
        this.bytes += bytes;
        this.spare.push(batch);
        this.wake();
      },
      (err) => this.channelFailed(c.id, err),
    );
  }

  queue(): PageQueue | Promise<PageQueue> {
    if (this.error) return Promise.reject(this.error);
    const q = this.filling.queued;
    if (BATCH_PAGES - q[0]! - q[1]! >= MIN_ROOM) return this.filling;
    // Full: to a channel with room now, or once one has it.
    const ch = this.roomNow(BATCH);
    if (ch) {
      this.post(ch, false);
      return this.filling;
    }
    return this.room(BATCH).then((c) => {
      this.post(c, false);
      return this.filling;
    });
  }

  async sync(): Promise<void> {
    const q = this.filling.queued;
    if (q[0]! + q[1]! > 0) this.post(await this.room(this.packetsQueued()), false);
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

  /** Packets whose pages the channels moved so far, each way (MultifdIo). */
  get ioCounts(): MultifdIoCounts {
    return ioCounts(this.channels.map((c) => c.ch));
  }

  /** Ends every channel (after the migration: a clean close; on failure: at once); the same promise each call. */
  close(): Promise<void> {
    this.closing ??= this.closeChannels();
    return this.closing;
  }

  private async closeChannels(): Promise<void> {
    await Promise.all(
      this.channels.map(async (c) => {
        if (this.error) c.ch.abort();
        else {
          // Our FIN behind the last packet; then the destination closes its side once it has read them
          // all. Closing anyway if it does not: every packet was written, and the main stream says whether
          // the load succeeded.
          await c.ch.shutdown(1).catch(() => {});
          await c.ch.discard(CLOSE_WAIT_MS, true).catch(() => {});
        }
        await c.ch.close();
      }),
    );
  }
}

export function errnoNamed(name: string): number {
  return name in Errno ? Errno[name as keyof typeof Errno] : Errno.ECONNRESET;
}
