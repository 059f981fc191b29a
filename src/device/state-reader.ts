// Parses a saved device state fed in arbitrary pieces. Payloads are handed to the device as they arrive
// (never buffered whole), so a 256 MiB device resumes with no more memory than its own.

import { Errno } from '../abi/errno.ts';
import { VfioError } from '../errors.ts';
import { decodeRecordHeader, RECORD_HEADER_SIZE, type RecordHeader, RecordKind } from './state-stream.ts';

export interface StateRecordSink {
  /** A record's header arrived. Throw to reject it (bad offset, wrong order, ...). */
  onHeader(header: RecordHeader, index: number): void;
  /** `chunk` holds payload bytes [at, at + chunk.length) of the current record. */
  onPayload(header: RecordHeader, chunk: Uint8Array, at: number): void;
  /** The current record is complete. */
  onRecordEnd(header: RecordHeader, index: number): void;
}

export class StateStreamReader {
  private readonly headerBuf = new Uint8Array(RECORD_HEADER_SIZE);
  private headerFill = 0;
  private current: RecordHeader | null = null;
  private payloadAt = 0;
  private index = 0;
  private ended = false;
  private failed: VfioError | null = null;

  constructor(
    private readonly sink: StateRecordSink,
    private readonly maxPayload: number,
  ) {}

  /** True once the END record has been completely received. */
  get complete(): boolean {
    return this.ended;
  }

  /** Bytes of a record still expected (0 between records). */
  get midRecord(): boolean {
    return this.headerFill > 0 || this.current !== null;
  }

  feed(data: Uint8Array): void {
    // Once a stream was rejected it stays rejected: later pieces cannot make it valid again.
    if (this.failed) throw this.failed;
    try {
      this.feedInner(data);
    } catch (err) {
      this.failed =
        err instanceof VfioError
          ? err
          : new VfioError(Errno.EINVAL, String((err as Error).message ?? err), { cause: err });
      throw this.failed;
    }
  }

  private feedInner(data: Uint8Array): void {
    let i = 0;
    while (i < data.byteLength) {
      if (this.ended)
        throw new VfioError(Errno.EINVAL, `device state continues ${data.byteLength - i} bytes past its END record`);
      if (!this.current) {
        const take = Math.min(RECORD_HEADER_SIZE - this.headerFill, data.byteLength - i);
        this.headerBuf.set(data.subarray(i, i + take), this.headerFill);
        this.headerFill += take;
        i += take;
        if (this.headerFill < RECORD_HEADER_SIZE) break;
        this.headerFill = 0;
        const h = decodeRecordHeader(this.headerBuf);
        if (typeof h === 'string') throw new VfioError(Errno.EINVAL, `device state record ${this.index}: ${h}`);
        if (h.length > this.maxPayload) {
          throw new VfioError(
            Errno.EINVAL,
            `device state record ${this.index}: payload ${h.length} > limit ${this.maxPayload}`,
          );
        }
        if (this.index === 0 && h.kind !== RecordKind.BEGIN) {
          throw new VfioError(Errno.EINVAL, 'device state does not start with a BEGIN record');
        }
        this.sink.onHeader(h, this.index);
        this.current = h;
        this.payloadAt = 0;
      }
      const h = this.current;
      const take = Math.min(h.length - this.payloadAt, data.byteLength - i);
      if (take > 0) {
        this.sink.onPayload(h, data.subarray(i, i + take), this.payloadAt);
        this.payloadAt += take;
        i += take;
      }
      if (this.payloadAt === h.length) {
        this.current = null;
        this.sink.onRecordEnd(h, this.index);
        if (h.kind === RecordKind.END) this.ended = true;
        this.index++;
      }
    }
  }
}
