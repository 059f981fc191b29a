// Turns a device's records into chunks of whatever size the migration region asks for. Records are pulled
// lazily from the device, so the device decides what to send as late as possible (a block dirtied again
// before it was queued is sent once, with its newest contents). A payload that wants its CRC-32C gets it
// from the copy that sends it (one pass over the bytes, not a checksum pass and a copy pass).

import { crc32cCopy } from '../stream/crc32c.ts';
import { encodeRecordHeader, RECORD_HEADER_SIZE, type StateRecord } from './state-stream.ts';

interface Queued {
  bytes: Uint8Array;
  /** A live view of device memory (see StateRecord.live), until copied out or snapshotted. */
  live: boolean;
  /** Where the payload's CRC-32C goes once all of it has been copied; crc is the running value. */
  checksum?: (crc: number) => void;
  crc: number;
}

export class StateStreamWriter {
  private readonly queue: Queued[] = [];
  private queueHead = 0;
  private queued = 0;
  private records = 0;

  /** `next` returns the device's next record, or null when it has nothing more to send right now. */
  constructor(private readonly next: () => StateRecord | null) {}

  /** Bytes already encoded but not yet handed out. */
  get queuedBytes(): number {
    return this.queued;
  }

  /** Records encoded so far in this stream. */
  get recordCount(): number {
    return this.records;
  }

  /** Fills `out` from the queue, pulling records as needed; returns the bytes written. */
  produce(out: Uint8Array): number {
    let n = 0;
    while (n < out.byteLength) {
      if (this.queue.length === 0 && !this.pull()) break;
      const head = this.queue[0]!;
      const take = Math.min(head.bytes.byteLength - this.queueHead, out.byteLength - n);
      const piece = head.bytes.subarray(this.queueHead, this.queueHead + take);
      if (head.checksum) head.crc = crc32cCopy(out, n, n, piece, head.crc);
      else out.set(piece, n);
      n += take;
      this.queueHead += take;
      this.queued -= take;
      if (this.queueHead === head.bytes.byteLength) {
        head.checksum?.(head.crc);
        this.queue.shift();
        this.queueHead = 0;
      }
    }
    this.snapshotLive();
    return n;
  }

  /**
   * Copies what is left of live payloads, so the device may change its memory before the next chunk. The
   * copy is what will be sent, so a payload's checksum is completed from it here.
   */
  private snapshotLive(): void {
    for (let i = 0; i < this.queue.length; i++) {
      const q = this.queue[i]!;
      if (!q.live) continue;
      const rest = q.bytes.subarray(i === 0 ? this.queueHead : 0);
      const copy = new Uint8Array(rest.byteLength);
      if (q.checksum) {
        q.checksum(crc32cCopy(copy, 0, 0, rest, q.crc));
        q.checksum = undefined;
      } else copy.set(rest);
      this.queue[i] = { bytes: copy, live: false, crc: 0 };
      if (i === 0) this.queueHead = 0;
    }
  }

  private pull(): boolean {
    const rec = this.next();
    if (!rec) return false;
    const payload = rec.payload ?? new Uint8Array(0);
    this.queue.push({ bytes: encodeRecordHeader({ ...rec.header, length: payload.byteLength }), live: false, crc: 0 });
    if (payload.byteLength > 0) {
      this.queue.push({ bytes: payload, live: rec.live === true, checksum: rec.checksum, crc: 0 });
    } else rec.checksum?.(0);
    this.queued += RECORD_HEADER_SIZE + payload.byteLength;
    this.records++;
    return true;
  }
}
