// What both sample devices share: the migration backend (save/resume lifecycle on top of StateSaver and
// StateLoader), a register BAR with read-only and write-only words, and a ticker that does the device's
// own work only while it runs. A subclass says what its registers mean and what one unit of work does.

import { Errno } from '../../abi/errno.ts';
import { DeviceState } from '../../abi/migration.ts';
import { einval, VfioError } from '../../errors.ts';
import type { MigrationBackend } from '../backend.ts';
import type { Bar, DmaPort } from '../bar.ts';
import type { DeviceModel } from '../device-model.ts';
import { DirtyPageLog } from '../dirty-log.ts';
import { clearMemory, imageDigest, noteWritten, type StateImage, StateLoader, StateSaver } from './saved-state.ts';

export const TICK_MS = 10;

export abstract class SampleDevice implements DeviceModel, MigrationBackend {
  abstract readonly model: string;
  abstract readonly config: Uint8Array;
  abstract readonly bars: readonly (Bar | undefined)[];
  readonly dirtyLog = new DirtyPageLog();

  protected state: number = DeviceState.RUNNING;
  protected dma: DmaPort | null = null;
  private saver: StateSaver | null = null;
  private loader: StateLoader | null = null;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;

  /** Units of work the ticker does per second while running (0 = none). */
  protected workRate = 0;
  /** Testing control (serve --x-precopy-quota): bytes released per pre-copy round, 0 = no limit. */
  private precopyQuota = 0;
  /** Bytes released in the current pre-copy round. */
  private roundBytes = 0;

  get migration(): MigrationBackend {
    return this;
  }

  /** The device's current device_state as the region last set it. */
  get deviceState(): number {
    return this.state;
  }

  get running(): boolean {
    return (this.state & DeviceState.RUNNING) !== 0;
  }

  /** What the saved state covers: the same object every call (it holds the device's written-block map). */
  protected abstract image(): StateImage;
  /** Installs a loaded register file (already validated for size). */
  protected abstract applyRegs(regs: Uint8Array): void;
  /** Does `units` of the device's own work; only called while running. */
  protected abstract work(units: number): void;
  /** Returns the device to its power-on state before a resume. */
  protected abstract resetForResume(): void;

  /** Performs `units` of work now, as the ticker would (tests use this to interleave work with saving). */
  step(units: number): void {
    if (!this.running || this.closed) return;
    this.work(units);
  }

  /** Sets the ticker's rate; the ticker runs only while the device runs. */
  setWorkRate(unitsPerSecond: number): void {
    this.workRate = unitsPerSecond;
    this.syncTicker();
  }

  /**
   * Testing control: while the device runs and saves (pre-copy), release at most `bytes` of state per
   * round, then one empty chunk, which ends the VMM's pass (QEMU's save_live_iterate stops at a chunk of
   * data_size 0 too); the next chunk asked for opens the next round. pending_bytes still counts
   * everything, so a migration takes at least (state - switch-over threshold) / `bytes` pre-copy rounds
   * whatever the machine's speed. Stop-and-copy is never held back. 0 turns it off.
   */
  setPrecopyQuota(bytes: number): void {
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw new RangeError(`pre-copy quota ${bytes} must be >= 0`);
    this.precopyQuota = bytes;
  }

  attachDma(port: DmaPort | null): void {
    this.dma = port;
  }

  /** Bytes of state the device carries (memory and registers). */
  stateSize(): number {
    const img = this.image();
    return img.memory.byteLength + img.regs.byteLength;
  }

  stateDigest(): string {
    return imageDigest(this.image()).toString('hex');
  }

  reset(): void {
    this.saver = null;
    this.loader = null;
    this.resetForResume();
    clearMemory(this.image());
    this.state = DeviceState.RUNNING;
    this.syncTicker();
  }

  close(): void {
    this.closed = true;
    this.syncTicker();
  }

  // ---- MigrationBackend ----

  transition(from: number, to: number): void {
    const saving = (to & DeviceState.SAVING) !== 0;
    if (from === DeviceState.RESUMING && to !== DeviceState.RESUMING) {
      if (!this.loader?.complete) {
        throw new VfioError(Errno.EINVAL, 'cannot leave resuming: the device state received so far is incomplete');
      }
      this.loader = null;
    }
    if (to === DeviceState.RESUMING) {
      this.resetForResume();
      this.loader = new StateLoader(this.image(), (regs) => this.applyRegs(regs));
    }
    if (saving && (from & DeviceState.SAVING) === 0) {
      this.saver = new StateSaver(this.image(), () => !this.running);
      this.roundBytes = 0;
    }
    if (!saving) this.saver = null;
    this.state = to;
    // Clearing RUNNING stops the ticker here, so no work (and no DMA) happens after the write returns.
    this.syncTicker();
  }

  pendingBytes(): number {
    return this.saver?.pendingBytes() ?? 0;
  }

  stopCopyBytes(): number {
    // Outside a save: what a save started and stopped now would send (exact, untouched blocks unread).
    return this.saver?.pendingBytes() ?? new StateSaver(this.image(), () => true).pendingBytes();
  }

  produce(out: Uint8Array): number {
    if (!this.saver) throw einval('not saving');
    if (this.precopyQuota === 0 || !this.running) return this.saver.produce(out);
    const room = this.precopyQuota - this.roundBytes;
    const n = room > 0 ? this.saver.produce(out.subarray(0, Math.min(out.byteLength, room))) : 0;
    // Any empty chunk ends the VMM's pass, so it ends the round too.
    this.roundBytes = n === 0 ? 0 : this.roundBytes + n;
    return n;
  }

  consume(data: Uint8Array): void {
    if (!this.loader) throw einval('not resuming');
    this.loader.feed(data);
  }

  // ---- helpers for subclasses ----

  /** Device memory changed: the block may hold something now, and an active save session sends it again. */
  protected memoryWritten(offset: number, length: number): void {
    noteWritten(this.image(), offset, length);
    this.saver?.markDirty(offset, length);
  }

  /** Device DMA into guest memory: a real write through the port, logged for the dirty bitmap. */
  protected dmaWrite(iova: bigint, data: Uint8Array): void {
    if (!this.dma) return;
    this.dma.write(iova, data);
    this.dirtyLog.mark(iova, data.byteLength);
  }

  /** Guards a register write that changes device state: a stopped device takes none. */
  protected requireRunning(what: string): void {
    if (!this.running) throw einval(`${what}: the device is not running`);
  }

  private syncTicker(): void {
    const want = !this.closed && this.running && this.workRate > 0;
    if (want && !this.timer) {
      this.timer = setInterval(() => {
        // A backed-up DMA path holds the device's work back (the tick is skipped, not queued).
        if (this.dma?.congested?.()) return;
        this.step(Math.max(1, Math.round((this.workRate * TICK_MS) / 1000)));
      }, TICK_MS);
      this.timer.unref();
    } else if (!want && this.timer) {
      clearInterval(this.timer);
      this.timer = null;
    }
  }
}

/** A register BAR: reads return the register bytes (or computed values), writes go through `onWrite`. */
export class RegisterBar implements Bar {
  constructor(
    readonly size: number,
    private readonly onRead: (offset: number, length: number) => Uint8Array,
    private readonly onWrite: (offset: number, data: Uint8Array) => void,
  ) {}

  read(offset: number, length: number): Uint8Array {
    checkBar(this.size, offset, length);
    return this.onRead(offset, length);
  }

  write(offset: number, data: Uint8Array): void {
    checkBar(this.size, offset, data.byteLength);
    this.onWrite(offset, data);
  }
}

/** A BAR that is plain device memory (readable, writable while running, mappable). */
export class MemoryBar implements Bar {
  constructor(
    readonly memory: Uint8Array,
    private readonly onWrite: (offset: number, data: Uint8Array) => void,
  ) {}

  get size(): number {
    return this.memory.byteLength;
  }

  read(offset: number, length: number): Uint8Array {
    checkBar(this.size, offset, length);
    return this.memory.slice(offset, offset + length);
  }

  write(offset: number, data: Uint8Array): void {
    checkBar(this.size, offset, data.byteLength);
    this.onWrite(offset, data);
  }
}

function checkBar(size: number, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || length < 0 || offset + length > size) {
    throw einval(`BAR access [${offset}, ${offset + length}) outside its ${size} bytes`);
  }
}

/** xorshift32: a small deterministic generator whose whole state is one u32 (kept in device registers). */
export function xorshift32(s: number): number {
  let x = s >>> 0 || 1;
  x ^= x << 13;
  x ^= x >>> 17;
  x ^= x << 5;
  return x >>> 0;
}
