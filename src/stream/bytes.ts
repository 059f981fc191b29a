// Big-endian byte helpers for building stream records.

export function be8(v: number): Uint8Array {
  return Uint8Array.of(v & 0xff);
}

export function be32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, false);
  return b;
}

export function be64(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, v), false);
  return b;
}

/** u8 length + bytes of an ASCII/UTF-8 name of at most 255 bytes. */
export function shortString(s: string): Uint8Array {
  const text = new TextEncoder().encode(s);
  if (text.byteLength > 255) throw new RangeError(`"${s}" is longer than 255 bytes`);
  const out = new Uint8Array(1 + text.byteLength);
  out[0] = text.byteLength;
  out.set(text, 1);
  return out;
}

export function concat(parts: readonly Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.byteLength;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}
