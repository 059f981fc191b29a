// CRC-32C (Castagnoli: reflected polynomial 0x82F63B78, init and final XOR 0xFFFFFFFF; check value
// crc32c("123456789") = 0xE3069283). It covers every byte of a migration stream, guest RAM included, so
// it runs in the native addon (native/src/crc32c.c: SSE4.2 CRC32 instructions, or slicing-by-8 tables)
// whenever the addon loads, and in the slicing-by-8 TypeScript below otherwise, and for short inputs,
// where the call into C costs more than the bytes.
//
// Chaining: crc32c(b, crc32c(a)) === crc32c(a ++ b); a seed of 0 starts a new CRC.

import { native } from '../native/addon.ts';

const POLY = 0x82f63b78;
const T = new Uint32Array(8 * 256);
for (let i = 0; i < 256; i++) {
  let c = i;
  for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
  T[i] = c >>> 0;
}
for (let i = 0; i < 256; i++) {
  for (let t = 1; t < 8; t++) T[t * 256 + i] = (T[(t - 1) * 256 + i]! >>> 8) ^ T[T[(t - 1) * 256 + i]! & 0xff]!;
}

/** Whether a Uint32Array reads bytes little-endian (slicing-by-8 below relies on it). */
const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;

/** Inputs shorter than this stay in TypeScript (measured: the N-API call costs about 60 ns, 20 bytes of table CRC). */
const NATIVE_MIN_BYTES = 24;

/** CRC-32C in TypeScript: slicing-by-8, eight table lookups per 8 bytes. The fallback and the reference. */
export function crc32cJs(data: Uint8Array, crc = 0): number {
  let c = ~crc >>> 0;
  let i = 0;
  const n = data.byteLength;
  if (n >= 32 && LITTLE_ENDIAN) {
    // Unaligned head, then 8 bytes at a time through a Uint32Array view of the aligned middle.
    while ((data.byteOffset + i) % 4 !== 0) c = T[(c ^ data[i++]!) & 0xff]! ^ (c >>> 8);
    const words = Math.floor((n - i) / 8);
    const u32 = new Uint32Array(data.buffer, data.byteOffset + i, words * 2);
    for (let w = 0; w < u32.length; w += 2) {
      const a = u32[w]! ^ c;
      const b = u32[w + 1]!;
      c =
        T[7 * 256 + (a & 0xff)]! ^
        T[6 * 256 + ((a >>> 8) & 0xff)]! ^
        T[5 * 256 + ((a >>> 16) & 0xff)]! ^
        T[4 * 256 + (a >>> 24)]! ^
        T[3 * 256 + (b & 0xff)]! ^
        T[2 * 256 + ((b >>> 8) & 0xff)]! ^
        T[256 + ((b >>> 16) & 0xff)]! ^
        T[b >>> 24]!;
    }
    i += words * 8;
  }
  while (i < n) c = T[(c ^ data[i++]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

type Crc = (data: Uint8Array, crc?: number) => number;
let nativeCrc: Crc | null | undefined;
let nativeName = '';

function loadNative(): Crc | null {
  try {
    const n = native();
    if (typeof n.crc32c !== 'function') return null;
    nativeName = n.crc32cImplementation();
    return n.crc32c.bind(n);
  } catch {
    // Not built (or built without crc32c): the TypeScript version gives the same results, slower.
    return null;
  }
}

/** CRC-32C of `data`, continuing from `crc` (the result of a previous call; 0 to start). */
export function crc32c(data: Uint8Array, crc = 0): number {
  if (data.byteLength < NATIVE_MIN_BYTES) return crc32cJs(data, crc);
  if (nativeCrc === undefined) nativeCrc = loadNative();
  return nativeCrc ? nativeCrc(data, crc) : crc32cJs(data, crc);
}

/** Which implementation handles long inputs: the addon's ('native sse4.2', 'native table') or 'typescript'. */
export function crc32cImplementation(): string {
  if (nativeCrc === undefined) nativeCrc = loadNative();
  return nativeCrc ? `native ${nativeName}` : 'typescript';
}
