// Messages the destination sends back to the source on the same TCP connection (QEMU has a "return
// path" for the same reason). They make the switch-over a two-phase handshake, so that exactly one side
// ever runs the VM:
//
//   destination: stream loaded and verified ──► READY
//   source:      READY received: commit (never resume again) ──► GO
//   destination: GO received: start the VM
//
// If the connection dies before the source sees READY, the source resumes its VM (the destination never
// got GO and never starts). If it dies after the source committed, neither side runs the VM until an
// operator decides: the one outcome a live migration must never allow is both running.
//
// Wire: 'RP' magic (2 bytes), u8 type, be32 length, `length` bytes of UTF-8 text. 7-byte header.

import { Errno } from '../abi/errno.ts';
import { ByteQueue } from '../byte-queue.ts';
import { VfioError } from '../errors.ts';

export const ReturnPathType = {
  /** destination → source: everything loaded and verified, waiting for GO */
  READY: 1,
  /** source → destination: committed; start the VM */
  GO: 2,
  /** destination → source: the load failed; text says why */
  ERROR: 3,
  /**
   * destination → source, during pre-copy: every device that asked for it has loaded its initial data,
   * the source may switch over (QEMU's MIG_RP_MSG_SWITCHOVER_ACK, with the switchover-ack capability)
   */
  SWITCHOVER_ACK: 4,
} as const;

export type ReturnPathTypeValue = (typeof ReturnPathType)[keyof typeof ReturnPathType];

export interface ReturnPathMessage {
  type: ReturnPathTypeValue;
  text: string;
}

const MAGIC0 = 0x52; // 'R'
const MAGIC1 = 0x50; // 'P'
const HEADER = 7;
/** Longest message text accepted (an error description). */
export const RETURN_PATH_MAX_TEXT = 4096;

export function encodeReturnPath(m: ReturnPathMessage): Uint8Array {
  const text = new TextEncoder().encode(m.text.slice(0, RETURN_PATH_MAX_TEXT));
  const out = new Uint8Array(HEADER + text.byteLength);
  const dv = new DataView(out.buffer);
  out[0] = MAGIC0;
  out[1] = MAGIC1;
  out[2] = m.type;
  dv.setUint32(3, text.byteLength, false);
  out.set(text, HEADER);
  return out;
}

/** The peer's bytes are not return-path messages: a typed error, as every decoder of peer input throws. */
function protocolError(message: string): VfioError {
  return new VfioError(Errno.EPROTO, message);
}

/** Incremental decoder; throws a VfioError (EPROTO) on anything that is not a return-path message. */
export class ReturnPathDecoder {
  private readonly q = new ByteQueue();

  /**
   * The messages completed by `chunk`. A refused chunk leaves the decoder holding what it held before it
   * (at most one partial message, copied here), so the refused bytes cannot poison what comes next.
   */
  push(chunk: Uint8Array): ReturnPathMessage[] {
    const held = this.q.length > 0 ? this.q.peek(this.q.length)!.slice() : null;
    this.q.push(chunk);
    const out: ReturnPathMessage[] = [];
    try {
      for (let head = this.q.peek(HEADER); head; head = this.q.peek(HEADER)) {
        if (head[0] !== MAGIC0 || head[1] !== MAGIC1) throw protocolError('return path: bad magic');
        const type = head[2]!;
        if (type < ReturnPathType.READY || type > ReturnPathType.SWITCHOVER_ACK)
          throw protocolError(`return path: unknown message type ${type}`);
        const len = new DataView(head.buffer, head.byteOffset + 3, 4).getUint32(0, false);
        if (len > RETURN_PATH_MAX_TEXT * 4) throw protocolError(`return path: message of ${len} bytes is too long`);
        const m = this.q.take(HEADER + len);
        if (!m) break;
        out.push({ type: type as ReturnPathTypeValue, text: new TextDecoder().decode(m.subarray(HEADER)) });
      }
    } catch (err) {
      this.q.clear();
      if (held) this.q.push(held);
      throw err;
    }
    return out;
  }
}
