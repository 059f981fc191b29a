// Bounds-checked little-endian readers and range-checked writers shared by every codec here.
// Every failure is a VfioError(EINVAL) whose text names the message and the field, so a server can put it
// straight into an error reply and a log line says what was wrong.

import { VfioError } from '../../errors.ts';
import { Errno } from '../errno.ts';

const U64_MAX = (1n << 64n) - 1n;

export function fail(msg: string, field: string, problem: string, errno: number = Errno.EINVAL): never {
  throw new VfioError(errno, `${msg}: ${field} ${problem}`);
}

export function hex(v: number | bigint): string {
  return `0x${v.toString(16)}`;
}

/** Rejects any bit of `value` outside `known` (a u32 flags word). */
export function checkFlags(msg: string, field: string, value: number, known: number): void {
  const unknown = (value & ~known) >>> 0;
  if (unknown !== 0) fail(msg, field, `has unknown bits ${hex(unknown)} (value ${hex(value)})`);
}

export function checkU32(msg: string, field: string, v: number): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff_ffff) fail(msg, field, `is not a u32: ${v}`);
}

export function checkU64(msg: string, field: string, v: bigint): void {
  if (typeof v !== 'bigint' || v < 0n || v > U64_MAX) fail(msg, field, `is not a u64: ${v}`);
}

/** Read side of a payload. Offsets are checked too, so a codec bug surfaces as EINVAL, never a RangeError. */
export class Reader {
  private readonly dv: DataView;

  constructor(
    readonly msg: string,
    readonly bytes: Uint8Array,
  ) {
    this.dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  get length(): number {
    return this.bytes.byteLength;
  }

  fail(field: string, problem: string, errno?: number): never {
    return fail(this.msg, field, problem, errno);
  }

  atLeast(n: number, what = 'payload'): this {
    if (this.length < n) this.fail(what, `is ${this.length} bytes, needs at least ${n}`);
    return this;
  }

  exactly(n: number, what = 'payload'): this {
    if (this.length !== n) this.fail(what, `is ${this.length} bytes, must be exactly ${n}`);
    return this;
  }

  private need(off: number, size: number): void {
    if (off < 0 || off + size > this.length) this.fail('payload', `is too short for ${size} bytes at offset ${off}`);
  }

  u16(off: number): number {
    this.need(off, 2);
    return this.dv.getUint16(off, true);
  }

  u32(off: number): number {
    this.need(off, 4);
    return this.dv.getUint32(off, true);
  }

  i32(off: number): number {
    this.need(off, 4);
    return this.dv.getInt32(off, true);
  }

  u64(off: number): bigint {
    this.need(off, 8);
    return this.dv.getBigUint64(off, true);
  }

  /** A view (no copy) of `len` bytes at `off`: decoded data aliases the input buffer. */
  slice(off: number, len: number): Uint8Array {
    this.need(off, len);
    return this.bytes.subarray(off, off + len);
  }
}

/** Write side: a fresh zeroed buffer; every value is range-checked, so nothing is silently truncated. */
export class Writer {
  readonly out: Uint8Array;
  private readonly dv: DataView;

  constructor(
    readonly msg: string,
    size: number,
  ) {
    this.out = new Uint8Array(size);
    this.dv = new DataView(this.out.buffer);
  }

  u16(off: number, field: string, v: number): this {
    if (!Number.isInteger(v) || v < 0 || v > 0xffff) fail(this.msg, field, `is not a u16: ${v}`);
    this.dv.setUint16(off, v, true);
    return this;
  }

  u32(off: number, field: string, v: number): this {
    checkU32(this.msg, field, v);
    this.dv.setUint32(off, v, true);
    return this;
  }

  i32(off: number, field: string, v: number): this {
    if (!Number.isInteger(v) || v < -0x8000_0000 || v > 0x7fff_ffff) fail(this.msg, field, `is not an s32: ${v}`);
    this.dv.setInt32(off, v, true);
    return this;
  }

  u64(off: number, field: string, v: bigint): this {
    checkU64(this.msg, field, v);
    this.dv.setBigUint64(off, v, true);
    return this;
  }

  bytes(off: number, src: Uint8Array): this {
    this.out.set(src, off);
    return this;
  }
}

/** Codec pair for the many messages whose payload is empty (DMA_MAP reply, DEVICE_RESET, …). */
export function encodeEmpty(): Uint8Array {
  return new Uint8Array(0);
}

export function decodeEmpty(msg: string, payload: Uint8Array): void {
  new Reader(msg, payload).exactly(0);
}

/** Optional argsz in an encoder's input: defaults to the natural size, may be larger, never smaller. */
export function argszOr(msg: string, given: number | undefined, min: number): number {
  if (given === undefined) return min;
  checkU32(msg, 'argsz', given);
  if (given < min) fail(msg, 'argsz', `is ${given}, must be at least ${min}`);
  return given;
}

const ADDRESS_SPACE = 1n << 64n;

/** An (address, size) range must not wrap past the end of the 64-bit address space. */
export function checkRange(msg: string, field: string, address: bigint, size: bigint): void {
  if (address + size > ADDRESS_SPACE) fail(msg, field, `range ${hex(address)}+${hex(size)} wraps past 2^64`);
}
