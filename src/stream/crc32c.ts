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
type CrcCopy = (dst: Uint8Array, from: number, at: number, src: Uint8Array, seed: number) => number;
let nativeCrc: Crc | null | undefined;
let nativeCopy: CrcCopy | null = null;
let nativeCopySpaced: typeof crc32cCopySpacedJs | null = null;
let nativeName = '';

function loadNative(): Crc | null {
  try {
    const n = native();
    if (typeof n.crc32c !== 'function') return null;
    nativeName = n.crc32cImplementation();
    // An addon built before crc32cCopy existed still checksums natively; the copy then runs in two passes.
    nativeCopy = typeof n.crc32cCopy === 'function' ? n.crc32cCopy.bind(n) : null;
    nativeCopySpaced = typeof n.crc32cCopySpaced === 'function' ? n.crc32cCopySpaced.bind(n) : null;
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

/**
 * Which implementation handles long inputs: the addon's ('native vpclmulqdq', 'native sse4.2',
 * 'native table') or 'typescript'.
 */
export function crc32cImplementation(): string {
  if (nativeCrc === undefined) nativeCrc = loadNative();
  return nativeCrc ? `native ${nativeName}` : 'typescript';
}

/**
 * Copies `src` into `dst` at `at` and returns the CRC-32C of dst[from, at) (bytes written ahead of the
 * copy, say a record header) followed by `src`, continuing from `crc`. Natively the copy and the checksum
 * are one pass over `src`: a sender that must copy what it checksums (so the checksum is true of the bytes
 * that go out even if the source changes meanwhile) reads them once, not twice.
 */
export function crc32cCopy(dst: Uint8Array, from: number, at: number, src: Uint8Array, crc = 0): number {
  if (nativeCrc === undefined) nativeCrc = loadNative();
  if (nativeCopy) return nativeCopy(dst, from, at, src, crc);
  if (!(from >= 0 && from <= at && at + src.byteLength <= dst.byteLength))
    throw new RangeError(`crc32cCopy: [${from}, ${at}) and ${src.byteLength} bytes do not fit ${dst.byteLength}`);
  dst.set(src, at);
  return crc32c(dst.subarray(from, at + src.byteLength), crc);
}

/**
 * crc32cCopy for pieces with gaps between them: `src` lands in `dst` in pieces of `piece` bytes, piece k at
 * `at` + k * (piece + gap), and the `gap` bytes before each piece after the first are the caller's,
 * written beforehand (a record header between two pages). Returns the CRC-32C of dst[from, end of the
 * last piece), continuing from `crc`: a run of page records copied and checksummed in one native call.
 */
export function crc32cCopySpaced(...args: Parameters<typeof crc32cCopySpacedJs>): number {
  if (nativeCrc === undefined) nativeCrc = loadNative();
  return (nativeCopySpaced ?? crc32cCopySpacedJs)(...args);
}

/** crc32cCopySpaced piece by piece through crc32cCopy: the fallback, and a reference for the native one. */
export function crc32cCopySpacedJs(
  dst: Uint8Array,
  from: number,
  at: number,
  src: Uint8Array,
  crc: number,
  piece: number,
  gap: number,
): number {
  if (!(Number.isSafeInteger(piece) && piece >= 1 && Number.isSafeInteger(gap) && gap >= 0))
    throw new RangeError(`crc32cCopySpaced: piece ${piece} and gap ${gap} must be integers, piece at least 1`);
  const pieces = Math.ceil(src.byteLength / piece);
  if (pieces > 0 && at + src.byteLength + (pieces - 1) * gap > dst.byteLength)
    throw new RangeError(
      `crc32cCopySpaced: ${pieces} pieces and their gaps do not fit ${dst.byteLength} bytes at ${at}`,
    );
  let c = crc32cCopy(dst, from, at, src.subarray(0, piece), crc);
  for (let off = piece, to = at + piece + gap; off < src.byteLength; off += piece, to += piece + gap)
    c = crc32cCopy(dst, to - gap, to, src.subarray(off, off + piece), c);
  return c;
}

/** GF(2) 32x32 matrix (32 column vectors) times a vector. */
function gf2Times(mat: Uint32Array, vec: number): number {
  let sum = 0;
  for (let i = 0; vec !== 0; i++, vec >>>= 1) if (vec & 1) sum ^= mat[i]!;
  return sum >>> 0;
}

/** Operators appending 2^k zero bytes (k = 0..52: any safe-integer length) to a raw CRC, built on first use. */
let zeroOps: Uint32Array[] | null = null;

function zeroOperators(): Uint32Array[] {
  if (zeroOps) return zeroOps;
  // One zero bit: shift right, feeding the polynomial back when bit 0 falls out; squared three times
  // it appends one zero byte, and each further squaring doubles the bytes.
  let op = new Uint32Array(32);
  op[0] = POLY;
  for (let n = 1; n < 32; n++) op[n] = (1 << (n - 1)) >>> 0;
  const square = (m: Uint32Array) => m.map((col) => gf2Times(m, col));
  for (let i = 0; i < 3; i++) op = square(op);
  const ops = [op];
  for (let k = 1; k < 53; k++) ops.push(square(ops[k - 1]!));
  zeroOps = ops;
  return ops;
}

/**
 * CRC-32C of a ++ b from crc32c(a), crc32c(b) and b's length (zlib's crc32_combine, for this polynomial):
 * a checksum computed piecewise, say while a payload was built, joins the bytes around it without
 * reading the payload again.
 */
export function crc32cCombine(crcA: number, crcB: number, lengthB: number): number {
  if (!Number.isSafeInteger(lengthB) || lengthB < 0) throw new RangeError(`crc32cCombine: length ${lengthB}`);
  const ops = zeroOperators();
  // The CRC of a ++ b is crc(a) carried over b's length in zero bytes, xor crc(b) (the pre and post
  // inversions cancel out between the two terms).
  let crc = crcA >>> 0;
  for (let k = 0, len = lengthB; len > 0; k++, len = Math.floor(len / 2)) {
    if (len % 2 === 1) crc = gf2Times(ops[k]!, crc);
  }
  return (crc ^ crcB) >>> 0;
}
