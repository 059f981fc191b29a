// A queue of byte chunks as they arrive from a socket or a file, read from the front in whatever pieces
// a parser needs: the one such queue behind the migration stream decoder, the return-path decoder and the
// QMP JSON reader (what QEMU's QEMUFile buffer and json-streamer's token list do for it). Chunks are kept
// by reference, never copied on the way in; a read that lies within one chunk is a view of it, one that
// spans chunks is assembled once into fresh memory. Hand in chunks that will not be reused.

const EMPTY = new Uint8Array(0);

export class ByteQueue {
  private chunks: Uint8Array[] = [];
  /** Index of the first live chunk in `chunks`. */
  private head = 0;
  private bytes = 0;

  /** Bytes buffered. */
  get length(): number {
    return this.bytes;
  }

  /** Appends a chunk (by reference). */
  push(chunk: Uint8Array): void {
    if (chunk.byteLength === 0) return;
    this.chunks.push(chunk);
    this.bytes += chunk.byteLength;
  }

  /** The first buffered chunk (a view; empty when nothing is buffered): for a parser that walks bytes. */
  front(): Uint8Array {
    return this.head < this.chunks.length ? this.chunks[this.head]! : EMPTY;
  }

  /** The first `n` buffered bytes as one array, without consuming them (copies only across chunks); null if fewer. */
  peek(n: number): Uint8Array | null {
    if (this.bytes < n) return null;
    if (n === 0) return EMPTY;
    const first = this.chunks[this.head]!;
    if (first.byteLength >= n) return first.subarray(0, n);
    // Not zero-filled first: every byte is written below.
    const raw = Buffer.allocUnsafeSlow(n);
    const out = new Uint8Array(raw.buffer, raw.byteOffset, n);
    this.copyTo(out, n);
    return out;
  }

  /** Copies the first `n` buffered bytes (default all) to the start of `dst`, without consuming them. */
  copyTo(dst: Uint8Array, n = this.bytes): void {
    let at = 0;
    for (let i = this.head; at < n; i++) {
      const c = this.chunks[i]!;
      const k = Math.min(c.byteLength, n - at);
      dst.set(k === c.byteLength ? c : c.subarray(0, k), at);
      at += k;
    }
  }

  /** Consumes the first `n` bytes (at most what is buffered). */
  consume(n: number): void {
    if (n > this.bytes) throw new RangeError(`cannot consume ${n} bytes, ${this.bytes} buffered`);
    let left = n;
    while (left > 0) {
      const c = this.chunks[this.head]!;
      if (c.byteLength <= left) {
        this.chunks[this.head++] = EMPTY;
        left -= c.byteLength;
      } else {
        this.chunks[this.head] = c.subarray(left);
        left = 0;
      }
    }
    if (this.head === this.chunks.length) {
      this.chunks.length = 0;
      this.head = 0;
    } else if (this.head > 64 && this.head * 2 > this.chunks.length) {
      this.chunks = this.chunks.slice(this.head);
      this.head = 0;
    }
    this.bytes -= n;
  }

  /** Consumes the first `n` bytes and returns them (a view of a pushed chunk when they lie in one); null if fewer. */
  take(n: number): Uint8Array | null {
    const out = this.peek(n);
    if (out) this.consume(n);
    return out;
  }

  /** Drops everything buffered. */
  clear(): void {
    this.chunks = [];
    this.head = 0;
    this.bytes = 0;
  }
}
