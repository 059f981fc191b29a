// RAM section payloads, QEMU's migration/ram.c encoding (docs/stream.md, "RAM"). Every record
// starts with a be64 whose low 12 bits are flags and whose high bits are a page-aligned offset (or, for
// MEM_SIZE, the total RAM size):
//
//   MEM_SIZE  be64 (total | 0x04), then per block: u8 len, name, be64 used_length    (START only)
//   PAGE      be64 (offset | 0x08 [| 0x20]), [u8 len, block name], 4096 bytes
//   ZERO      be64 (offset | 0x02 [| 0x20]), [u8 len, block name], u8 fill
//   EOS       be64 0x10                                                         (ends every payload)
//
// CONTINUE (0x20) means "same block as the previous page record": the name is left out. A section's first
// page record always names its block (the builder forgets the block at take()), so every section decodes
// on its own and a reader never needs state from an earlier section.
//
// The builder never copies page contents: a page record is a small header piece plus the caller's view.

import { RAM_FLAG_MASK, RAM_KNOWN_FLAGS, RAM_RECORD_HEAD_BYTES, RamFlag, TARGET_PAGE_SIZE } from './constants.ts';
import { crc32c, crc32cCopySpaced } from './crc32c.ts';
import type { DecodedSection } from './decoder.ts';
import { StreamError } from './errors.ts';

/** The EOS record that closes every payload (a bare be64): a payload writer always keeps room for it. */
const EOS_BYTES = 8;

export interface RamBlockInfo {
  /** RAMBlock idstr, e.g. `pc.ram`: 1 to 255 bytes of UTF-8. */
  name: string;
  /** Bytes of the block that migrate: a positive multiple of the page size. */
  usedLength: number;
}

/** Header bytes are written here and handed out as views; a slab is never rewritten, only appended to. */
const SLAB_BYTES = 64 << 10;
const MAX_RECORD_HEAD = 8 + 1 + 255 + 8;
const encoder = new TextEncoder();

function writeBe64(view: DataView, at: number, v: number): void {
  // Offsets stay below 2^53; split so no BigInt is made per record.
  view.setUint32(at, Math.floor(v / 0x100000000), false);
  view.setUint32(at + 4, v >>> 0, false);
}

/**
 * The one encoder of RAM records (everything but a page's contents): checks, the CONTINUE rule and block
 * names. Both payload writers below put their record bytes through it and differ only in where the bytes
 * go (header slabs beside referenced pages, or one contiguous buffer).
 */
class RamRecordEncoder {
  private lastBlock: string | null = null;
  private readonly names = new Map<string, Uint8Array>();

  /** A new payload: its first page record names its block, so every section decodes on its own. */
  reset(): void {
    this.lastBlock = null;
  }

  /** A RAM block name's bytes (1 to 255, as the stream's length byte allows), encoded once. */
  private name(name: string): Uint8Array {
    let bytes = this.names.get(name);
    if (!bytes) {
      bytes = encoder.encode(name);
      if (bytes.byteLength === 0 || bytes.byteLength > 255)
        throw new RangeError(`RAM block name "${name}" must be 1 to 255 bytes`);
      this.names.set(name, bytes);
    }
    return bytes;
  }

  /** Checks a MEM_SIZE record (block lengths must add up to `total`); returns its length in bytes. */
  memSizeLength(total: number, blocks: readonly RamBlockInfo[]): number {
    let sum = 0;
    let n = 8;
    for (const b of blocks) {
      n += 1 + this.name(b.name).byteLength + 8;
      if (!Number.isSafeInteger(b.usedLength) || b.usedLength <= 0 || b.usedLength % TARGET_PAGE_SIZE !== 0)
        throw new RangeError(`RAM block "${b.name}": used length ${b.usedLength} is not a positive multiple of 4096`);
      sum += b.usedLength;
    }
    if (sum !== total) throw new RangeError(`RAM blocks add up to ${sum} bytes, total says ${total}`);
    return n;
  }

  /** Writes a MEM_SIZE record checked by memSizeLength; returns its length. */
  writeMemSize(buf: Uint8Array, view: DataView, at: number, total: number, blocks: readonly RamBlockInfo[]): number {
    writeBe64(view, at, total + RamFlag.MEM_SIZE);
    let n = 8;
    for (const b of blocks) {
      n += this.writeName(buf, at + n, b.name);
      writeBe64(view, at + n, b.usedLength);
      n += 8;
    }
    return n;
  }

  /**
   * Writes a PAGE or ZERO record's header at `at` if it takes at most `room` bytes; returns its length,
   * or -1 (nothing written) when it does not fit.
   */
  pageHead(
    buf: Uint8Array,
    view: DataView,
    at: number,
    room: number,
    block: string,
    offset: number,
    flag: number,
  ): number {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset % TARGET_PAGE_SIZE !== 0)
      throw new RangeError(`RAM page offset ${offset} is not a multiple of ${TARGET_PAGE_SIZE}`);
    if (this.lastBlock === block) {
      if (room < 8) return -1;
      writeBe64(view, at, offset + flag + RamFlag.CONTINUE);
      return 8;
    }
    const name = this.name(block);
    if (room < 9 + name.byteLength) return -1;
    writeBe64(view, at, offset + flag);
    buf[at + 8] = name.byteLength;
    buf.set(name, at + 9);
    this.lastBlock = block;
    return 9 + name.byteLength;
  }

  writeEos(view: DataView, at: number): number {
    writeBe64(view, at, RamFlag.EOS);
    return EOS_BYTES;
  }

  writeMultifdFlush(view: DataView, at: number): number {
    writeBe64(view, at, RamFlag.MULTIFD_FLUSH);
    return 8;
  }

  private writeName(buf: Uint8Array, at: number, name: string): number {
    const bytes = this.name(name);
    buf[at] = bytes.byteLength;
    buf.set(bytes, at + 1);
    return 1 + bytes.byteLength;
  }
}

function checkPage(data: Uint8Array): void {
  if (data.byteLength !== TARGET_PAGE_SIZE)
    throw new RangeError(`a RAM page is ${TARGET_PAGE_SIZE} bytes, got ${data.byteLength}`);
}

function checkFill(fill: number): void {
  if (!Number.isInteger(fill) || fill < 0 || fill > 255) throw new RangeError(`fill byte ${fill} is not a u8`);
}

/**
 * Builds a RAM payload as pieces without copying page contents: record headers go to a slab, each page
 * is the caller's view. For payloads whose pages are not copied anyway (setup, tests, stream tools).
 */
export class RamPayloadBuilder {
  private pieces: Uint8Array[] = [];
  private length = 0;
  private records = 0;
  private slab = new Uint8Array(SLAB_BYTES);
  private slabView = new DataView(this.slab.buffer);
  private slabUsed = 0;
  /** Where the last piece starts in the slab, if the last piece is a slab piece that may still grow. */
  private openAt = -1;
  private readonly enc = new RamRecordEncoder();

  /** Payload bytes so far. */
  get byteLength(): number {
    return this.length;
  }

  /** True when no record was added since the last take(). */
  get isEmpty(): boolean {
    return this.records === 0;
  }

  /**
   * Where up to `n` header bytes can be written in the slab (the open piece ends when a new slab starts);
   * nothing is taken until commit(), so a record refused while being written leaves no gap.
   */
  private room(n: number): number {
    if (this.slabUsed + n > this.slab.byteLength) {
      this.slab = new Uint8Array(Math.max(SLAB_BYTES, n));
      this.slabView = new DataView(this.slab.buffer);
      this.slabUsed = 0;
      this.openAt = -1;
    }
    return this.slabUsed;
  }

  /** Header bytes [at, at+n) just written to the slab join the last piece when they follow it. */
  private commit(at: number, n: number): void {
    this.slabUsed = at + n;
    if (this.openAt >= 0 && this.pieces.length > 0) {
      this.pieces[this.pieces.length - 1] = this.slab.subarray(this.openAt, at + n);
    } else {
      this.openAt = at;
      this.pieces.push(this.slab.subarray(at, at + n));
    }
    this.length += n;
    this.records++;
  }

  /** The START record: total RAM size and each block's name and used length (which must add up). */
  memSize(total: number, blocks: readonly RamBlockInfo[]): void {
    const at = this.room(this.enc.memSizeLength(total, blocks));
    this.commit(at, this.enc.writeMemSize(this.slab, this.slabView, at, total, blocks));
  }

  /** A page with its contents; `data` (4096 bytes) is referenced, not copied: keep it unchanged until sent. */
  page(block: string, offset: number, data: Uint8Array): void {
    checkPage(data);
    const at = this.room(MAX_RECORD_HEAD);
    this.commit(at, this.enc.pageHead(this.slab, this.slabView, at, MAX_RECORD_HEAD, block, offset, RamFlag.PAGE));
    this.pieces.push(data);
    this.length += data.byteLength;
    this.openAt = -1;
  }

  /** A page filled with one byte (a zero page: fill 0); costs 9 bytes, plus the name after a switch. */
  zero(block: string, offset: number, fill = 0): void {
    checkFill(fill);
    const at = this.room(MAX_RECORD_HEAD);
    const n = this.enc.pageHead(this.slab, this.slabView, at, MAX_RECORD_HEAD, block, offset, RamFlag.ZERO);
    this.slab[at + n] = fill;
    this.commit(at, n + 1);
  }

  /** Ends the payload (every RAM payload ends with EOS). */
  eos(): void {
    const at = this.room(8);
    this.commit(at, this.enc.writeEos(this.slabView, at));
  }

  /** RAM_SAVE_FLAG_MULTIFD_FLUSH (multifd: a pass's pages on every channel come before what follows). */
  multifdFlush(): void {
    const at = this.room(8);
    this.commit(at, this.enc.writeMultifdFlush(this.slabView, at));
  }

  /** The pieces so far; the builder starts afresh (and names the block again on its next page). */
  take(): { pieces: Uint8Array[]; byteLength: number } {
    const out = { pieces: this.pieces, byteLength: this.length };
    this.pieces = [];
    this.length = 0;
    this.enc.reset();
    this.records = 0;
    this.openAt = -1;
    return out;
  }
}

/**
 * Writes a RAM payload into one contiguous buffer, copying each page's contents in after its header: for
 * a sender that copies pages anyway (to checksum exactly what goes out), the payload is then one piece
 * instead of two per page, one iovec for the socket and one run for the CRC. Same records, same encoder
 * as RamPayloadBuilder. Room for the closing EOS is always kept.
 */
export class RamPayloadWriter {
  private at = 0;
  private records = 0;
  /** CRC-32C of buf[0, crcAt): page records are checksummed as they are copied in, the rest at take(). */
  private crc = 0;
  private crcAt = 0;
  private readonly view: DataView;
  private readonly enc = new RamRecordEncoder();

  /** `buf`: where the payload is written (at least 4 KiB + 280 bytes, to hold one page record). */
  constructor(readonly buf: Uint8Array) {
    if (buf.byteLength < TARGET_PAGE_SIZE + MAX_RECORD_HEAD + EOS_BYTES)
      throw new RangeError(`a RAM payload buffer of ${buf.byteLength} bytes cannot hold one page record`);
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  /** Payload bytes so far. */
  get byteLength(): number {
    return this.at;
  }

  /** True when no record was written since the last take(). */
  get isEmpty(): boolean {
    return this.records === 0;
  }

  /** Writes a page record's header if `extra` more bytes fit after it (EOS room kept); -1 when full. */
  private header(block: string, offset: number, flag: number, extra: number): number {
    const room = this.buf.byteLength - this.at - extra - EOS_BYTES;
    const n = this.enc.pageHead(this.buf, this.view, this.at, room, block, offset, flag);
    if (n < 0) return -1;
    this.at += n;
    this.records++;
    return this.at;
  }

  /**
   * A page record with a copy of `data` (4096 bytes); false (nothing written) when it does not fit. The
   * copy and its checksum are one pass over the page (crc32cCopy), so the section's CRC is of the copy.
   */
  page(block: string, offset: number, data: Uint8Array): boolean {
    checkPage(data);
    return this.pages(block, offset, data) === 1;
  }

  /**
   * Page records for a run of pages adjacent in guest RAM (`run`: n x 4096 bytes, the first at `offset`), as
   * many as fit: returns how many were written (0 when not even the first fits). Their headers go in first,
   * then one native pass copies every page between them and checksums the lot (crc32cCopySpaced): one
   * call for the run instead of one per page.
   */
  pages(block: string, offset: number, run: Uint8Array): number {
    if (run.byteLength === 0 || run.byteLength % TARGET_PAGE_SIZE !== 0)
      throw new RangeError(
        `a run of RAM pages is a positive multiple of ${TARGET_PAGE_SIZE} bytes, got ${run.byteLength}`,
      );
    const first = this.header(block, offset, RamFlag.PAGE, TARGET_PAGE_SIZE);
    if (first < 0) return 0;
    // Every later page of the run is the same block: a CONTINUE header (the be64 alone) before each.
    const head = RAM_RECORD_HEAD_BYTES;
    const room = this.buf.byteLength - (first + TARGET_PAGE_SIZE) - EOS_BYTES;
    const count = Math.min(run.byteLength / TARGET_PAGE_SIZE, 1 + Math.floor(room / (head + TARGET_PAGE_SIZE)));
    let at = first + TARGET_PAGE_SIZE;
    for (let k = 1; k < count; k++) {
      const n = this.enc.pageHead(this.buf, this.view, at, head, block, offset + k * TARGET_PAGE_SIZE, RamFlag.PAGE);
      if (n !== head) throw new Error(`internal: page header ${k} of a run took ${n} bytes, not ${head}`);
      at += head + TARGET_PAGE_SIZE;
    }
    const data = run.subarray(0, count * TARGET_PAGE_SIZE);
    this.crc = crc32cCopySpaced(this.buf, this.crcAt, first, data, this.crc, TARGET_PAGE_SIZE, head);
    this.at = at;
    this.crcAt = at;
    this.records += count - 1;
    return count;
  }

  /** A page filled with one byte (a zero page: fill 0); false when it does not fit. */
  zero(block: string, offset: number, fill = 0): boolean {
    checkFill(fill);
    const at = this.header(block, offset, RamFlag.ZERO, 1);
    if (at < 0) return false;
    this.buf[at] = fill;
    this.at += 1;
    return true;
  }

  /**
   * Ends the payload with EOS and returns it (a view of the buffer) with its CRC-32C (what
   * crc32c(payload) gives, computed as it was built); the writer starts afresh.
   */
  take(): { payload: Uint8Array; crc: number } {
    const payload = this.buf.subarray(0, this.at + this.enc.writeEos(this.view, this.at));
    const crc = crc32c(payload.subarray(this.crcAt), this.crc);
    this.at = this.crcAt = this.crc = 0;
    this.enc.reset();
    this.records = 0;
    return { payload, crc };
  }
}

export type RamRecord =
  | { kind: 'mem-size'; total: bigint; blocks: { name: string; usedLength: bigint }[] }
  | { kind: 'page'; block: string; offset: bigint; data: Uint8Array }
  | { kind: 'zero'; block: string; offset: bigint; fill: number }
  | { kind: 'eos' }
  /** RAM_SAVE_FLAG_MULTIFD_FLUSH: every multifd channel's pages so far are to be applied before what follows. */
  | { kind: 'multifd-flush' };

export interface RamDecodeContext {
  /**
   * This side's RAM blocks: name → used length in bytes. MEM_SIZE must list exactly these lengths and
   * pages must fall inside them. Absent: any block is accepted (the analyzer, which has no VM).
   */
  blocks?: ReadonlyMap<string, number>;
  /**
   * The section the payload came from: errors then name it and carry stream offsets, and MEM_SIZE is
   * accepted only in a START section.
   */
  section?: Pick<DecodedSection, 'type' | 'idstr' | 'sectionId' | 'seq' | 'payloadOffset'>;
}

/**
 * Decodes one section's RAM payload. The whole payload is checked before anything is returned, so a
 * caller never applies half of a bad payload. Page data are views of `payload`, not copies.
 * Refused (StreamError, code 'payload'): unknown or contradictory flags, CONTINUE with no block named
 * earlier in the section, an unknown block, a page outside its block, MEM_SIZE outside START or not adding
 * up, a record cut short, a payload without EOS or with bytes after it.
 */
export function decodeRamPayload(payload: Uint8Array, ctx: RamDecodeContext = {}): RamRecord[] {
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const base = ctx.section?.payloadOffset ?? 0;
  const ref = ctx.section
    ? { idstr: ctx.section.idstr, sectionId: ctx.section.sectionId, seq: ctx.section.seq }
    : undefined;
  const out: RamRecord[] = [];
  let at = 0;
  let recordAt = 0;
  let block: string | null = null;
  const fail = (msg: string): never => {
    throw new StreamError(`RAM: ${msg}`, base + recordAt, ref, 'payload');
  };
  const need = (n: number, what: string) => {
    if (at + n > payload.byteLength) fail(`${what} runs past the end of the payload`);
  };
  const name = (): string => {
    need(1, 'block name length');
    const len = payload[at]!;
    if (len === 0) fail('empty block name');
    need(1 + len, 'block name');
    const s = new TextDecoder().decode(payload.subarray(at + 1, at + 1 + len));
    at += 1 + len;
    return s;
  };
  while (at < payload.byteLength) {
    recordAt = at;
    need(8, 'record header');
    const v = dv.getBigUint64(at, false);
    const flags = Number(v & RAM_FLAG_MASK);
    const addr = v & ~RAM_FLAG_MASK;
    at += 8;
    if ((flags & ~RAM_KNOWN_FLAGS) !== 0)
      fail(`unsupported flags 0x${(flags & ~RAM_KNOWN_FLAGS).toString(16)} in record 0x${v.toString(16)}`);
    const kind = flags & ~RamFlag.CONTINUE;
    if (kind === RamFlag.EOS) {
      if (flags !== RamFlag.EOS || addr !== 0n) fail(`malformed EOS record 0x${v.toString(16)}`);
      out.push({ kind: 'eos' });
      if (at !== payload.byteLength) {
        recordAt = at;
        fail(`${payload.byteLength - at} bytes after EOS`);
      }
      return out;
    }
    if (kind === RamFlag.MULTIFD_FLUSH) {
      if (flags !== RamFlag.MULTIFD_FLUSH || addr !== 0n) fail(`malformed MULTIFD_FLUSH record 0x${v.toString(16)}`);
      out.push({ kind: 'multifd-flush' });
      continue;
    }
    if (kind === RamFlag.MEM_SIZE) {
      if (flags & RamFlag.CONTINUE) fail('MEM_SIZE with CONTINUE');
      if (ctx.section && ctx.section.type !== 'start')
        fail(`MEM_SIZE in a ${ctx.section.type.toUpperCase()} section (only START carries it)`);
      const blocks: { name: string; usedLength: bigint }[] = [];
      let sum = 0n;
      while (sum < addr) {
        const n = name();
        need(8, 'block length');
        const used = dv.getBigUint64(at, false);
        at += 8;
        if (used === 0n) fail(`RAM block "${n}" has length 0`);
        if (ctx.blocks) {
          const mine = ctx.blocks.get(n);
          if (mine === undefined) fail(`unknown RAM block "${n}"`);
          if (BigInt(mine!) !== used) fail(`RAM block "${n}" is ${used} bytes at the source, ${mine} here`);
        }
        blocks.push({ name: n, usedLength: used });
        sum += used;
      }
      if (sum !== addr) fail(`block lengths add up to ${sum}, MEM_SIZE says ${addr}`);
      if (ctx.blocks && blocks.length !== ctx.blocks.size)
        fail(`the source has ${blocks.length} RAM block(s), this side ${ctx.blocks.size}`);
      out.push({ kind: 'mem-size', total: addr, blocks });
      continue;
    }
    if (kind !== RamFlag.PAGE && kind !== RamFlag.ZERO)
      fail(`record 0x${v.toString(16)}: flags 0x${flags.toString(16)} name no record kind`);
    if (flags & RamFlag.CONTINUE) {
      if (block === null) fail('CONTINUE with no block named earlier in this section');
    } else {
      block = name();
    }
    if (ctx.blocks) {
      const size = ctx.blocks.get(block!);
      if (size === undefined) fail(`unknown RAM block "${block}"`);
      if (addr + BigInt(TARGET_PAGE_SIZE) > BigInt(size!))
        fail(`page at ${addr} is outside block "${block}" (${size} bytes)`);
    }
    if (kind === RamFlag.PAGE) {
      need(TARGET_PAGE_SIZE, 'page');
      out.push({ kind: 'page', block: block!, offset: addr, data: payload.subarray(at, at + TARGET_PAGE_SIZE) });
      at += TARGET_PAGE_SIZE;
    } else {
      need(1, 'fill byte');
      out.push({ kind: 'zero', block: block!, offset: addr, fill: payload[at]! });
      at += 1;
    }
  }
  recordAt = at;
  return fail('payload ends without EOS');
}

/** The page records of a payload as scanRamPages leaves them: parallel arrays, reused from call to call. */
export class RamPageScan {
  /** Records in the arrays. */
  count = 0;
  /** Each record's byte offset in the block (a multiple of 4096). */
  offsets = new Float64Array(1024);
  /** Where each page's 4096 bytes start in the payload, or -1 - fill for a page filled with one byte. */
  data = new Int32Array(1024);

  push(offset: number, data: number): void {
    if (this.count === this.offsets.length) {
      const o = new Float64Array(this.count * 2);
      o.set(this.offsets);
      this.offsets = o;
      const d = new Int32Array(this.count * 2);
      d.set(this.data);
      this.data = d;
    }
    this.offsets[this.count] = offset;
    this.data[this.count] = data;
    this.count++;
  }
}

/**
 * The common PART payload, scanned without an object or a BigInt per record (the loader's hot path):
 * PAGE and ZERO records of the one block `block` (the first record names it, later ones CONTINUE or
 * name it again), each inside the block's `blockSize` bytes, then EOS as the last 8 bytes. Returns false
 * for anything else, with `scan` in no defined state: the caller then decodes the payload with
 * decodeRamPayload, which handles every other valid payload (MEM_SIZE, several blocks) and says what is
 * wrong with an invalid one. Whatever this accepts, decodeRamPayload accepts with the same records.
 */
export function scanRamPages(payload: Uint8Array, block: Uint8Array, blockSize: number, scan: RamPageScan): boolean {
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const n = payload.byteLength;
  scan.count = 0;
  let at = 0;
  let named = false;
  while (at + 8 <= n) {
    const hi = dv.getUint32(at, false);
    const lo = dv.getUint32(at + 4, false);
    at += 8;
    const flags = lo & (TARGET_PAGE_SIZE - 1);
    if (flags === RamFlag.EOS) return hi === 0 && lo === RamFlag.EOS && at === n;
    const kind = flags & ~RamFlag.CONTINUE;
    if (kind !== RamFlag.PAGE && kind !== RamFlag.ZERO) return false;
    if (flags & RamFlag.CONTINUE) {
      if (!named) return false;
    } else {
      // u8 length, then the name's bytes: it must be `block`.
      if (at + 1 + block.byteLength > n || payload[at] !== block.byteLength) return false;
      for (let i = 0; i < block.byteLength; i++) if (payload[at + 1 + i] !== block[i]) return false;
      at += 1 + block.byteLength;
      named = true;
    }
    // hi < 2^21 keeps the offset a safe integer; anything that large is outside any block anyway.
    if (hi >= 0x200000) return false;
    const offset = hi * 0x100000000 + (lo - flags);
    if (offset + TARGET_PAGE_SIZE > blockSize) return false;
    if (kind === RamFlag.PAGE) {
      if (at + TARGET_PAGE_SIZE > n) return false;
      scan.push(offset, at);
      at += TARGET_PAGE_SIZE;
    } else {
      if (at + 1 > n) return false;
      scan.push(offset, -1 - payload[at]!);
      at += 1;
    }
  }
  return false;
}
