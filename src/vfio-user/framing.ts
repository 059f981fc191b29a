// Reassembles vfio-user messages from a byte stream and attaches received fds to the message they came
// with. The socket asks `wanted()` before each recvmsg, so a read never crosses a message boundary and the
// fds it returns belong to the message being read (libvfio-user reads header, then payload, the same way).

import { Errno } from '../abi/errno.ts';
import { decodeHeader, type Header } from '../abi/vfio-user/header.ts';
import { HEADER_SIZE } from '../abi/vfio-user/limits.ts';
import { VfioError } from '../errors.ts';

export interface ReceivedMessage {
  header: Header;
  payload: Uint8Array;
  /** Owned by whoever handles the message: use them or close them. */
  fds: number[];
}

export interface FramingLimits {
  /** Largest msg_size accepted (header included). */
  maxMsgSize: number;
  /** Most fds one message may carry. */
  maxFds: number;
}

export class MessageAssembler {
  private readonly headerBuf = new Uint8Array(HEADER_SIZE);
  private headerFill = 0;
  private header: Header | null = null;
  private body: Uint8Array | null = null;
  private bodyFill = 0;
  private fds: number[] = [];

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
        this.headerBuf.set(chunk.subarray(i, i + take), this.headerFill);
        this.headerFill += take;
        i += take;
        if (this.headerFill < HEADER_SIZE) break;
        this.header = decodeHeader(this.headerBuf, { maxMsgSize: this.limits.maxMsgSize });
        this.body = new Uint8Array(this.header.msgSize - HEADER_SIZE);
        this.bodyFill = 0;
      }
      const take = Math.min(this.wanted(), chunk.byteLength - i);
      this.body!.set(chunk.subarray(i, i + take), this.bodyFill);
      this.bodyFill += take;
      i += take;
      if (this.wanted() === 0) {
        if (this.fds.length > this.limits.maxFds) {
          throw new VfioError(
            Errno.EINVAL,
            `message ${this.header.msgId} carries ${this.fds.length} fds, limit ${this.limits.maxFds}`,
          );
        }
        out.push({ header: this.header, payload: this.body!, fds: this.fds });
        this.fds = [];
        this.header = null;
        this.body = null;
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
}
