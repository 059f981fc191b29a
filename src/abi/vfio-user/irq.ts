// DEVICE_GET_IRQ_INFO (cmd 7, `struct vfio_irq_info`, 16 bytes both ways) and DEVICE_SET_IRQS (cmd 8,
// `struct vfio_irq_set`, 20 bytes + BOOL data; eventfds travel as fds). SET_IRQS has an empty reply.
// Checks that need the device's vector counts (start/count in range) or the fds belong to the server.

import { argszOr, checkFlags, decodeEmpty, encodeEmpty, fail, hex, Reader, Writer } from './wire.ts';

/** PCI IRQ indexes; libvfio-user has exactly these five. */
export const IrqIndex = {
  INTX: 0,
  MSI: 1,
  MSIX: 2,
  ERR: 3,
  REQ: 4,
} as const;

export const IRQ_INDEX_COUNT = 5;

export const IrqInfoFlag = {
  EVENTFD: 1 << 0,
  MASKABLE: 1 << 1,
  AUTOMASKED: 1 << 2,
  NORESIZE: 1 << 3,
} as const;

export const IRQ_INFO_FLAGS_KNOWN =
  IrqInfoFlag.EVENTFD | IrqInfoFlag.MASKABLE | IrqInfoFlag.AUTOMASKED | IrqInfoFlag.NORESIZE;

/** SET_IRQS flags: exactly one data type (bits 0-2) and exactly one action (bits 3-5). */
export const IrqSetFlag = {
  DATA_NONE: 1 << 0,
  DATA_BOOL: 1 << 1,
  DATA_EVENTFD: 1 << 2,
  ACTION_MASK: 1 << 3,
  ACTION_UNMASK: 1 << 4,
  ACTION_TRIGGER: 1 << 5,
} as const;

export const IRQ_SET_DATA_TYPE_MASK = 0b000111;
export const IRQ_SET_ACTION_TYPE_MASK = 0b111000;

export const IRQ_INFO_SIZE = 16;
export const IRQ_SET_SIZE = 20;

export interface IrqInfo {
  argsz: number;
  flags: number;
  index: number;
  /** Number of vectors the device configured for this index. */
  count: number;
}

export interface IrqSet {
  argsz: number;
  flags: number;
  index: number;
  start: number;
  count: number;
  /** One byte per vector, present exactly with DATA_BOOL (a view into the input when decoded). */
  data?: Uint8Array;
}

const INFO_REQ = 'DEVICE_GET_IRQ_INFO request';
const INFO_REP = 'DEVICE_GET_IRQ_INFO reply';
const SET_REQ = 'DEVICE_SET_IRQS request';

function checkIndex(msg: string, index: number): void {
  if (index >= IRQ_INDEX_COUNT) fail(msg, 'index', `is ${index}, must be below ${IRQ_INDEX_COUNT}`);
}

function encodeInfo(msg: string, m: Omit<IrqInfo, 'argsz'> & { argsz?: number }): Uint8Array {
  checkIndex(msg, m.index);
  return new Writer(msg, IRQ_INFO_SIZE)
    .u32(0, 'argsz', argszOr(msg, m.argsz, IRQ_INFO_SIZE))
    .u32(4, 'flags', m.flags)
    .u32(8, 'index', m.index)
    .u32(12, 'count', m.count).out;
}

function decodeInfo(msg: string, payload: Uint8Array): IrqInfo {
  const r = new Reader(msg, payload).exactly(IRQ_INFO_SIZE);
  const m = { argsz: r.u32(0), flags: r.u32(4), index: r.u32(8), count: r.u32(12) };
  if (m.argsz < IRQ_INFO_SIZE) r.fail('argsz', `is ${m.argsz}, must be at least ${IRQ_INFO_SIZE}`);
  checkIndex(msg, m.index);
  return m;
}

/** Only argsz and index matter in a request. */
export function encodeIrqInfoRequest(m: { argsz?: number; index: number; flags?: number; count?: number }) {
  return encodeInfo(INFO_REQ, { argsz: m.argsz, index: m.index, flags: m.flags ?? 0, count: m.count ?? 0 });
}

export function decodeIrqInfoRequest(payload: Uint8Array): IrqInfo {
  return decodeInfo(INFO_REQ, payload);
}

export function encodeIrqInfoReply(m: Omit<IrqInfo, 'argsz'> & { argsz?: number }): Uint8Array {
  checkFlags(INFO_REP, 'flags', m.flags, IRQ_INFO_FLAGS_KNOWN);
  return encodeInfo(INFO_REP, m);
}

export function decodeIrqInfoReply(payload: Uint8Array): IrqInfo {
  const m = decodeInfo(INFO_REP, payload);
  checkFlags(INFO_REP, 'flags', m.flags, IRQ_INFO_FLAGS_KNOWN);
  return m;
}

const isOneBit = (v: number) => v !== 0 && (v & (v - 1)) === 0;

function checkIrqSetFlags(flags: number): void {
  checkFlags(SET_REQ, 'flags', flags, IRQ_SET_DATA_TYPE_MASK | IRQ_SET_ACTION_TYPE_MASK);
  if (!isOneBit(flags & IRQ_SET_DATA_TYPE_MASK)) {
    fail(SET_REQ, 'flags', `must have exactly one data type, got ${hex(flags)}`);
  }
  if (!isOneBit(flags & IRQ_SET_ACTION_TYPE_MASK)) {
    fail(SET_REQ, 'flags', `must have exactly one action, got ${hex(flags)}`);
  }
}

/** The rules that need nothing but the message itself (libvfio-user's device_set_irqs_validate). */
function checkIrqSet(m: Omit<IrqSet, 'argsz'>): void {
  checkIrqSetFlags(m.flags);
  const data = m.flags & IRQ_SET_DATA_TYPE_MASK;
  const action = m.flags & IRQ_SET_ACTION_TYPE_MASK;
  checkIndex(SET_REQ, m.index);
  if (m.index === IrqIndex.ERR || m.index === IrqIndex.REQ) {
    if (action !== IrqSetFlag.ACTION_TRIGGER) fail(SET_REQ, 'flags', `must be TRIGGER for index ${m.index}`);
    if (m.count > 1) fail(SET_REQ, 'count', `is ${m.count}, at most 1 for index ${m.index}`);
  }
  if (m.count === 0) {
    // count 0 means "disable the whole index", spelled only as start 0, NONE, TRIGGER.
    if (m.start !== 0) fail(SET_REQ, 'start', `is ${m.start} with count 0, must be 0`);
    if (data !== IrqSetFlag.DATA_NONE || action !== IrqSetFlag.ACTION_TRIGGER) {
      fail(SET_REQ, 'flags', `must be NONE|TRIGGER with count 0, got ${hex(m.flags)}`);
    }
  }
  if (m.start + m.count > 0xffff_ffff) fail(SET_REQ, 'start+count', 'overflows u32');
  const bool = data === IrqSetFlag.DATA_BOOL;
  if (bool !== (m.data !== undefined)) fail(SET_REQ, 'data', 'must be given exactly with DATA_BOOL');
  if (m.data && m.data.byteLength !== m.count) {
    fail(SET_REQ, 'data', `has ${m.data.byteLength} bytes, must be count = ${m.count}`);
  }
}

export function encodeIrqSetRequest(m: Omit<IrqSet, 'argsz'> & { argsz?: number }): Uint8Array {
  checkIrqSet(m);
  const len = IRQ_SET_SIZE + (m.data?.byteLength ?? 0);
  const w = new Writer(SET_REQ, len)
    .u32(0, 'argsz', m.argsz === undefined ? len : argszOr(SET_REQ, m.argsz, IRQ_SET_SIZE))
    .u32(4, 'flags', m.flags)
    .u32(8, 'index', m.index)
    .u32(12, 'start', m.start)
    .u32(16, 'count', m.count);
  if (m.data) w.bytes(IRQ_SET_SIZE, m.data);
  return w.out;
}

// argsz only has to cover the fixed part: libvfio-user checks no more, and clients differ on whether the
// BOOL bytes are counted. The payload itself must hold exactly `count` BOOL bytes.
export function decodeIrqSetRequest(payload: Uint8Array): IrqSet {
  const r = new Reader(SET_REQ, payload).atLeast(IRQ_SET_SIZE);
  const m: IrqSet = { argsz: r.u32(0), flags: r.u32(4), index: r.u32(8), start: r.u32(12), count: r.u32(16) };
  if (m.argsz < IRQ_SET_SIZE) r.fail('argsz', `is ${m.argsz}, must be at least ${IRQ_SET_SIZE}`);
  checkIrqSetFlags(m.flags);
  if (m.flags & IrqSetFlag.DATA_BOOL) {
    r.exactly(IRQ_SET_SIZE + m.count, 'payload (DATA_BOOL)');
    m.data = r.slice(IRQ_SET_SIZE, m.count);
  } else {
    r.exactly(IRQ_SET_SIZE);
  }
  checkIrqSet(m);
  return m;
}

export function encodeIrqSetReply(): Uint8Array {
  return encodeEmpty();
}

export function decodeIrqSetReply(payload: Uint8Array): void {
  decodeEmpty('DEVICE_SET_IRQS reply', payload);
}
