// Sample device (c): the device model of libvfio-user's samples/server.c (github.com/nutanix/libvfio-user),
// written from its observed behaviour so that its state moves between that C server and ours, both ways.
// - PCI IDs 0xdead/0xbeef, subsystem 0xcafe/0xbabe; INTx only.
// - BAR0: 8 bytes, a time_t in seconds since the epoch. Only an 8-byte access at offset 0 is taken. A write
//   arms a timer for that time when the device runs; a read returns now - BAR0.
// - BAR1: 0x3000 bytes in a memfd, with [0,0x1000) and [0x2000,0x3000) offered for mmap. A trapped read
//   returns BAR1 from its start whatever the offset (the sample's bar1_access copies from the base).
// - When the timer fires: INTx, then DMA to the device's second DMA region (slot 1) directly and to its first
//   (slot 0) by DMA_WRITE/DMA_READ messages: 4 KiB of 'A'..'D' written in 1 KiB pieces, read back in 2 KiB
//   pieces and compared. Slots are the sample's: a mapped range takes the first free slot.
// - Migration data: BAR1 while pre-copying, BAR1 + BAR0 (12296 bytes) in stop-and-copy. The v1 era's sample
//   sends BAR1 again when it is written during pre-copy; so does this one. A resume takes any number of BAR1
//   images and then BAR1 + BAR0 (k * 0x3000 + 8 bytes): the C v1 era sends its pre-copy image too, the v2 era
//   only the stop-copy one.
// - Entering RUNNING re-arms the timer from BAR0, and is refused (EINVAL) when that time has passed, as the
//   sample's setitimer refuses a negative interval. The sample aborts on some requests (an incomplete save
//   left for RUNNING or STOP); this model refuses or accepts instead, and never stops the server.

import { createHash } from 'node:crypto';
import { Errno } from '../../abi/errno.ts';
import { DeviceState } from '../../abi/migration.ts';
import { einval, VfioError } from '../../errors.ts';
import { native } from '../../native/addon.ts';
import type { MigrationBackend } from '../backend.ts';
import type { Bar, DmaPort, DmaRegion, IrqPort } from '../bar.ts';
import type { DeviceModel } from '../device-model.ts';
import { DirtyPageLog } from '../dirty-log.ts';

export const LVU_BAR0_SIZE = 8;
export const LVU_BAR1_SIZE = 0x3000;
export const LVU_BAR1_SPARSE = [
  { offset: 0, size: 0x1000 },
  { offset: 0x2000, size: 0x1000 },
] as const;
/** Stop-and-copy data: BAR1 then BAR0. */
export const LVU_STOP_COPY_SIZE = LVU_BAR1_SIZE + LVU_BAR0_SIZE;
/** The sample's DMA pattern: 4 pieces of 1 KiB ('A'..'D'), read back in 2 KiB pieces. */
const DMA_PIECE = 1024;
const DMA_PIECES = 4;
/** libvfio-user's sample keeps 96 DMA slots. */
const DMA_SLOTS = 96;

/** Wall-clock seconds and a one-shot timer: injectable so tests control time instead of waiting for it. */
export interface LvuClock {
  now(): number;
  setTimer(fire: () => unknown, ms: number): unknown;
  clearTimer(handle: unknown): void;
}

export const systemClock: LvuClock = {
  now: () => Math.floor(Date.now() / 1000),
  setTimer: (fire, ms) => setTimeout(fire, ms),
  clearTimer: (h) => clearTimeout(h as NodeJS.Timeout),
};

export interface LvuSampleOptions {
  clock?: LvuClock;
  /** One line per timer event and DMA result (the sample's debug log). */
  log?: (line: string) => void;
  /** Back BAR1 with a memfd offered for mmap (default true; unit tests may use plain memory). */
  memfd?: boolean;
}

export class LvuSampleDevice implements DeviceModel, MigrationBackend {
  readonly model = 'lvu-sample';
  readonly config: Uint8Array = lvuConfig();
  readonly bars: readonly (Bar | undefined)[];
  readonly dirtyLog = new DirtyPageLog();
  /** Timer firings whose DMA finished and checked out (for tests and the log). */
  dmaRounds = 0;

  private state: number = DeviceState.RUNNING;
  private bar0 = 0n;
  private readonly bar1: Uint8Array;
  private readonly bar1Fd: number | null = null;
  private readonly bar1Mapping: ArrayBuffer | null = null;
  private readonly clock: LvuClock;
  private readonly log: (line: string) => void;
  private timer: unknown = null;
  private dma: DmaPort | null = null;
  private irq: IrqPort | null = null;
  private readonly slots: (DmaRegion | null)[] = new Array(DMA_SLOTS).fill(null);
  /** Saving: bytes of the current image produced; whether BAR1 was written since that image began. */
  private cursor = 0;
  private bar1Dirty = false;
  /** Resuming: bytes taken, and the last LVU_STOP_COPY_SIZE of them (the image that counts). */
  private received = 0;
  private readonly tail = new Uint8Array(LVU_STOP_COPY_SIZE);
  private closed = false;

  constructor(options: LvuSampleOptions = {}) {
    this.clock = options.clock ?? systemClock;
    this.log = options.log ?? (() => {});
    if (options.memfd ?? true) {
      this.bar1Fd = native().memfdCreate('vfio-migrate:lvu-sample:bar1', LVU_BAR1_SIZE);
      this.bar1Mapping = native().mmap(this.bar1Fd, 0, LVU_BAR1_SIZE, true);
      this.bar1 = new Uint8Array(this.bar1Mapping);
    } else {
      this.bar1 = new Uint8Array(LVU_BAR1_SIZE);
    }
    const bar0: Bar = {
      size: LVU_BAR0_SIZE,
      read: (o, n) => this.readBar0(o, n),
      write: (o, d) => this.writeBar0(o, d),
    };
    const bar1: Bar = {
      size: LVU_BAR1_SIZE,
      read: (o, n) => this.readBar1(o, n),
      write: (o, d) => this.writeBar1(o, d),
      memory: this.bar1,
      ...(this.bar1Fd !== null ? { fd: this.bar1Fd, sparse: LVU_BAR1_SPARSE } : {}),
    };
    this.bars = [bar0, bar1];
  }

  get migration(): MigrationBackend {
    return this;
  }

  /** BAR0 as stored (the armed time, seconds since the epoch). */
  get bar0Time(): bigint {
    return this.bar0;
  }

  get timerArmed(): boolean {
    return this.timer !== null;
  }

  attachDma(port: DmaPort | null): void {
    this.dma = port;
    if (!port) this.slots.fill(null);
  }

  attachIrq(port: IrqPort | null): void {
    this.irq = port;
  }

  dmaRegister(region: DmaRegion): void {
    const free = this.slots.indexOf(null);
    if (free < 0) {
      // The sample exits here; a server of ours logs and goes on without a slot for the range.
      this.log(`dma_register: all ${DMA_SLOTS} slots taken, ${region.iova}+${region.size} not recorded`);
      return;
    }
    this.slots[free] = region;
  }

  dmaUnregister(region: DmaRegion): void {
    for (let i = 0; i < DMA_SLOTS; i++) {
      const s = this.slots[i];
      if (s && s.iova === region.iova && s.size === region.size) this.slots[i] = null;
    }
  }

  // --- BARs -------------------------------------------------------------------------------------------

  private checkBar0(offset: number, length: number): void {
    if (offset !== 0 || length !== LVU_BAR0_SIZE) {
      throw einval(`lvu-sample: bad BAR0 access [${offset}, ${offset + length}): only 8 bytes at 0`);
    }
  }

  private readBar0(offset: number, length: number): Uint8Array {
    this.checkBar0(offset, length);
    const out = new Uint8Array(LVU_BAR0_SIZE);
    new DataView(out.buffer).setBigInt64(0, BigInt(this.clock.now()) - this.bar0, true);
    return out;
  }

  private writeBar0(offset: number, data: Uint8Array): void {
    this.checkBar0(offset, data.byteLength);
    const t = new DataView(data.buffer, data.byteOffset, LVU_BAR0_SIZE).getBigInt64(0, true);
    // Armed only while plainly running (not pre-copying); a refused arm leaves BAR0 as it was.
    if (this.state === DeviceState.RUNNING) this.arm(t);
    this.bar0 = t;
  }

  private checkBar1(offset: number, length: number): void {
    if (offset < 0 || length < 0 || offset + length > LVU_BAR1_SIZE) {
      throw einval(`lvu-sample: bad BAR1 access [${offset}, ${offset + length}) beyond ${LVU_BAR1_SIZE} bytes`);
    }
  }

  private readBar1(offset: number, length: number): Uint8Array {
    this.checkBar1(offset, length);
    // The sample copies from BAR1's base whatever the offset; a client that compares contents reads from 0.
    return this.bar1.slice(0, length);
  }

  private writeBar1(offset: number, data: Uint8Array): void {
    this.checkBar1(offset, data.byteLength);
    this.bar1.set(data, offset);
    if (this.state === (DeviceState.RUNNING | DeviceState.SAVING)) this.bar1Dirty = true;
  }

  // --- timer, IRQ and DMA -----------------------------------------------------------------------------

  /** setitimer(t - now): a past time is refused, now disarms, a future time arms. */
  private arm(t: bigint): void {
    const delta = t - BigInt(this.clock.now());
    if (delta < 0n) throw einval(`lvu-sample: cannot arm the timer ${-delta} s in the past`);
    this.disarm();
    if (delta === 0n || this.closed) return;
    this.timer = this.clock.setTimer(() => this.fire(), Number(delta) * 1000);
  }

  private disarm(): void {
    if (this.timer !== null) this.clock.clearTimer(this.timer);
    this.timer = null;
  }

  /** The timer expired: INTx, then the sample's two DMA rounds. Never throws (it runs on a timer). */
  fire(): Promise<void> {
    this.timer = null;
    if (this.closed) return Promise.resolve();
    this.irq?.trigger(0, 0);
    return this.dmaRounds1And0().then(
      () => {
        this.dmaRounds++;
      },
      (err: Error) => this.log(`do_dma_io: ${err.message}`),
    );
  }

  private async dmaRounds1And0(): Promise<void> {
    await this.doDmaIo(1, false);
    await this.doDmaIo(0, true);
  }

  /**
   * The C sample finishes a DMA round before it takes the next request; here requests interleave with the
   * round's messages, so a device stopped meanwhile (RUNNING cleared) ends the round: no DMA once stopped.
   */
  private checkRunning(how: string): void {
    if (!(this.state & DeviceState.RUNNING) || this.closed) {
      throw new VfioError(Errno.ECANCELED, `${how} DMA round ended: the device stopped`);
    }
  }

  private async doDmaIo(slot: number, byMessages: boolean): Promise<void> {
    const how = byMessages ? 'MESSAGE' : 'DIRECT';
    const region = this.slots[slot];
    const port = this.dma;
    if (!region || !port) throw new VfioError(Errno.EFAULT, `no DMA region in slot ${slot} (${how})`);
    if (region.size < BigInt(DMA_PIECE * DMA_PIECES)) {
      throw new VfioError(Errno.EFAULT, `DMA region in slot ${slot} is smaller than ${DMA_PIECE * DMA_PIECES} bytes`);
    }
    const written = new Uint8Array(DMA_PIECE * DMA_PIECES);
    for (let i = 0; i < DMA_PIECES; i++) {
      this.checkRunning(how);
      const piece = written.subarray(i * DMA_PIECE, (i + 1) * DMA_PIECE);
      piece.fill(0x41 + i);
      const iova = region.iova + BigInt(i * DMA_PIECE);
      if (byMessages) {
        if (!port.writeByMessage) throw new VfioError(Errno.ENOTSUP, 'the transport has no message DMA');
        await port.writeByMessage(iova, piece);
      } else {
        port.write(iova, piece);
        // Direct writes are ours to report: the client cannot see them.
        this.dirtyLog.mark(iova, DMA_PIECE);
      }
    }
    const back = new Uint8Array(written.byteLength);
    for (let i = 0; i < DMA_PIECES; i += 2) {
      this.checkRunning(how);
      const iova = region.iova + BigInt(i * DMA_PIECE);
      let got: Uint8Array;
      if (byMessages) {
        if (!port.readByMessage) throw new VfioError(Errno.ENOTSUP, 'the transport has no message DMA');
        got = await port.readByMessage(iova, 2 * DMA_PIECE);
      } else {
        got = port.read(iova, 2 * DMA_PIECE);
      }
      back.set(got, i * DMA_PIECE);
    }
    if (!Buffer.from(back).equals(Buffer.from(written))) {
      throw new VfioError(Errno.EIO, `${how} DMA write and read back differ (slot ${slot})`);
    }
    this.log(`do_dma_io: ${how} success`);
  }

  // --- migration ----------------------------------------------------------------------------------------

  transition(from: number, to: number): void {
    if (from & DeviceState.RESUMING) {
      // Checked whole before anything changes: a refused transition leaves the device as it was.
      const bar0 = this.resumedBar0();
      if (to === DeviceState.RUNNING) this.arm(bar0);
      this.bar1.set(this.tail.subarray(0, LVU_BAR1_SIZE));
      this.bar0 = bar0;
      this.received = 0;
    } else if (to === DeviceState.RUNNING) {
      // Back to running (after a stop or a cancelled save): the sample re-arms from BAR0.
      this.arm(this.bar0);
    }
    if (to === (DeviceState.RUNNING | DeviceState.SAVING)) {
      this.cursor = 0;
      this.bar1Dirty = false;
    } else if (to === DeviceState.SAVING) {
      // Stop-and-copy: the timer stops with the device; the image is BAR1 + BAR0 from the start.
      this.cursor = 0;
    } else if (to & DeviceState.RESUMING) {
      this.received = 0;
    }
    if (!(to & DeviceState.RUNNING)) this.disarm();
    this.state = to;
  }

  pendingBytes(): number {
    if (this.state === DeviceState.SAVING) return LVU_STOP_COPY_SIZE - this.cursor;
    if (this.state === (DeviceState.RUNNING | DeviceState.SAVING)) {
      if (this.cursor < LVU_BAR1_SIZE) return LVU_BAR1_SIZE - this.cursor;
      return this.bar1Dirty ? LVU_BAR1_SIZE : 0;
    }
    return 0;
  }

  produce(out: Uint8Array): number {
    if (this.state === (DeviceState.RUNNING | DeviceState.SAVING)) {
      if (this.cursor === LVU_BAR1_SIZE && this.bar1Dirty) {
        this.cursor = 0;
        this.bar1Dirty = false;
      }
      const n = Math.min(out.byteLength, LVU_BAR1_SIZE - this.cursor);
      out.set(this.bar1.subarray(this.cursor, this.cursor + n));
      this.cursor += n;
      return n;
    }
    if (this.state !== DeviceState.SAVING) return 0;
    const image = this.stopCopyImage();
    const n = Math.min(out.byteLength, LVU_STOP_COPY_SIZE - this.cursor);
    out.set(image.subarray(this.cursor, this.cursor + n));
    this.cursor += n;
    return n;
  }

  consume(data: Uint8Array): void {
    if (!(this.state & DeviceState.RESUMING)) throw einval('lvu-sample: migration data outside RESUMING');
    const n = data.byteLength;
    const keep = LVU_STOP_COPY_SIZE;
    if (n >= keep) this.tail.set(data.subarray(n - keep));
    else {
      this.tail.copyWithin(0, n);
      this.tail.set(data, keep - n);
    }
    this.received += n;
  }

  /** Leaving RESUMING: BAR1 images, the last followed by BAR0; anything else is refused. Returns BAR0. */
  private resumedBar0(): bigint {
    const r = this.received;
    if (r < LVU_STOP_COPY_SIZE || (r - LVU_BAR0_SIZE) % LVU_BAR1_SIZE !== 0) {
      throw einval(
        `lvu-sample: resumed ${r} bytes; the state is BAR1 images (${LVU_BAR1_SIZE} bytes each) then BAR0 (8)`,
      );
    }
    return new DataView(this.tail.buffer, LVU_BAR1_SIZE, LVU_BAR0_SIZE).getBigInt64(0, true);
  }

  private stopCopyImage(): Uint8Array {
    const image = new Uint8Array(LVU_STOP_COPY_SIZE);
    image.set(this.bar1);
    new DataView(image.buffer).setBigInt64(LVU_BAR1_SIZE, this.bar0, true);
    return image;
  }

  stateDigest(): string {
    return createHash('sha256').update(this.stopCopyImage()).digest('hex');
  }

  reset(): void {
    // The sample's reset callback does nothing: BARs and the timer are kept.
  }

  close(): void {
    this.closed = true;
    this.disarm();
    if (this.bar1Mapping) native().munmap(this.bar1Mapping);
    if (this.bar1Fd !== null) native().close(this.bar1Fd);
  }
}

/** Config space: the sample's IDs; BAR sizes are filled in by the host's PciConfigSpace. */
function lvuConfig(): Uint8Array {
  const cfg = new Uint8Array(256);
  const dv = new DataView(cfg.buffer);
  dv.setUint16(0x00, 0xdead, true);
  dv.setUint16(0x02, 0xbeef, true);
  dv.setUint16(0x2c, 0xcafe, true);
  dv.setUint16(0x2e, 0xbabe, true);
  return cfg;
}
