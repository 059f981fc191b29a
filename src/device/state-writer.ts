// Turns a device's records into chunks of whatever size the migration region asks for. Records are pulled
// lazily from the device, so the device decides what to send as late as possible (a block dirtied again
// before it was queued is sent once, with its newest contents).

import { encodeRecordHeader, RECORD_HEADER_SIZE, type StateRecord } from './state-stream.ts';

export class StateStreamWriter {
  private readonly queue: Uint8Array[] = [];
  private queueHead = 0;
  private queued = 0;
  private records = 0;
  private readonly live = new WeakSet<Uint8Array>();

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
      const take = Math.min(head.byteLength - this.queueHead, out.byteLength - n);
      out.set(head.subarray(this.queueHead, this.queueHead + take), n);
      n += take;
      this.queueHead += take;
      this.queued -= take;
      if (this.queueHead === head.byteLength) {
        this.queue.shift();
        this.queueHead = 0;
      }
    }
    this.snapshotLive();
    return n;
  }

  /** Copies what is left of live payloads, so the device may change its memory before the next chunk. */
  private snapshotLive(): void {
    for (let i = 0; i < this.queue.length; i++) {
      if (!this.live.has(this.queue[i]!)) continue;
      const start = i === 0 ? this.queueHead : 0;
      this.live.delete(this.queue[i]!);
      this.queue[i] = this.queue[i]!.slice(start);
      if (i === 0) this.queueHead = 0;
    }
  }

  private pull(): boolean {
    const rec = this.next();
    if (!rec) return false;
    const payload = rec.payload ?? new Uint8Array(0);
    this.queue.push(encodeRecordHeader({ ...rec.header, length: payload.byteLength }));
    if (payload.byteLength > 0) {
      this.queue.push(payload);
      if (rec.live) this.live.add(payload);
    }
    this.queued += RECORD_HEADER_SIZE + payload.byteLength;
    this.records++;
    return true;
  }
}
