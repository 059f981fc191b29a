// Reading a v2 device's migration data over vfio-user: QEMU 8.1+'s vfio_save_block() read()s the data fd
// 1 MiB at a time; here each read is a MIG_DATA_READ message. Several are kept in flight: a vfio-user
// server answers commands in order, so the replies come back in the stream's order, and the device
// produces the next piece while the last one travels. Each reply is received straight into one of a few
// reused buffers (huge pages, first touched in the migration): no allocation or copy per read.

import { hugeBuffer } from '../../native/huge-buffer.ts';
import type { VfioUserClient } from '../../vfio-user/client.ts';
import { readAhead } from './read-ahead.ts';

/** MIG_DATA_READs in flight at once (one buffer each). */
export const MIG_DATA_READS_IN_FLIGHT = 4;

export interface MigDataReadPlan {
  /** Whether to send one more read, `asked` reads having been sent in this pass. */
  more(asked: number): boolean;
  /**
   * A chunk that ends the pass (pre-copy: a short read; stop-copy: an empty one); it may throw (a device
   * breaking the protocol). Asked of every chunk; reads already sent are still taken, in order.
   */
  ends(chunk: Uint8Array): boolean;
}

export class MigDataReader {
  /** Read k of a pass lands in buffer k % inFlight; it is sent once read k - inFlight has been consumed. */
  private readonly buffers: Uint8Array[] = [];

  constructor(
    private readonly client: VfioUserClient,
    private readonly inFlight = MIG_DATA_READS_IN_FLIGHT,
  ) {
    if (!Number.isInteger(inFlight) || inFlight < 1) throw new RangeError(`${inFlight} reads in flight`);
  }

  /**
   * Reads of `size` bytes while `plan.more` allows, each chunk in stream order to `sink` (a view valid until
   * the sink settles; empty chunks are not passed), until one `plan.ends` and every read sent has been
   * taken. Returns the chunks' lengths in order. A failed read or sink fails the pass, once every read sent
   * has settled (none may still be landing in a buffer when this returns).
   */
  async pass(size: number, plan: MigDataReadPlan, sink: (chunk: Uint8Array) => Promise<void>): Promise<number[]> {
    const reads: Promise<Uint8Array>[] = [];
    const lengths: number[] = [];
    let asked = 0;
    let ended = false;
    const send = () => {
      const i = asked % this.inFlight;
      if (!this.buffers[i] || this.buffers[i]!.byteLength < size) this.buffers[i] = hugeBuffer(size);
      reads.push(readAhead(this.client.migDataReadInto(this.buffers[i]!.subarray(0, size))));
      asked++;
    };
    try {
      while (asked < this.inFlight && plan.more(asked)) send();
      while (reads.length > 0) {
        const chunk = await reads.shift()!;
        lengths.push(chunk.byteLength);
        if (plan.ends(chunk)) ended = true;
        if (chunk.byteLength > 0) await sink(chunk);
        // This chunk's buffer is free again: the next read goes into it.
        if (!ended && plan.more(asked)) send();
      }
      return lengths;
    } catch (err) {
      await Promise.allSettled(reads);
      throw err;
    }
  }
}
