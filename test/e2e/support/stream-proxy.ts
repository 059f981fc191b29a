// A TCP proxy between a source and a destination VMM that damages the migration stream on its way, for
// the stream-corruption tests. It parses the stream with the project's own decoder (src/stream), hands
// each section's raw bytes to an `edit` that returns what to forward instead (the same bytes, a flipped
// byte, a half section, a copy twice, a re-encoded payload …), and passes the return path (READY, ERROR,
// GO) through untouched. With `renumber`, every forwarded section gets the next sequence number and a
// fresh CRC-32C, and the EOF record the count forwarded: a stream valid by its framing and checksums whose
// content is wrong, which only the loaders can refuse.

import { once } from 'node:events';
import { connect, createServer, type Socket } from 'node:net';
import { EOF_RECORD_BYTES, RecordType, SECTION_TRAILER } from '../../../src/stream/constants.ts';
import { crc32c } from '../../../src/stream/crc32c.ts';
import { type DecodedSection, StreamDecoder } from '../../../src/stream/decoder.ts';
import { encodeHeader } from '../../../src/stream/encoder.ts';

export interface EditResult {
  /** Raw bytes to forward in place of the section (each a whole section when renumbering). */
  out: Uint8Array[];
  /** Stop here: end the stream to the destination (FIN) and drop the rest of the source's bytes. */
  end?: boolean;
}

/** Decides what becomes of each section; `raw` is the section's bytes as the source sent them. */
export type SectionEdit = (s: DecodedSection, raw: Uint8Array) => EditResult;

export const passThrough: SectionEdit = (_s, raw) => ({ out: [raw] });

export interface StreamProxy {
  uri: string;
  /** Every section the source sent (its header fields), in order, as the proxy saw it. */
  readonly seen: DecodedSection[];
  close(): Promise<void>;
}

const HEADER_BYTES = encodeHeader().byteLength;

/** The stream's bytes from some offset on, kept until they are forwarded. */
class ByteLog {
  private chunks: { at: number; b: Buffer }[] = [];
  private end = 0;

  push(b: Buffer): void {
    this.chunks.push({ at: this.end, b });
    this.end += b.byteLength;
  }

  slice(from: number, to: number): Buffer {
    const out = Buffer.allocUnsafe(to - from);
    for (const { at, b } of this.chunks) {
      const s = Math.max(from, at);
      const e = Math.min(to, at + b.byteLength);
      if (s < e) b.copy(out, s - from, s - at, e - at);
    }
    return out;
  }

  /** Forgets bytes before `offset`. */
  drop(offset: number): void {
    while (this.chunks.length > 0 && this.chunks[0]!.at + this.chunks[0]!.b.byteLength <= offset) this.chunks.shift();
  }

  get length(): number {
    return this.end;
  }
}

/** Sets a section's sequence number and recomputes its CRC-32C (over everything before the CRC). */
export function reseal(raw: Uint8Array, seq: number): Uint8Array {
  const out = Uint8Array.from(raw);
  const dv = new DataView(out.buffer);
  dv.setUint32(out.byteLength - 8, seq, false);
  dv.setUint32(out.byteLength - 4, crc32c(out.subarray(0, out.byteLength - 4)), false);
  return out;
}

/** The section with another payload: header (payload length updated) + payload + trailer, resealed. */
export function withPayload(s: DecodedSection, raw: Uint8Array, payload: Uint8Array): Uint8Array {
  const headLen = s.payloadOffset - s.offset;
  const out = new Uint8Array(headLen + payload.byteLength + SECTION_TRAILER);
  out.set(raw.subarray(0, headLen));
  new DataView(out.buffer).setUint32(headLen - 4, payload.byteLength, false);
  out.set(payload, headLen);
  out.set(raw.subarray(raw.byteLength - SECTION_TRAILER), headLen + payload.byteLength);
  return reseal(out, s.seq);
}

function eofRecord(count: number): Uint8Array {
  const rec = new Uint8Array(EOF_RECORD_BYTES);
  const dv = new DataView(rec.buffer);
  rec[0] = RecordType.EOF;
  dv.setUint32(1, count, false);
  dv.setUint32(5, crc32c(rec.subarray(0, 5)), false);
  return rec;
}

/** Listens on 127.0.0.1 (any port); each connection is proxied to the destination at `target`. */
export async function startStreamProxy(
  target: string,
  edit: SectionEdit,
  options: { renumber?: boolean } = {},
): Promise<StreamProxy> {
  const m = /^tcp:(.+):(\d+)$/.exec(target);
  if (!m) throw new Error(`not a tcp: URI: ${target}`);
  const seen: DecodedSection[] = [];
  const sockets = new Set<Socket>();
  const server = createServer({ noDelay: true }, (src) => {
    sockets.add(src);
    const dst = connect({ host: m[1]!, port: Number(m[2]), noDelay: true });
    sockets.add(dst);
    const decoder = new StreamDecoder();
    const log = new ByteLog();
    let forwarded = 0; // stream offset up to which the source's bytes are dealt with
    let seq = 0;
    let stopped = false;
    const send = (b: Uint8Array) => {
      if (!dst.destroyed) dst.write(b);
    };
    src.on('data', (chunk: Buffer) => {
      if (stopped) return;
      log.push(chunk);
      if (decoder.ended) {
        send(chunk); // the return path after EOF (GO)
        forwarded = log.length;
        return;
      }
      let sections: DecodedSection[];
      try {
        sections = decoder.push(chunk);
      } catch {
        // Not a stream this proxy can follow (the source's own bytes are never damaged): give up on both.
        src.destroy();
        dst.destroy();
        return;
      }
      for (const s of sections) {
        if (forwarded === 0) {
          send(log.slice(0, HEADER_BYTES));
          forwarded = HEADER_BYTES;
        }
        seen.push(s);
        const r = edit(s, log.slice(s.offset, s.offset + s.byteLength));
        for (const piece of r.out) send(options.renumber ? reseal(piece, seq++) : piece);
        forwarded = s.offset + s.byteLength;
        if (r.end) {
          stopped = true;
          dst.end();
          return;
        }
      }
      if (decoder.ended) {
        send(options.renumber ? eofRecord(seq) : log.slice(forwarded, forwarded + EOF_RECORD_BYTES));
        send(log.slice(forwarded + EOF_RECORD_BYTES, log.length));
        forwarded = log.length;
      }
      log.drop(forwarded);
    });
    dst.on('data', (b: Buffer) => {
      if (!src.destroyed) src.write(b);
    });
    // Either side hanging up ends the other once what is in flight is written; errors end both. A
    // destination that closed its socket makes the source's next write fail, as it would without a proxy
    // in between (else the source would stream on into a proxy that only discards).
    src.on('end', () => dst.end());
    dst.on('end', () => src.end());
    dst.on('close', () => src.end(() => src.destroy()));
    src.on('error', () => dst.destroy());
    dst.on('error', () => src.destroy());
    src.on('close', () => sockets.delete(src));
    dst.on('close', () => sockets.delete(dst));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  return {
    uri: `tcp:127.0.0.1:${port}`,
    seen,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}
