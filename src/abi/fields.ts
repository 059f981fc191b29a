// A tiny table-driven struct codec: a struct is a list of fixed-width little-endian (host-order) integer fields.
// Tables are data, so the C layout test and the region's access checks read the very same table.

import { VfioError } from '../errors.ts';
import { Errno } from './errno.ts';

export type FieldWidth = 4 | 8;

export interface FieldSpec<N extends string = string> {
  readonly name: N;
  readonly offset: number;
  readonly width: FieldWidth;
}

export interface StructSpec<N extends string = string> {
  readonly name: string;
  readonly size: number;
  readonly fields: readonly FieldSpec<N>[];
}

export type StructValue<N extends string> = Record<N, bigint>;

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export function readField(bytes: Uint8Array, offset: number, width: FieldWidth): bigint {
  const dv = view(bytes);
  return width === 4 ? BigInt(dv.getUint32(offset, true)) : dv.getBigUint64(offset, true);
}

export function writeField(bytes: Uint8Array, offset: number, width: FieldWidth, value: bigint): void {
  const dv = view(bytes);
  if (width === 4) dv.setUint32(offset, Number(BigInt.asUintN(32, value)), true);
  else dv.setBigUint64(offset, BigInt.asUintN(64, value), true);
}

/** Encodes every field of `spec` (missing fields are 0) into a fresh buffer of exactly `spec.size` bytes. */
export function encodeStruct<N extends string>(spec: StructSpec<N>, value: Partial<StructValue<N>>): Uint8Array {
  const out = new Uint8Array(spec.size);
  for (const f of spec.fields) writeField(out, f.offset, f.width, value[f.name] ?? 0n);
  return out;
}

export function decodeStruct<N extends string>(spec: StructSpec<N>, bytes: Uint8Array): StructValue<N> {
  if (bytes.byteLength < spec.size) {
    throw new VfioError(Errno.EINVAL, `${spec.name} needs ${spec.size} bytes, got ${bytes.byteLength}`);
  }
  const out = {} as StructValue<N>;
  for (const f of spec.fields) out[f.name] = readField(bytes, f.offset, f.width);
  return out;
}

/** The field that an access of exactly (offset, length) addresses, if any. */
export function fieldAt<N extends string>(
  spec: StructSpec<N>,
  offset: number,
  length: number,
): FieldSpec<N> | undefined {
  return spec.fields.find((f) => f.offset === offset && f.width === length);
}

export function fieldNamed<N extends string>(spec: StructSpec<N>, name: N): FieldSpec<N> {
  const f = spec.fields.find((x) => x.name === name);
  if (!f) throw new Error(`${spec.name} has no field ${name}`);
  return f;
}
