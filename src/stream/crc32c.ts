// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), slicing-by-8: eight table lookups per 8 bytes.
// It covers every byte of a migration stream, so it is written for speed rather than brevity.

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

/** CRC-32C of `data`, continuing from `crc` (the result of a previous call; 0 to start). */
export function crc32c(data: Uint8Array, crc = 0): number {
  let c = ~crc >>> 0;
  let i = 0;
  const n = data.byteLength;
  // Unaligned head, then 8 bytes at a time through a DataView-free Uint32 view where alignment allows.
  while (i < n && (data.byteOffset + i) % 4 !== 0) c = T[(c ^ data[i++]!) & 0xff]! ^ (c >>> 8);
  const words = Math.floor((n - i) / 8);
  if (words > 0) {
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
