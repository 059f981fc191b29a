// DEVICE_GET_REGION_INFO (cmd 5): `struct vfio_region_info` (32 bytes) both ways; the reply may append a
// capability chain (SPARSE_MMAP, TYPE). Cap offsets count from the start of the 32-byte struct.
//
// argsz rule (libvfio-user): the reply's argsz is always the full size (32 + caps); the caps, the CAPS flag
// and the region fd are sent only when the request's argsz covered that size, else the client retries with
// the returned argsz. `encodeRegionInfoReplyFor` applies that rule; `encodeRegionInfoReply` writes what it
// is given.

import { checkFlags, checkRange, fail, Reader, Writer } from './wire.ts';

export const RegionInfoFlag = {
  READ: 1 << 0,
  WRITE: 1 << 1,
  /** The region has an fd (sent with the caps) that may be mmapped at `offset`. */
  MMAP: 1 << 2,
  CAPS: 1 << 3,
} as const;

export const REGION_INFO_FLAGS_KNOWN =
  RegionInfoFlag.READ | RegionInfoFlag.WRITE | RegionInfoFlag.MMAP | RegionInfoFlag.CAPS;

export const REGION_INFO_SIZE = 32;

export const RegionCapId = {
  SPARSE_MMAP: 1,
  TYPE: 2,
  /** Linux only; libvfio-user never sends it. Decoded as a raw cap. */
  MSIX_MAPPABLE: 3,
} as const;

/** VFIO_REGION_TYPE_*: 3/1 is the v1 migration region; the seed draft used 2/1. Bit 31 = PCI vendor types. */
export const RegionType = {
  GFX: 1,
  CCW: 2,
  MIGRATION_DEPRECATED: 3,
  PCI_VENDOR_TYPE: 0x8000_0000,
} as const;

const CAP_HEADER_SIZE = 8;
const SPARSE_HEADER_SIZE = 16;
const SPARSE_AREA_SIZE = 16;
const TYPE_CAP_SIZE = 16;

export interface SparseArea {
  offset: bigint;
  size: bigint;
}

export type RegionCap =
  | { kind: 'sparse-mmap'; areas: SparseArea[] }
  | { kind: 'type'; type: number; subtype: number }
  /** A cap we do not interpret: its bytes after the 8-byte header, up to the next cap or the end. */
  | { kind: 'raw'; id: number; version: number; data: Uint8Array };

export interface RegionInfoRequest {
  /** Largest reply payload the client accepts (≥ 32). */
  argsz: number;
  index: number;
}

export interface RegionInfoReply {
  /** Full reply size the server needs: 32 + caps. */
  argsz: number;
  flags: number;
  index: number;
  /** Region size in bytes. */
  size: bigint;
  /** mmap offset to use with the region fd. */
  offset: bigint;
  /** In chain order; non-empty exactly when flags has CAPS. */
  caps: RegionCap[];
}

const REQ = 'DEVICE_GET_REGION_INFO request';
const REP = 'DEVICE_GET_REGION_INFO reply';

export function encodeRegionInfoRequest(m: { argsz?: number; index: number }): Uint8Array {
  const argsz = m.argsz ?? REGION_INFO_SIZE;
  if (argsz < REGION_INFO_SIZE) fail(REQ, 'argsz', `is ${argsz}, must be at least ${REGION_INFO_SIZE}`);
  return new Writer(REQ, REGION_INFO_SIZE).u32(0, 'argsz', argsz).u32(8, 'index', m.index).out;
}

/** flags, cap_offset, size and offset of a request are outputs: carried on the wire, ignored here. */
export function decodeRegionInfoRequest(payload: Uint8Array): RegionInfoRequest {
  const r = new Reader(REQ, payload).exactly(REGION_INFO_SIZE);
  const argsz = r.u32(0);
  if (argsz < REGION_INFO_SIZE) r.fail('argsz', `is ${argsz}, must be at least ${REGION_INFO_SIZE}`);
  return { argsz, index: r.u32(8) };
}

function capSize(cap: RegionCap): number {
  switch (cap.kind) {
    case 'sparse-mmap':
      return SPARSE_HEADER_SIZE + SPARSE_AREA_SIZE * cap.areas.length;
    case 'type':
      return TYPE_CAP_SIZE;
    case 'raw':
      return CAP_HEADER_SIZE + cap.data.byteLength;
  }
}

/** Size of the full reply payload: what `argsz` must be when the caps are sent. */
export function regionInfoFullSize(caps: readonly RegionCap[]): number {
  return caps.reduce((n, c) => n + capSize(c), REGION_INFO_SIZE);
}

function writeCap(w: Writer, off: number, next: number, cap: RegionCap): void {
  const f = `caps@${off}`;
  w.u32(off + 4, `${f}.next`, next);
  switch (cap.kind) {
    case 'sparse-mmap':
      w.u16(off, `${f}.id`, RegionCapId.SPARSE_MMAP).u16(off + 2, `${f}.version`, 1);
      w.u32(off + 8, `${f}.nr_areas`, cap.areas.length);
      cap.areas.forEach((a, i) => {
        const at = off + SPARSE_HEADER_SIZE + SPARSE_AREA_SIZE * i;
        checkRange(REP, `${f}.areas[${i}]`, a.offset, a.size);
        w.u64(at, `${f}.areas[${i}].offset`, a.offset).u64(at + 8, `${f}.areas[${i}].size`, a.size);
      });
      return;
    case 'type':
      w.u16(off, `${f}.id`, RegionCapId.TYPE).u16(off + 2, `${f}.version`, 1);
      w.u32(off + 8, `${f}.type`, cap.type).u32(off + 12, `${f}.subtype`, cap.subtype);
      return;
    case 'raw':
      if (cap.id === RegionCapId.SPARSE_MMAP || cap.id === RegionCapId.TYPE) fail(REP, `${f}.id`, 'is a known cap');
      w.u16(off, `${f}.id`, cap.id)
        .u16(off + 2, `${f}.version`, cap.version)
        .bytes(off + CAP_HEADER_SIZE, cap.data);
  }
}

/** Writes the reply as given: with caps, argsz must be the full size; without, argsz may exceed 32. */
export function encodeRegionInfoReply(m: Omit<RegionInfoReply, 'argsz'> & { argsz?: number }): Uint8Array {
  checkFlags(REP, 'flags', m.flags, REGION_INFO_FLAGS_KNOWN);
  const hasCaps = (m.flags & RegionInfoFlag.CAPS) !== 0;
  if (hasCaps !== m.caps.length > 0) fail(REP, 'flags', 'must have CAPS exactly when caps are given');
  const full = regionInfoFullSize(m.caps);
  const argsz = m.argsz ?? full;
  if (hasCaps ? argsz !== full : argsz < REGION_INFO_SIZE) {
    fail(REP, 'argsz', `is ${argsz}, must be ${hasCaps ? full : `at least ${REGION_INFO_SIZE}`}`);
  }
  const w = new Writer(REP, full)
    .u32(0, 'argsz', argsz)
    .u32(4, 'flags', m.flags)
    .u32(8, 'index', m.index)
    .u32(12, 'cap_offset', hasCaps ? REGION_INFO_SIZE : 0)
    .u64(16, 'size', m.size)
    .u64(24, 'offset', m.offset);
  let off = REGION_INFO_SIZE;
  m.caps.forEach((cap, i) => {
    const end = off + capSize(cap);
    writeCap(w, off, i + 1 < m.caps.length ? end : 0, cap);
    off = end;
  });
  return w.out;
}

/**
 * The server's reply to a request of `requestArgsz`: caps (and CAPS) only if they fit, argsz always the full
 * size, payload min(full, requestArgsz) bytes (zero padded). Pass `flags` without CAPS; it is set here.
 */
export function encodeRegionInfoReplyFor(
  m: Omit<RegionInfoReply, 'argsz'>,
  requestArgsz: number,
): { payload: Uint8Array; capsSent: boolean } {
  const full = regionInfoFullSize(m.caps);
  const flags = m.flags & ~RegionInfoFlag.CAPS;
  if (m.caps.length > 0 && requestArgsz >= full) {
    return { payload: encodeRegionInfoReply({ ...m, flags: flags | RegionInfoFlag.CAPS }), capsSent: true };
  }
  const head = encodeRegionInfoReply({ ...m, flags, caps: [], argsz: full });
  const payload = new Uint8Array(Math.max(REGION_INFO_SIZE, Math.min(full, requestArgsz)));
  payload.set(head);
  return { payload, capsSent: false };
}

function readCap(r: Reader, off: number, end: number): { cap: RegionCap; size: number } {
  const f = `caps@${off}`;
  const id = r.u16(off);
  const version = r.u16(off + 2);
  if (id !== RegionCapId.SPARSE_MMAP && id !== RegionCapId.TYPE) {
    return {
      cap: { kind: 'raw', id, version, data: r.slice(off + CAP_HEADER_SIZE, end - off - CAP_HEADER_SIZE) },
      size: end - off,
    };
  }
  if (version !== 1) r.fail(`${f}.version`, `is ${version}, must be 1`);
  if (id === RegionCapId.TYPE) {
    if (end - off < TYPE_CAP_SIZE) r.fail(f, `has ${end - off} bytes, TYPE needs ${TYPE_CAP_SIZE}`);
    return { cap: { kind: 'type', type: r.u32(off + 8), subtype: r.u32(off + 12) }, size: TYPE_CAP_SIZE };
  }
  if (end - off < SPARSE_HEADER_SIZE) r.fail(f, `has ${end - off} bytes, SPARSE_MMAP needs ${SPARSE_HEADER_SIZE}`);
  const n = r.u32(off + 8);
  const size = SPARSE_HEADER_SIZE + SPARSE_AREA_SIZE * n;
  if (size > end - off) r.fail(`${f}.nr_areas`, `is ${n}, needs ${size} bytes but the cap has ${end - off}`);
  const areas: SparseArea[] = [];
  for (let i = 0; i < n; i++) {
    const at = off + SPARSE_HEADER_SIZE + SPARSE_AREA_SIZE * i;
    const area = { offset: r.u64(at), size: r.u64(at + 8) };
    checkRange(REP, `${f}.areas[${i}]`, area.offset, area.size);
    areas.push(area);
  }
  return { cap: { kind: 'sparse-mmap', areas }, size };
}

// The chain must start right after the struct and run contiguously to argsz: that is what libvfio-user (and
// the kernel, whose caps are all multiples of 8) produce, and it rules out loops and hidden bytes.
function readChain(r: Reader, capOffset: number): RegionCap[] {
  if (capOffset !== REGION_INFO_SIZE) r.fail('cap_offset', `is ${capOffset}, must be ${REGION_INFO_SIZE} with CAPS`);
  const caps: RegionCap[] = [];
  let off = capOffset;
  while (true) {
    if (off + CAP_HEADER_SIZE > r.length) r.fail(`caps@${off}`, `header runs past the reply (${r.length} bytes)`);
    const next = r.u32(off + 4);
    const end = next === 0 ? r.length : next;
    if (end <= off || end > r.length) r.fail(`caps@${off}.next`, `is ${next}, outside ${off + 1}..${r.length}`);
    const { cap, size } = readCap(r, off, end);
    if (off + size !== end) r.fail(`caps@${off}`, `is ${size} bytes but the next cap (or the end) is at ${end}`);
    caps.push(cap);
    if (next === 0) return caps;
    off = next;
  }
}

export function decodeRegionInfoReply(payload: Uint8Array): RegionInfoReply {
  const r = new Reader(REP, payload).atLeast(REGION_INFO_SIZE);
  const argsz = r.u32(0);
  const flags = r.u32(4);
  const capOffset = r.u32(12);
  checkFlags(REP, 'flags', flags, REGION_INFO_FLAGS_KNOWN);
  if (argsz < REGION_INFO_SIZE) r.fail('argsz', `is ${argsz}, must be at least ${REGION_INFO_SIZE}`);
  const m: RegionInfoReply = { argsz, flags, index: r.u32(8), size: r.u64(16), offset: r.u64(24), caps: [] };
  if (flags & RegionInfoFlag.CAPS) {
    if (r.length !== argsz) r.fail('argsz', `is ${argsz} but the reply with caps is ${r.length} bytes`);
    m.caps = readChain(r, capOffset);
    return m;
  }
  // No caps: either none exist or they did not fit; then the payload is min(argsz, request argsz) zero-padded.
  if (capOffset !== 0) r.fail('cap_offset', `is ${capOffset} without CAPS, must be 0`);
  if (r.length > argsz) r.fail('payload', `is ${r.length} bytes, more than argsz ${argsz}`);
  if (r.slice(REGION_INFO_SIZE, r.length - REGION_INFO_SIZE).some((b) => b !== 0)) {
    r.fail('payload', 'has non-zero bytes after the struct without CAPS');
  }
  return m;
}

/** The TYPE cap of a reply, if any: how a VMM recognizes a migration region. */
export function regionTypeOf(reply: Pick<RegionInfoReply, 'caps'>): { type: number; subtype: number } | undefined {
  for (const c of reply.caps) if (c.kind === 'type') return { type: c.type, subtype: c.subtype };
  return undefined;
}
