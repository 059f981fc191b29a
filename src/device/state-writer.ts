// Turns a device's records into chunks of whatever size the migration region asks for. Records are pulled
// lazily from the device, one at a time, so the device decides what to send as late as possible (a block
// dirtied again before it was pulled is sent once, with its newest contents). A payload that wants its
// CRC-32C gets it from the copy that sends it (one pass over the bytes, not a checksum pass and a copy
// pass). Nothing is allocated per record: a device sends thousands of blocks a second, and the header
// buffers, queue entries and snapshot copies this once made per record cost its server measurable CPU.

import { crc32cCopy } from '../stream/crc32c.ts';
import { RECORD_HEADER_SIZE, type StateRecord, writeRecordHeader } from './state-stream.ts';

const NO_PAYLOAD: Uint8Array = new Uint8Array(0);

export class StateStreamWriter {
  // The record being handed out: its header (the last `headerLeft` bytes of `header` still to go), then
  // its payload from `payloadAt`.
  private readonly header = new Uint8Array(RECORD_HEADER_SIZE);
  private readonly headerView = new DataView(this.header.buffer);
  private headerLeft = 0;
  private payload: Uint8Array = NO_PAYLOAD;
  private payloadAt = 0;
  /** The payload is a live view of device memory (see StateRecord.live), until copied out or snapshotted. */
  private live = false;
  /** Where the payload's CRC-32C goes once all of it has been copied; crc is the running value. */
  private checksum: ((crc: number) => void) | undefined;
  private crc = 0;
  private records = 0;
  /** Where live payloads are snapshotted: one record is handed out at a time, so one buffer serves all. */
  private spare: Uint8Array = NO_PAYLOAD;

  /** `next` returns the device's next record, or null when it has nothing more to send right now. */
  constructor(private readonly next: () => StateRecord | null) {}

  /** Bytes already encoded but not yet handed out. */
  get queuedBytes(): number {
    return this.headerLeft + this.payload.byteLength - this.payloadAt;
  }

  /** Records encoded so far in this stream. */
  get recordCount(): number {
    return this.records;
  }

  /** Fills `out` from the current record, pulling records as needed; returns the bytes written. */
  produce(out: Uint8Array): number {
    let n = 0;
    while (n < out.byteLength) {
      if (this.queuedBytes === 0 && !this.pull()) break;
      if (this.headerLeft > 0) {
        const from = RECORD_HEADER_SIZE - this.headerLeft;
        const take = Math.min(this.headerLeft, out.byteLength - n);
        out.set(take === RECORD_HEADER_SIZE ? this.header : this.header.subarray(from, from + take), n);
        n += take;
        this.headerLeft -= take;
        continue;
      }
      const take = Math.min(this.payload.byteLength - this.payloadAt, out.byteLength - n);
      const piece = this.payload.subarray(this.payloadAt, this.payloadAt + take);
      if (this.checksum) this.crc = crc32cCopy(out, n, n, piece, this.crc);
      else out.set(piece, n);
      n += take;
      this.payloadAt += take;
      if (this.payloadAt === this.payload.byteLength) this.finishPayload();
    }
    if (this.live && this.payloadAt < this.payload.byteLength) this.snapshotLive();
    return n;
  }

  /**
   * Copies what is left of a live payload, so the device may change its memory before the next chunk.
   * The copy is what will be sent, so the payload's checksum is completed from it here.
   */
  private snapshotLive(): void {
    const rest = this.payload.subarray(this.payloadAt);
    // Sized for the whole payload: a device's records are mostly one size, so this allocates about once.
    if (this.spare.byteLength < rest.byteLength) this.spare = new Uint8Array(this.payload.byteLength);
    const copy = this.spare.subarray(0, rest.byteLength);
    const checksum = this.checksum;
    if (checksum) checksum(crc32cCopy(copy, 0, 0, rest, this.crc));
    else copy.set(rest);
    this.payload = copy;
    this.payloadAt = 0;
    this.live = false;
    this.checksum = undefined;
  }

  private finishPayload(): void {
    const checksum = this.checksum;
    const crc = this.crc;
    this.payload = NO_PAYLOAD;
    this.payloadAt = 0;
    this.live = false;
    this.checksum = undefined;
    checksum?.(crc);
  }

  private pull(): boolean {
    const rec = this.next();
    if (!rec) return false;
    const payload = rec.payload ?? NO_PAYLOAD;
    writeRecordHeader(this.headerView, rec.header, payload.byteLength);
    this.headerLeft = RECORD_HEADER_SIZE;
    this.payload = payload;
    this.payloadAt = 0;
    this.live = rec.live === true && payload.byteLength > 0;
    this.checksum = rec.checksum;
    this.crc = 0;
    if (payload.byteLength === 0) this.finishPayload();
    this.records++;
    return true;
  }
}
