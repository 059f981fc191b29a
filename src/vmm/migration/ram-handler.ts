// Guest RAM in the stream (idstr `ram`, instance 0, version 4, one RAMBlock `pc.ram`). The setup marks
// every page dirty, so the first pass is the bulk copy; each later pass sends the pages dirtied since (by
// vCPUs, or by device DMA merged in at log sync). Pages are taken from the dirty log a 32-page word at a
// time with an atomic exchange, so a page written concurrently is either in this copy or marked again.
// Zero pages go as a flag and a fill byte: the source finds them with a native scan per dirty-log word
// (never-written pages by the memfd's holes, the rest by a block scan; with multifd, a batch of words per
// call: GuestMemory.takeDirtyPages); the destination skips a zero page it never wrote when its memory is
// fresh (a memfd reads as zeroes until written, so a mostly-zero guest costs the destination neither
// writes nor memory: QEMU's ram_handle_zero() likewise leaves a page alone when buffer_is_zero() says it
// already is). Sections are bounded (SECTION_PAYLOAD), so neither side holds more than a few MiB of RAM
// in flight.
//
// Pipelined: page copies are staged in a ring of STAGING_BUFFERS section buffers, and a section is not
// awaited when it is handed to the transport: the next one is built while the earlier ones are on their
// way, and a buffer is refilled only once the transport took its bytes. Waiting for each section before
// building the next left both processes idle half of the time (the source waiting for the socket, the
// destination for data).

import { Errno } from '../../abi/errno.ts';
import { popcount32 } from '../../bits.ts';
import { hugeBuffer } from '../../native/huge-buffer.ts';
import { RAM_RECORD_HEAD_BYTES } from '../../stream/constants.ts';
import { decodeRamPayload, RamPageScan, RamPayloadBuilder, RamPayloadWriter, scanRamPages } from '../../stream/ram.ts';
import type { GuestDirtyBitmap } from '../guest/dirty-bitmap.ts';
import type { GuestMemory, PageQueue } from '../guest/guest-memory.ts';
import { MigrationError } from './errors.ts';
import type { MigrationHandler, SectionKind, SectionWriter } from './handler.ts';

export const RAM_BLOCK = 'pc.ram';
const BLOCK_NAME = new TextEncoder().encode(RAM_BLOCK);
const PAGE = 4096;
/** Payload bytes per PART section (page records with their contents, and zero-page records). */
export const SECTION_PAYLOAD = 4 << 20;
/** A page record after the first of its block: its header (offset | flags, CONTINUE), then the page. */
const RECORD_STRIDE = RAM_RECORD_HEAD_BYTES + PAGE;
/** Section buffers in the staging ring: at most this many sections' pages in flight (16 MiB). */
export const STAGING_BUFFERS = 4;

export interface RamStats {
  /** pages sent with their contents */
  normal: number;
  /** pages sent as zero pages */
  duplicate: number;
  /** bytes of RAM payload sent */
  transferred: number;
  /** completed passes over the dirty log */
  passes: number;
}

/**
 * Source: multifd channels RAM pages go on instead of the main stream (multifd-send.ts). Pages are queued
 * by offset (GuestMemory.takeDirtyPages fills the queue); the channels copy them out of guest memory
 * themselves.
 */
export interface RamChannelsOut {
  /**
   * The queue the next pages go into, with room for at least a dirty-log word (32 pages); a promise when
   * a full batch first had to wait for a channel with room.
   */
  queue(): PageQueue | Promise<PageQueue>;
  /** Pass end: every channel sends what it has, then a SYNC packet; resolves once all are out. */
  sync(): Promise<void>;
}

/** Destination: the channels' receive side (multifd-recv.ts). */
export interface RamChannelsIn {
  /** MULTIFD_FLUSH seen in the main stream: waits for every channel's SYNC, checks the count, releases them. */
  flush(): Promise<void>;
  /** End of the stream: every packet sent was received and applied (throws if not). */
  finish(): Promise<void>;
}

/** The number of consecutive one bits from bit 0 of a u32 (32 when all are set). */
function runLength(bits: number): number {
  const clear = ~bits;
  return clear === 0 ? 32 : 31 - Math.clz32(clear & -clear);
}

export class RamHandler implements MigrationHandler {
  readonly idstr = 'ram';
  readonly instanceId = 0;
  readonly versionId = 4;
  readonly stats: RamStats = { normal: 0, duplicate: 0, transferred: 0, passes: 0 };
  private readonly staging: RamPayloadWriter[] = [];
  /** Per staging buffer: the transport's promise for the section built in it, until awaited. */
  private readonly inFlight: (Promise<void> | null)[] = [];
  private current = 0;
  private cursor = 0;
  /** Words scanned in the current pass, over however many budget-limited calls it takes. */
  private passScanned = 0;
  private passFound = false;
  /** Destination: which pages arrived at least once. */
  private received: Uint8Array | null = null;
  private receivedCount = 0;
  private readonly scan = new RamPageScan();
  /**
   * Destination: whether the memory reads as zero wherever this handler never wrote, and per page
   * whether it wrote there (with data or a non-zero fill), across every load (a retried load included).
   */
  private readonly fresh: boolean;
  private written: Uint8Array | null = null;

  /** Destination: the maps multifd channels share (valid after loadSetup), and whether memory was fresh. */
  get sharedMaps(): { received: Uint8Array; written: Uint8Array; fresh: boolean } {
    this.received ??= new Uint8Array(new SharedArrayBuffer(this.memory.pages));
    this.written ??= new Uint8Array(new SharedArrayBuffer(this.memory.pages));
    return { received: this.received, written: this.written, fresh: this.fresh };
  }
  private readonly decodeCtx = { block: null as string | null, blocks: new Map<string, number>() };
  /** Multifd, set by the migration controller for one migration (null: RAM goes on the main stream). */
  channelsOut: RamChannelsOut | null = null;
  channelsIn: RamChannelsIn | null = null;

  constructor(
    private readonly memory: GuestMemory,
    private readonly dirty: GuestDirtyBitmap,
    options: { freshMemory?: boolean } = {},
  ) {
    this.fresh = options.freshMemory ?? false;
  }

  async saveSetup(): Promise<Uint8Array[]> {
    this.dirty.setAll();
    this.cursor = 0;
    this.passScanned = 0;
    this.passFound = false;
    this.stats.normal = this.stats.duplicate = this.stats.transferred = this.stats.passes = 0;
    this.inFlight.fill(null);
    const b = new RamPayloadBuilder();
    b.memSize(this.memory.size, [{ name: RAM_BLOCK, usedLength: this.memory.size }]);
    b.eos();
    return b.take().pieces;
  }

  async pendingBytes(): Promise<number> {
    return this.dirty.count() * PAGE;
  }

  /** True once a whole pass over the dirty log is done (the engine then re-checks convergence). */
  async saveIterate(out: SectionWriter, budget: number): Promise<boolean> {
    return (await this.sendDirty(out, budget)).passDone;
  }

  async saveComplete(out: SectionWriter): Promise<Uint8Array[]> {
    // The VM is stopped, so nothing dirties pages any more: this ends with a pass that finds nothing.
    for (;;) {
      const r = await this.sendDirty(out, Number.POSITIVE_INFINITY);
      if (r.passDone && !r.foundAny) break;
    }
    await this.drain();
    const b = new RamPayloadBuilder();
    b.eos();
    return b.take().pieces;
  }

  /**
   * Sends dirty pages from the cursor on, in sections of at most SECTION_PAYLOAD, until `budget` bytes
   * went out or the current pass (one scan of the whole log, over as many calls as it takes) is done.
   */
  private async sendDirty(out: SectionWriter, budget: number): Promise<{ passDone: boolean; foundAny: boolean }> {
    if (this.channelsOut) await this.queueDirty(this.channelsOut, budget);
    else await this.writeDirty(out, budget);
    if (this.passScanned < this.dirty.wordCount) return { passDone: false, foundAny: true };
    if (this.channelsOut) await this.multifdSync(out);
    const foundAny = this.passFound;
    this.passScanned = 0;
    this.passFound = false;
    return { passDone: true, foundAny };
  }

  /**
   * The dirty-log word at the cursor, the cursor moved past it: its index, or -1 once this pass has
   * scanned every word. Its bits are taken with takeBits.
   */
  private nextWord(): number {
    if (this.passScanned >= this.dirty.wordCount) return -1;
    const word = this.cursor;
    this.advance(1);
    return word;
  }

  /** Moves the cursor past `words` words of the current pass (wrapping at the end of the log). */
  private advance(words: number): void {
    this.cursor = (this.cursor + words) % this.dirty.wordCount;
    this.passScanned += words;
    if (words > 0 && this.cursor === 0) this.stats.passes++;
  }

  /** A word's dirty bits, taken from the log (cleared there). */
  private takeBits(word: number): number {
    const bits = this.dirty.takeWord(word);
    if (bits === 0) return 0;
    this.passFound = true;
    const first = word * 32;
    // Bits past the end of RAM (a last partial word) name no page.
    return first + 32 > this.memory.pages ? bits & ((1 << (this.memory.pages - first)) - 1) : bits;
  }

  // The two ways pages go out are two small loops, not branches of one: V8 optimizes whatever runs hot,
  // and compiling one large function cost each migration tens of milliseconds of a core (2 cores here).

  /** Multifd: queues dirty pages on the channels, by the bytes they will take, until `budget`. */
  private async queueDirty(channels: RamChannelsOut, budget: number): Promise<void> {
    const words = this.dirty.wordCount;
    for (let sent = 0; sent < budget && this.passScanned < words; ) {
      const next = channels.queue();
      const q = next instanceof Promise ? await next : next;
      const normal = q.queued[0]!;
      const zero = q.queued[1]!;
      // A batch's worth of words in one native call, zero pages found as they are taken (QEMU:
      // buffer_is_zero() per page in save_zero_page()); up to the log's end, where the cursor wraps.
      const budgetPages = Math.ceil((budget - sent) / (PAGE + 8));
      const n = Math.min(words - this.cursor, words - this.passScanned);
      this.advance(this.memory.takeDirtyPages(this.dirty.words, this.cursor, n, q, budgetPages));
      const normalTaken = q.queued[0]! - normal;
      const zeroTaken = q.queued[1]! - zero;
      if (normalTaken + zeroTaken > 0) this.passFound = true;
      sent += this.countQueued(normalTaken, zeroTaken);
    }
  }

  /** The main stream: copies dirty pages into sections, sent as each fills, until `budget` bytes went. */
  private async writeDirty(out: SectionWriter, budget: number): Promise<void> {
    let sent = 0;
    let w = await this.writer();
    const flush = async () => {
      if (w.isEmpty) return;
      const { payload, crc } = w.take();
      this.send(out, [payload], crc);
      this.stats.transferred += payload.byteLength;
      sent += payload.byteLength;
      this.current = (this.current + 1) % STAGING_BUFFERS;
      w = await this.writer();
    };
    while (sent < budget) {
      const word = this.nextWord();
      if (word < 0) break;
      let bits = this.takeBits(word);
      if (bits === 0) continue;
      const first = word * 32;
      const zeros = this.memory.zeroPageMask(first, bits);
      const data = bits & ~zeros;
      while (bits !== 0) {
        const low = bits & -bits;
        const bit = 31 - Math.clz32(low);
        const page = first + bit;
        if ((zeros & low) !== 0) {
          bits &= bits - 1;
          if (!w.zero(RAM_BLOCK, page * PAGE)) {
            await flush();
            w.zero(RAM_BLOCK, page * PAGE);
          }
          this.stats.duplicate++;
          continue;
        }
        // The run of dirty non-zero pages from here, in page order as the bits go. Copied into the
        // section, so the checksum covers exactly the bytes that go out even if a vCPU writes a page
        // again meanwhile (it then marks the page dirty again and it is sent again).
        const run = runLength(data >>> bit);
        bits = run + bit >= 32 ? 0 : bits & ~(((1 << run) - 1) << bit);
        for (let done = 0; done < run; ) {
          const n = w.pages(RAM_BLOCK, (page + done) * PAGE, this.memory.pageRun(page + done, run - done));
          if (n === 0) await flush();
          done += n;
        }
        this.stats.normal += run;
      }
    }
    await flush();
  }

  /** Multifd: counts pages queued on the channels; returns the bytes they will take. */
  private countQueued(normal: number, zero: number): number {
    this.stats.duplicate += zero;
    this.stats.normal += normal;
    // An offset per page, and the page itself unless it is zero.
    const bytes = 8 * (normal + zero) + PAGE * normal;
    this.stats.transferred += bytes;
    return bytes;
  }

  /**
   * Multifd pass end (QEMU's multifd_send_sync_main, then RAM_SAVE_FLAG_MULTIFD_FLUSH): every channel's
   * pages and SYNC are out before the flush goes in the main stream, so the destination applies no page
   * of the next pass before every page of this one.
   */
  private async multifdSync(out: SectionWriter): Promise<void> {
    await this.channelsOut!.sync();
    const b = new RamPayloadBuilder();
    b.multifdFlush();
    b.eos();
    await out.part(b.take().pieces);
  }

  /** Hands a section to the transport without waiting for it; its buffer is reused only once it was taken. */
  private send(out: SectionWriter, pieces: Uint8Array[], payloadCrc: number): void {
    const p = out.part(pieces, payloadCrc);
    // Marked handled now (a failed write must not crash the process as unhandled); awaited before reuse.
    p.catch(() => {});
    this.inFlight[this.current] = p;
  }

  /** The current staging writer, once the section last built in its buffer has been taken by the transport. */
  private async writer(): Promise<RamPayloadWriter> {
    const i = this.current;
    const p = this.inFlight[i];
    if (p) {
      this.inFlight[i] = null;
      await p;
    }
    // In huge pages: the ring's first touch is inside the migration (src/native/huge-buffer.ts).
    this.staging[i] ??= new RamPayloadWriter(hugeBuffer(SECTION_PAYLOAD));
    return this.staging[i]!;
  }

  /** Waits until every section handed to the transport was taken (rethrows a failed write). */
  private async drain(): Promise<void> {
    for (let i = 0; i < STAGING_BUFFERS; i++) {
      const p = this.inFlight[i];
      this.inFlight[i] = null;
      if (p) await p;
    }
  }

  async loadSetup(): Promise<void> {
    // Shared memory: multifd channel threads mark what they receive and write in the same maps.
    // Cleared, not replaced: multifd channel threads may hold it already (sharedMaps).
    this.received ??= new Uint8Array(new SharedArrayBuffer(this.memory.pages));
    this.received.fill(0);
    this.receivedCount = 0;
    this.written ??= new Uint8Array(new SharedArrayBuffer(this.memory.pages));
    this.decodeCtx.block = null;
    this.decodeCtx.blocks = new Map([[RAM_BLOCK, this.memory.size]]);
  }

  async loadSection(kind: SectionKind, payload: Uint8Array): Promise<void> {
    // The common case (pages and zero pages of pc.ram) without an object per record; anything else, and
    // every error, through the full decoder.
    if (scanRamPages(payload, BLOCK_NAME, this.memory.size, this.scan)) {
      const { offsets, data, count } = this.scan;
      // Fresh memory not prefaulted: pages never written go in through the memfd (writePagesThroughFd:
      // allocated without the zeroing a fault or a populate would do first); the rest through the
      // mapping. Either way a run of them per call.
      const unmapped = this.fresh && !this.memory.allFaultedIn;
      const written = this.written!;
      for (let r = 0; r < count; ) {
        const i = offsets[r]! / PAGE;
        const at = data[r]!;
        let n = 1;
        if (at < 0) this.fillPage(i, -1 - at);
        else {
          // The run: records one after another in the payload, for pages one after another in guest
          // RAM, all going in the same way.
          const throughFd = unmapped && written[i] === 0;
          while (
            r + n < count &&
            data[r + n] === at + n * RECORD_STRIDE &&
            offsets[r + n] === offsets[r]! + n * PAGE &&
            (unmapped && written[i + n] === 0) === throughFd
          )
            n++;
          const run = payload.subarray(at, at + n * RECORD_STRIDE - RAM_RECORD_HEAD_BYTES);
          if (throughFd) this.memory.writePagesThroughFd(i, run, RAM_RECORD_HEAD_BYTES);
          else this.memory.writePagesSpaced(i, run, RAM_RECORD_HEAD_BYTES);
          written.fill(1, i, i + n);
        }
        for (let k = 0; k < n; k++) this.markReceived(i + k);
        r += n;
      }
      return;
    }
    for (const rec of decodeRamPayload(payload, this.decodeCtx)) {
      switch (rec.kind) {
        case 'mem-size':
          if (kind !== 'start') throw new MigrationError(Errno.EINVAL, 'RAM size record outside the START section');
          if (rec.total !== BigInt(this.memory.size)) {
            throw new MigrationError(
              Errno.EINVAL,
              `the source has ${rec.total} bytes of RAM, this VM ${this.memory.size}`,
            );
          }
          break;
        case 'page': {
          const i = this.pageIndex(rec.offset);
          this.writePage(i, rec.data);
          this.markReceived(i);
          break;
        }
        case 'zero': {
          const i = this.pageIndex(rec.offset);
          this.fillPage(i, rec.fill);
          this.markReceived(i);
          break;
        }
        case 'multifd-flush':
          if (!this.channelsIn)
            throw new MigrationError(Errno.EPROTO, 'MULTIFD_FLUSH in the stream, but multifd is off here');
          await this.channelsIn.flush();
          break;
        case 'eos':
          break;
      }
    }
  }

  private writePage(i: number, data: Uint8Array): void {
    this.memory.page(i).set(data);
    this.written![i] = 1;
  }

  /**
   * A page filled with one byte. A zero page is left alone where it already reads as zeroes: never
   * written into fresh memory (no read, no write, no page allocated), or found zero by a scan. A page
   * written earlier in the load (say, non-zero in the bulk pass and zeroed since) is zeroed.
   */
  private fillPage(i: number, fill: number): void {
    if (fill === 0) {
      if (this.fresh && this.written![i] === 0) return;
      if (this.memory.isZeroPage(i)) return;
    }
    this.memory.page(i).fill(fill);
    // A zeroed page stays marked: it is allocated now, and cheaper to fill again than to scan.
    this.written![i] = 1;
  }

  async loadComplete(): Promise<void> {
    if (this.channelsIn) {
      await this.channelsIn.finish();
      // The channels marked their pages in the shared map (multifd-recv.ts); count them once here, in
      // the downtime: four marks (0 or 1 each) per word read, not an iterator step per page (a 1 GiB
      // guest's map took ~15 ms that way).
      this.receivedCount = countMarks(this.received!);
    }
    const missing = this.memory.pages - this.receivedCount;
    if (missing > 0)
      throw new MigrationError(Errno.EINVAL, `RAM incomplete: ${missing} of ${this.memory.pages} pages never arrived`);
  }

  private pageIndex(offset: bigint): number {
    const i = Number(offset / BigInt(PAGE));
    if (offset % BigInt(PAGE) !== 0n || i >= this.memory.pages) {
      throw new MigrationError(
        Errno.EINVAL,
        `RAM page at offset ${offset} is outside this VM's ${this.memory.size} bytes`,
      );
    }
    return i;
  }

  /** Counts page `i` as loaded (once, however often it arrives): loadComplete checks that all were. */
  private markReceived(i: number): void {
    if (this.received![i] === 0) {
      this.received![i] = 1;
      this.receivedCount++;
    }
  }
}

/** How many bytes of `marks` (each 0 or 1) are 1. */
export function countMarks(marks: Uint8Array): number {
  // Whole words where the map is word-aligned (the maps are: their own buffers), bytes for the rest.
  const whole = marks.byteOffset % 4 === 0 ? marks.byteLength >>> 2 : 0;
  const words = new Uint32Array(marks.buffer, marks.byteOffset - (marks.byteOffset % 4), whole);
  let n = 0;
  for (let i = 0; i < whole; i++) n += popcount32(words[i]!);
  for (let i = whole * 4; i < marks.byteLength; i++) n += marks[i]!;
  return n;
}
