// DEVICE_GET_REGION_IO_FDS (cmd 6): which parts of a region are backed by ioeventfds/ioregionfds.
// Request and reply start with {argsz, flags, index, count}; the reply then carries `count` sub-region
// entries whose fds (deduplicated) travel with it. libvfio-user's entries are 48 bytes (a union of the
// ioeventfd and ioregionfd layouts); the spec text shows 40 and says to use (argsz - 16) / count as stride.

import { SERVER_MAX_DATA_XFER_SIZE } from './limits.ts';
import { checkFlags, checkRange, fail, Reader, Writer } from './wire.ts';

export const IoFdType = {
  IOEVENTFD: 0,
  IOREGIONFD: 1,
  IOEVENTFD_SHADOW: 2,
} as const;

/** ioeventfd entry flags: KVM's KVM_IOEVENTFD_FLAG_* (DEASSIGN is not something a server asks for). */
export const IoEventFdFlag = {
  DATAMATCH: 1 << 0,
  PIO: 1 << 1,
  VIRTIO_CCW_NOTIFY: 1 << 3,
} as const;

/** ioregionfd entry flags: KVM_IOREGION_*. */
export const IoRegionFdFlag = {
  PIO: 1 << 0,
  POSTED_WRITES: 1 << 1,
} as const;

const IOEVENTFD_FLAGS_KNOWN = IoEventFdFlag.DATAMATCH | IoEventFdFlag.PIO | IoEventFdFlag.VIRTIO_CCW_NOTIFY;
const IOREGIONFD_FLAGS_KNOWN = IoRegionFdFlag.PIO | IoRegionFdFlag.POSTED_WRITES;

export const IO_FDS_HEADER_SIZE = 16;
/** Entry size we write (libvfio-user's union); we also read the spec's 40-byte stride. */
export const IO_FD_ENTRY_SIZE = 48;
export const IO_FD_ENTRY_SIZE_SPEC = 40;

export type IoFdEntry =
  | {
      type: typeof IoFdType.IOEVENTFD | typeof IoFdType.IOEVENTFD_SHADOW;
      gpaOffset: bigint;
      size: bigint;
      /** Index into the reply's fd array. */
      fdIndex: number;
      flags: number;
      /** Shadow memory fd index and offset; 0 for a plain ioeventfd. */
      shadowMemFdIndex: number;
      shadowOffset: bigint;
      datamatch: bigint;
    }
  | {
      type: typeof IoFdType.IOREGIONFD;
      gpaOffset: bigint;
      size: bigint;
      fdIndex: number;
      flags: number;
      userData: bigint;
    };

export interface RegionIoFdsRequest {
  argsz: number;
  index: number;
}

export interface RegionIoFdsReply {
  /** Size the full reply needs: 16 + 48 * count. */
  argsz: number;
  index: number;
  /** Number of sub-regions; may exceed entries.length only when the reply was cut short (entries empty). */
  count: number;
  entries: IoFdEntry[];
}

const REQ = 'DEVICE_GET_REGION_IO_FDS request';
const REP = 'DEVICE_GET_REGION_IO_FDS reply';

function checkArgsz(msg: string, argsz: number): void {
  if (argsz < IO_FDS_HEADER_SIZE || argsz > SERVER_MAX_DATA_XFER_SIZE) {
    fail(msg, 'argsz', `is ${argsz}, must be in ${IO_FDS_HEADER_SIZE}..${SERVER_MAX_DATA_XFER_SIZE}`);
  }
}

export function encodeRegionIoFdsRequest(m: { argsz?: number; index: number }): Uint8Array {
  const argsz = m.argsz ?? IO_FDS_HEADER_SIZE;
  checkArgsz(REQ, argsz);
  return new Writer(REQ, IO_FDS_HEADER_SIZE).u32(0, 'argsz', argsz).u32(8, 'index', m.index).out;
}

/** flags and count must be 0 in a request. */
export function decodeRegionIoFdsRequest(payload: Uint8Array): RegionIoFdsRequest {
  const r = new Reader(REQ, payload).exactly(IO_FDS_HEADER_SIZE);
  const argsz = r.u32(0);
  checkArgsz(REQ, argsz);
  if (r.u32(4) !== 0) r.fail('flags', `is ${r.u32(4)}, must be 0`);
  if (r.u32(12) !== 0) r.fail('count', `is ${r.u32(12)}, must be 0`);
  return { argsz, index: r.u32(8) };
}

function checkEntry(e: IoFdEntry, f: string): void {
  if (e.type !== IoFdType.IOEVENTFD && e.type !== IoFdType.IOREGIONFD && e.type !== IoFdType.IOEVENTFD_SHADOW) {
    fail(REP, `${f}.type`, `is ${(e as { type: number }).type}, must be 0, 1 or 2`);
  }
  checkFlags(
    REP,
    `${f}.flags`,
    e.flags,
    e.type === IoFdType.IOREGIONFD ? IOREGIONFD_FLAGS_KNOWN : IOEVENTFD_FLAGS_KNOWN,
  );
  checkRange(REP, `${f}.gpa_offset`, e.gpaOffset, e.size);
}

export function encodeRegionIoFdsReply(m: { argsz?: number; index: number; count?: number; entries: IoFdEntry[] }) {
  const count = m.count ?? m.entries.length;
  if (m.entries.length !== 0 && m.entries.length !== count) {
    fail(REP, 'count', `is ${count} but ${m.entries.length} entries were given`);
  }
  const argsz = m.argsz ?? IO_FDS_HEADER_SIZE + IO_FD_ENTRY_SIZE * count;
  const w = new Writer(REP, IO_FDS_HEADER_SIZE + IO_FD_ENTRY_SIZE * m.entries.length)
    .u32(0, 'argsz', argsz)
    .u32(8, 'index', m.index)
    .u32(12, 'count', count);
  m.entries.forEach((e, i) => {
    const f = `entries[${i}]`;
    const at = IO_FDS_HEADER_SIZE + IO_FD_ENTRY_SIZE * i;
    checkEntry(e, f);
    w.u64(at, `${f}.gpa_offset`, e.gpaOffset).u64(at + 8, `${f}.size`, e.size);
    w.u32(at + 16, `${f}.fd_index`, e.fdIndex)
      .u32(at + 20, `${f}.type`, e.type)
      .u32(at + 24, `${f}.flags`, e.flags);
    if (e.type === IoFdType.IOREGIONFD) {
      w.u64(at + 32, `${f}.user_data`, e.userData);
    } else {
      w.u32(at + 28, `${f}.shadow_mem_fd_index`, e.shadowMemFdIndex);
      w.u64(at + 32, `${f}.shadow_offset`, e.shadowOffset).u64(at + 40, `${f}.datamatch`, e.datamatch);
    }
  });
  if (m.entries.length > 0 && argsz !== w.out.byteLength) {
    fail(REP, 'argsz', `is ${argsz}, must be ${w.out.byteLength} with entries`);
  }
  if (argsz < IO_FDS_HEADER_SIZE) fail(REP, 'argsz', `is ${argsz}, must be at least ${IO_FDS_HEADER_SIZE}`);
  return w.out;
}

function readEntry(r: Reader, at: number, stride: number, f: string): IoFdEntry {
  const base = { gpaOffset: r.u64(at), size: r.u64(at + 8), fdIndex: r.u32(at + 16), flags: r.u32(at + 24) };
  const type = r.u32(at + 20);
  let e: IoFdEntry;
  if (type === IoFdType.IOREGIONFD) {
    e = { type, ...base, userData: r.u64(at + 32) };
  } else if (stride === IO_FD_ENTRY_SIZE) {
    e = {
      type: type as 0 | 2,
      ...base,
      shadowMemFdIndex: r.u32(at + 28),
      shadowOffset: r.u64(at + 32),
      datamatch: r.u64(at + 40),
    };
  } else {
    // The spec's 40-byte ioeventfd has padding @28 and datamatch @32, and no room for a shadow.
    if (type === IoFdType.IOEVENTFD_SHADOW) r.fail(`${f}.type`, 'is IOEVENTFD_SHADOW in a 40-byte entry');
    e = { type: type as 0, ...base, shadowMemFdIndex: 0, shadowOffset: 0n, datamatch: r.u64(at + 32) };
  }
  checkEntry(e, f);
  return e;
}

export function decodeRegionIoFdsReply(payload: Uint8Array): RegionIoFdsReply {
  const r = new Reader(REP, payload).atLeast(IO_FDS_HEADER_SIZE);
  const m: RegionIoFdsReply = { argsz: r.u32(0), index: r.u32(8), count: r.u32(12), entries: [] };
  if (r.u32(4) !== 0) r.fail('flags', `is ${r.u32(4)}, must be 0`);
  if (m.argsz < IO_FDS_HEADER_SIZE) r.fail('argsz', `is ${m.argsz}, must be at least ${IO_FDS_HEADER_SIZE}`);
  // Header only: no sub-regions, or the client's argsz was too small (argsz then says what is needed).
  if (r.length === IO_FDS_HEADER_SIZE) return m;
  if (m.count === 0) r.fail('count', `is 0 but ${r.length - IO_FDS_HEADER_SIZE} entry bytes follow`);
  if (r.length !== m.argsz) r.fail('argsz', `is ${m.argsz} but the reply is ${r.length} bytes`);
  const stride = (m.argsz - IO_FDS_HEADER_SIZE) / m.count;
  if (stride !== IO_FD_ENTRY_SIZE && stride !== IO_FD_ENTRY_SIZE_SPEC) {
    r.fail('argsz', `gives an entry size of ${stride} for count ${m.count}, must be 40 or 48`);
  }
  for (let i = 0; i < m.count; i++) {
    m.entries.push(readEntry(r, IO_FDS_HEADER_SIZE + stride * i, stride, `entries[${i}]`));
  }
  return m;
}
