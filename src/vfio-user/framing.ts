// Reassembles vfio-user messages from a byte stream and attaches received fds to the message they came
// with. The socket asks `wanted()` before each recvmsg, so a read never crosses a message boundary and the
// fds it returns belong to the message being read (libvfio-user reads header, then payload, the same way).
//
// Copies: the socket may ask `target()` for the memory the next read should land in (the rest of the
// header, or of the current payload part) and receive straight into it; push() then finds the bytes
// already in place and copies nothing. A payload normally lands in a fresh buffer owned by the message;
// `placement` may instead put it in memory a caller supplied (a reply read straight into the caller's
// buffer, see Connection.request's replyInto): then the payload is split in a `payload` head and a `data`
// tail, the tail being the caller's memory.

import { Errno } from '../abi/errno.ts';
import { decodeHeader, type Header } from '../abi/vfio-user/header.ts';
import { HEADER_SIZE } from '../abi/vfio-user/limits.ts';
import { VfioError } from '../errors.ts';

export interface ReceivedMessage {
  header: Header;
  /**
   * The payload, in a buffer of its own. When the payload was placed (see PayloadPlacement) this is only its
   * first `head` bytes and `data` holds the rest.
   */
  payload: Uint8Array;
  /** The rest of a placed payload: the caller-supplied memory it was received into. */
  data?: Uint8Array;
  /** Owned by whoever handles the message: use them or close them. */
  fds: number[];
}

export interface FramingLimits {
  /** Largest msg_size accepted (header included). */
  maxMsgSize: number;
  /** Most fds one message may carry. */
  maxFds: number;
}

/**
 * Where a payload goes instead of a fresh buffer: its first `head` bytes in a small buffer of their own,
 * the rest straight into `data` (exactly `data.byteLength` bytes). Only used when the payload is exactly
 * `head + data.byteLength` bytes long; any other size gets a fresh buffer as usual.
 */
export interface PayloadPlacement {
  head: number;
  data: Uint8Array;
}

export class MessageAssembler {
  private readonly headerBuf = new Uint8Array(HEADER_SIZE);
  private headerFill = 0;
  private header: Header | null = null;
  /** The payload's parts, filled in order: [body] or [head, data]. */
  private parts: Uint8Array[] = [];
  private part = 0;
  private partFill = 0;
  private bodyFill = 0;
  private fds: number[] = [];
  /** Asked once per message header: memory the caller wants this payload received into. */
  placement: ((header: Header) => PayloadPlacement | undefined) | null = null;
  /**
   * Asked for a payload without a placement: memory of exactly `size` bytes to receive the whole payload
   * into instead of a fresh buffer (memory the caller reuses: every byte is overwritten before the
   * message is handed on), or undefined for a fresh buffer.
   */
  bodyMemory: ((header: Header, size: number) => Uint8Array | undefined) | null = null;

  constructor(private limits: FramingLimits) {}

  setLimits(limits: FramingLimits): void {
    this.limits = limits;
  }

  /** Bytes left in the current header or message: the most the next read should take. */
  wanted(): number {
    if (!this.header) return HEADER_SIZE - this.headerFill;
    return this.header.msgSize - HEADER_SIZE - this.bodyFill;
  }

  /**
   * The memory the next read should land in (never more than wanted(), never across a payload part): the
   * rest of the header or of the current part. A chunk pushed from exactly there is not copied.
   */
  target(): Uint8Array | null {
    if (!this.header) return this.headerBuf.subarray(this.headerFill);
    const p = this.parts[this.part];
    return p ? p.subarray(this.partFill) : null;
  }

  /** The header of the message whose payload is being received, or null between messages. */
  get receiving(): Header | null {
    return this.header;
  }

  /**
   * Moves a placed payload that is still arriving into fresh memory of our own, so no later byte of it
   * lands in the caller's buffer (its request gave up, and the buffer is the caller's again).
   */
  unplace(): void {
    if (!this.header || this.parts.length < 2) return;
    const body = new Uint8Array(this.header.msgSize - HEADER_SIZE);
    let at = 0;
    for (let i = 0; i <= this.part && i < this.parts.length; i++) {
      const p = this.parts[i]!;
      const n = i === this.part ? this.partFill : p.byteLength;
      body.set(p.subarray(0, n), at);
      at += n;
    }
    this.parts = [body];
    this.part = 0;
    this.partFill = at;
  }

  /**
   * Adds bytes (and the fds that came with them); returns every message completed. Throws a VfioError when
   * the framing is lost (bad header, too many fds): the caller must drop the connection, after closing the
   * fds `takeFds()` hands back.
   */
  push(chunk: Uint8Array, fds: readonly number[] = []): ReceivedMessage[] {
    const out: ReceivedMessage[] = [];
    this.fds.push(...fds);
    let i = 0;
    while (i < chunk.byteLength || (this.header && this.wanted() === 0)) {
      if (!this.header) {
        const take = Math.min(HEADER_SIZE - this.headerFill, chunk.byteLength - i);
        copyUnlessInPlace(this.headerBuf, this.headerFill, chunk, i, take);
        this.headerFill += take;
        i += take;
        if (this.headerFill < HEADER_SIZE) break;
        this.header = decodeHeader(this.headerBuf, { maxMsgSize: this.limits.maxMsgSize });
        this.startPayload(this.header);
      }
      while (this.wanted() > 0 && i < chunk.byteLength) {
        const p = this.parts[this.part]!;
        const take = Math.min(p.byteLength - this.partFill, chunk.byteLength - i);
        copyUnlessInPlace(p, this.partFill, chunk, i, take);
        this.partFill += take;
        this.bodyFill += take;
        i += take;
        if (this.partFill === p.byteLength && this.part < this.parts.length - 1) {
          this.part++;
          this.partFill = 0;
        }
      }
      if (this.wanted() === 0) {
        if (this.fds.length > this.limits.maxFds) {
          throw new VfioError(
            Errno.EINVAL,
            `message ${this.header.msgId} carries ${this.fds.length} fds, limit ${this.limits.maxFds}`,
          );
        }
        const m: ReceivedMessage = { header: this.header, payload: this.parts[0]!, fds: this.fds };
        if (this.parts.length > 1) m.data = this.parts[1]!;
        out.push(m);
        this.fds = [];
        this.header = null;
        this.parts = [];
        this.headerFill = 0;
      }
    }
    return out;
  }

  /** fds of a message not yet complete (for the caller to close when the connection goes away). */
  takeFds(): number[] {
    const fds = this.fds;
    this.fds = [];
    return fds;
  }

  private startPayload(header: Header): void {
    const size = header.msgSize - HEADER_SIZE;
    const place = size > 0 ? this.placement?.(header) : undefined;
    if (place && place.head >= 0 && place.data.byteLength > 0 && place.head + place.data.byteLength === size) {
      this.parts = place.head > 0 ? [new Uint8Array(place.head), place.data] : [new Uint8Array(0), place.data];
      this.part = place.head > 0 ? 0 : 1;
    } else {
      const mem = size > 0 ? this.bodyMemory?.(header, size) : undefined;
      this.parts = [mem && mem.byteLength === size ? mem : new Uint8Array(size)];
      this.part = 0;
    }
    this.partFill = 0;
    this.bodyFill = 0;
  }
}

/** dst.set(src[from, from + n), at) unless those bytes were received right there already. */
function copyUnlessInPlace(dst: Uint8Array, at: number, src: Uint8Array, from: number, n: number): void {
  if (n === 0) return;
  if (src.buffer === dst.buffer && src.byteOffset + from === dst.byteOffset + at) return;
  dst.set(src.subarray(from, from + n), at);
}
