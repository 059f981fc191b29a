// The multifd channel format, QEMU's migration/multifd.c and multifd.h (QEMU 9.0, no compression): each
// extra TCP connection opens with an init packet (MultiFDInit_t) naming the migration (the VM's uuid) and
// the channel; then page packets (MultiFDPacket_t), each a fixed 320-byte header, the be64 offsets of its
// normal pages and then of its zero pages (QEMU 9's zero-page list), and the normal pages' contents in
// offset order. A packet with the SYNC flag closes a pass on its channel (multifd_send_sync_main).
// Every integer is big-endian. Pure codec: no I/O, no state between calls.
//
//   init   be32 magic 0x11223344, be32 version 1, uuid[16], u8 id, 7 bytes 0, 4 x be64 0      (64 bytes)
//   packet be32 magic, be32 version, be32 flags, be32 pages_alloc, be32 normal_pages,
//          be32 next_packet_size (bytes of page data after the offsets), be64 packet_num,
//          be32 zero_pages, be32 0, 3 x be64 0, char ramblock[256] (NUL-padded),
//          be64 offset[normal_pages + zero_pages], then normal_pages x 4096 bytes

import { TARGET_PAGE_SIZE } from './constants.ts';
import { StreamError } from './errors.ts';

export const MULTIFD_MAGIC = 0x11223344;
export const MULTIFD_VERSION = 1;
/** MULTIFD_FLAG_SYNC: the last packet of a pass on this channel. */
export const MULTIFD_FLAG_SYNC = 1;
export const MULTIFD_INIT_BYTES = 64;
export const MULTIFD_HEADER_BYTES = 320;
/** QEMU's MULTIFD_PACKET_SIZE (512 KiB) in pages: the most a packet carries (pages_alloc). */
export const MULTIFD_PACKET_PAGES = (512 * 1024) / TARGET_PAGE_SIZE;
const RAMBLOCK_BYTES = 256;
const FLAGS_AT = 8;
const NORMAL_PAGES_AT = 16;
const ZERO_PAGES_AT = 32;

/**
 * How a channel thread finds where a packet ends without decoding it (native/src/chanthread.c): the
 * header's length, the byte offsets of its be32 flags and page counts, the SYNC flag, the most pages a
 * packet carries and their size. Everything else in a header is this codec's to check.
 */
export const MULTIFD_FRAMING = {
  headerBytes: MULTIFD_HEADER_BYTES,
  normalPagesAt: NORMAL_PAGES_AT,
  zeroPagesAt: ZERO_PAGES_AT,
  flagsAt: FLAGS_AT,
  syncFlag: MULTIFD_FLAG_SYNC,
  maxPages: MULTIFD_PACKET_PAGES,
  pageSize: TARGET_PAGE_SIZE,
} as const;

export interface MultifdInit {
  /** The VM's uuid (16 bytes; all zero when none was set, as QEMU's qemu_uuid). */
  uuid: Uint8Array;
  /** Channel number, 0 .. channels-1. */
  id: number;
}

export interface MultifdPacketHeader {
  flags: number;
  /** Pages this packet could hold (the sender's page array size). */
  pagesAlloc: number;
  normalPages: number;
  zeroPages: number;
  /** Bytes of page data after the offsets (normalPages x 4096 without compression). */
  nextPacketSize: number;
  /** Global packet number, over every channel. */
  packetNum: number;
  ramblock: string;
}

/** A decoded header with the bytes the offsets and pages take after it. */
export interface DecodedMultifdHeader extends MultifdPacketHeader {
  /** Bytes after the header: the offsets, then the page data. */
  bodyBytes: number;
}

const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: true });

function fail(msg: string, at = 0): never {
  throw new StreamError(`multifd: ${msg}`, at);
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

export function encodeMultifdInit(init: MultifdInit): Uint8Array {
  if (init.uuid.byteLength !== 16) throw new RangeError(`a uuid is 16 bytes, got ${init.uuid.byteLength}`);
  if (!Number.isInteger(init.id) || init.id < 0 || init.id > 255)
    throw new RangeError(`channel id ${init.id} is not a u8`);
  const out = new Uint8Array(MULTIFD_INIT_BYTES);
  const v = view(out);
  v.setUint32(0, MULTIFD_MAGIC);
  v.setUint32(4, MULTIFD_VERSION);
  out.set(init.uuid, 8);
  out[24] = init.id;
  return out;
}

/** Decodes an init packet (exactly MULTIFD_INIT_BYTES); refuses a wrong magic or version. */
export function decodeMultifdInit(b: Uint8Array): MultifdInit {
  if (b.byteLength < MULTIFD_INIT_BYTES) fail(`init packet of ${b.byteLength} bytes, expected ${MULTIFD_INIT_BYTES}`);
  const v = view(b);
  const magic = v.getUint32(0);
  if (magic !== MULTIFD_MAGIC)
    fail(`init packet magic 0x${magic.toString(16)}, expected 0x${MULTIFD_MAGIC.toString(16)}`);
  const version = v.getUint32(4);
  if (version !== MULTIFD_VERSION) fail(`init packet version ${version}, this side speaks ${MULTIFD_VERSION}`);
  return { uuid: b.slice(8, 24), id: b[24]! };
}

/**
 * Writes a packet's header and offsets into `out` (MULTIFD_HEADER_BYTES + 8 per page) and returns the
 * bytes written; the caller appends the normal pages' contents, in `normal` order.
 */
export function writeMultifdHeader(
  out: Uint8Array,
  h: Omit<MultifdPacketHeader, 'normalPages' | 'zeroPages' | 'nextPacketSize'>,
  normal: ArrayLike<number>,
  zero: ArrayLike<number>,
): number {
  const n = normal.length + zero.length;
  if (n > h.pagesAlloc) throw new RangeError(`${n} pages in a packet of ${h.pagesAlloc}`);
  if (!Number.isSafeInteger(h.packetNum) || h.packetNum < 0) throw new RangeError(`packet number ${h.packetNum}`);
  const len = MULTIFD_HEADER_BYTES + 8 * n;
  if (out.byteLength < len) throw new RangeError(`packet header needs ${len} bytes, buffer has ${out.byteLength}`);
  out.fill(0, 0, MULTIFD_HEADER_BYTES);
  writeName(out, h.ramblock);
  const v = view(out);
  v.setUint32(0, MULTIFD_MAGIC);
  v.setUint32(4, MULTIFD_VERSION);
  v.setUint32(FLAGS_AT, h.flags);
  v.setUint32(12, h.pagesAlloc);
  v.setUint32(NORMAL_PAGES_AT, normal.length);
  v.setUint32(20, normal.length * TARGET_PAGE_SIZE);
  // The be64 packet number as two be32 halves: it is a safe integer, no BigInt needed (one per packet).
  v.setUint32(24, Math.floor(h.packetNum / 0x100000000));
  v.setUint32(28, h.packetNum >>> 0);
  v.setUint32(ZERO_PAGES_AT, zero.length);
  writeOffsets(v, writeOffsets(v, MULTIFD_HEADER_BYTES, normal), zero);
  return len;
}

/** The NUL-padded block name at byte 64 (the header's zeroes pad it); an ASCII name needs no encoder. */
function writeName(out: Uint8Array, name: string): void {
  let ascii = name.length > 0 && name.length < RAMBLOCK_BYTES;
  for (let i = 0; ascii && i < name.length; i++) ascii = name.charCodeAt(i) < 0x80;
  if (ascii) {
    for (let i = 0; i < name.length; i++) out[64 + i] = name.charCodeAt(i);
    return;
  }
  const bytes = enc.encode(name);
  if (bytes.byteLength === 0 || bytes.byteLength >= RAMBLOCK_BYTES)
    throw new RangeError(`RAM block name "${name}" must be 1 to 255 bytes`);
  out.set(bytes, 64);
}

/** Page offsets as be64 from byte `at` on; returns where they end. */
function writeOffsets(v: DataView, at: number, list: ArrayLike<number>): number {
  for (let i = 0; i < list.length; i++) {
    const off = list[i]!;
    if (!Number.isSafeInteger(off) || off < 0 || off % TARGET_PAGE_SIZE !== 0)
      throw new RangeError(`page offset ${off} is not a multiple of ${TARGET_PAGE_SIZE}`);
    v.setUint32(at, Math.floor(off / 0x100000000));
    v.setUint32(at + 4, off >>> 0);
    at += 8;
  }
  return at;
}

/**
 * Decodes the packet header at byte `at` of `b` (MULTIFD_HEADER_BYTES; a receiving channel hands over
 * several packets back to back). `maxPages` is the most a packet may carry (the receiver's page array,
 * QEMU's page_count check). Refuses a bad magic or version, unknown flags (compression), more pages than
 * allowed, a page-data size that does not match the normal pages, or a bad block name; a refusal's
 * offset counts from the start of `b`.
 */
export function decodeMultifdHeader(b: Uint8Array, at = 0, maxPages = MULTIFD_PACKET_PAGES): DecodedMultifdHeader {
  if (b.byteLength - at < MULTIFD_HEADER_BYTES) fail(`packet header of ${b.byteLength - at} bytes`, at);
  // A view of the whole buffer, offsets from `at`: no copy or subarray of each packet.
  const v = view(b);
  const magic = v.getUint32(at);
  if (magic !== MULTIFD_MAGIC)
    fail(`packet magic 0x${magic.toString(16)}, expected 0x${MULTIFD_MAGIC.toString(16)}`, at);
  const version = v.getUint32(at + 4);
  if (version !== MULTIFD_VERSION) fail(`packet version ${version}, this side speaks ${MULTIFD_VERSION}`, at + 4);
  const flags = v.getUint32(at + FLAGS_AT);
  if ((flags & ~MULTIFD_FLAG_SYNC) !== 0)
    fail(`packet flags 0x${flags.toString(16)}: compression and other flags are not supported`, at + 8);
  const pagesAlloc = v.getUint32(at + 12);
  const normalPages = v.getUint32(at + NORMAL_PAGES_AT);
  const nextPacketSize = v.getUint32(at + 20);
  const numHigh = v.getUint32(at + 24);
  const zeroPages = v.getUint32(at + ZERO_PAGES_AT);
  if (pagesAlloc > maxPages) fail(`packet allocates ${pagesAlloc} pages, at most ${maxPages} allowed`, at + 12);
  if (normalPages + zeroPages > pagesAlloc)
    fail(`packet carries ${normalPages} normal and ${zeroPages} zero pages, more than its ${pagesAlloc}`, at + 16);
  if (nextPacketSize !== normalPages * TARGET_PAGE_SIZE)
    fail(`packet data of ${nextPacketSize} bytes for ${normalPages} pages`, at + 20);
  // A be64 that must be a safe integer (below 2^53): its high half below 2^21.
  const numLow = v.getUint32(at + 28);
  if (numHigh >= 0x200000) fail(`packet number ${(BigInt(numHigh) << 32n) | BigInt(numLow)} out of range`, at + 24);
  const packetNum = numHigh * 0x100000000 + numLow;
  const ramblock = readName(b, at + 64);
  if (normalPages + zeroPages > 0 && ramblock === '') fail('packet with pages names no RAM block', at + 64);
  return {
    flags,
    pagesAlloc,
    normalPages,
    zeroPages,
    nextPacketSize,
    packetNum,
    ramblock,
    bodyBytes: 8 * (normalPages + zeroPages) + nextPacketSize,
  };
}

/** The NUL-terminated block name at `at`: ASCII read directly (the usual "pc.ram"), else strict UTF-8. */
function readName(b: Uint8Array, at: number): string {
  let name = '';
  for (let i = at; i < at + RAMBLOCK_BYTES; i++) {
    const c = b[i]!;
    if (c === 0) return name;
    if (c >= 0x80) break;
    name += String.fromCharCode(c);
  }
  const bytes = b.subarray(at, at + RAMBLOCK_BYTES);
  const end = bytes.indexOf(0);
  if (end < 0) fail('RAM block name is not NUL-terminated', at);
  try {
    return dec.decode(bytes.subarray(0, end));
  } catch {
    return fail('RAM block name is not UTF-8', at);
  }
}

/**
 * Reads the offsets that start at byte `at` of `b` (right after their header) into `into`, or only
 * checks them when there is none (a receiver whose pages were placed already); each must be
 * page-aligned and inside a block of `blockSize` bytes. Returns the number read.
 */
export function readMultifdOffsets(
  b: Uint8Array,
  at: number,
  h: DecodedMultifdHeader,
  blockSize: number,
  into?: Float64Array,
): number {
  const n = h.normalPages + h.zeroPages;
  if (b.byteLength - at < 8 * n) fail(`packet offsets truncated: ${b.byteLength - at} of ${8 * n} bytes`, at);
  if (into && into.length < n) throw new RangeError(`offset array of ${into.length} for ${n} pages`);
  const v = view(b);
  for (let i = 0; i < n; i++) {
    const hi = v.getUint32(at + 8 * i);
    const off = hi * 0x100000000 + v.getUint32(at + 8 * i + 4);
    if (off % TARGET_PAGE_SIZE !== 0 || off >= blockSize || hi >= 0x200000)
      fail(`page offset 0x${off.toString(16)} is not a page of "${h.ramblock}" (${blockSize} bytes)`, at + 8 * i);
    if (into) into[i] = off;
  }
  return n;
}
