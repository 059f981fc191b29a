// A deliberately simple MigrationBackend for region unit tests: its state is a byte array, saved whole in
// stop-and-copy; it can be told to refuse transitions; it records what the region asked of it.

import { Errno } from '../../src/abi/errno.ts';
import { DeviceState } from '../../src/abi/migration.ts';
import type { MigrationBackend } from '../../src/device/backend.ts';
import { DirtyPageLog } from '../../src/device/dirty-log.ts';
import { VfioError } from '../../src/errors.ts';

export class ToyBackend implements MigrationBackend {
  readonly dirtyLog = new DirtyPageLog();
  readonly transitions: [number, number][] = [];
  refuse: ((from: number, to: number) => boolean) | null = null;
  state: Uint8Array;
  loaded: number[] = [];
  private sent = 0;
  /** bytes the device changes per tick while running; work refused when stopped */
  dmaWrites = 0;
  current = DeviceState.RUNNING as number;

  constructor(size = 10_000, fill = (i: number) => (i * 7 + 3) & 0xff) {
    this.state = Uint8Array.from({ length: size }, (_, i) => fill(i));
  }

  transition(from: number, to: number): void {
    if (this.refuse?.(from, to)) throw new VfioError(Errno.EBUSY, `toy refuses ${from} -> ${to}`);
    this.transitions.push([from, to]);
    if (to & DeviceState.SAVING && !(from & DeviceState.SAVING)) this.sent = 0;
    if (to === DeviceState.RESUMING) this.loaded = [];
    this.current = to;
  }

  pendingBytes(): number {
    return this.current === DeviceState.SAVING ? this.state.byteLength - this.sent : 0;
  }

  produce(out: Uint8Array): number {
    if (this.current !== DeviceState.SAVING) return 0;
    const n = Math.min(out.byteLength, this.state.byteLength - this.sent);
    out.set(this.state.subarray(this.sent, this.sent + n));
    this.sent += n;
    return n;
  }

  consume(data: Uint8Array): void {
    for (const b of data) this.loaded.push(b);
  }

  /** A DMA write by the device: only a running device may do one. */
  dma(iova: number, length: number): boolean {
    if (!(this.current & DeviceState.RUNNING)) return false;
    this.dirtyLog.mark(iova, length);
    this.dmaWrites++;
    return true;
  }
}
