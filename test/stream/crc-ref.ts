// The CRC-32C reference the stream tests check against: one bit at a time, straight from the definition
// (reflected polynomial 0x82F63B78, init and final XOR 0xFFFFFFFF), sharing no code with src/.

/** CRC-32C of `data`, continuing from `seed` (a previous result; 0 to start). */
export function crcRef(data: Uint8Array, seed = 0): number {
  let c = ~seed >>> 0;
  for (const b of data) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return ~c >>> 0;
}
