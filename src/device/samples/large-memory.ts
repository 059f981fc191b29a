// Sample device (b): a device with a large memory (default 256 MiB, BAR2) that keeps changing it while it
// runs, so that pre-copy has to iterate, and that writes completion records into guest memory by DMA, so
// that the VMM has device-dirtied pages to pick up. BAR0 holds its registers, including a read-only
// digest of its whole state, so any client can compare a resumed device with the saved one cheaply.

import { randomFillSync } from 'node:crypto';
import { einval } from '../../errors.ts';
import type { Bar } from '../bar.ts';
import { buildPciConfig } from '../pci-config.ts';
import { MemoryBar, RegisterBar, SampleDevice, xorshift32 } from './sample-device.ts';
import { imageDigest, type StateImage } from './saved-state.ts';

export const LargeMemoryRegs = {
  ID: 0x000, // u32 ro 'LMEM'
  VERSION: 0x004, // u32 ro
  MEM_SIZE: 0x008, // u64 ro
  CONTROL: 0x010, // u32 rw: bit0 work enabled, bit1 DMA enabled
  BLOCK_SIZE: 0x014, // u32 ro: migration block size
  WORK_COUNT: 0x018, // u64 ro: units of work done
  RNG: 0x020, // u32 rw: generator state (so the work sequence continues where it left off)
  DMA_BASE: 0x028, // u64 rw: guest address of the DMA ring
  DMA_SIZE: 0x030, // u64 rw: ring size in bytes (multiple of 64)
  DMA_COUNT: 0x038, // u64 ro: records written by DMA
  DIGEST: 0x040, // 32 bytes ro: SHA-256 of memory and registers, computed when read
  SCRATCH: 0x100, // rw to the end
  SIZE: 0x1000,
} as const;

export const CONTROL_WORK = 1;
export const CONTROL_DMA = 2;
const ID_LMEM = 0x4d454d4c; // "LMEM" little-endian
const VERSION = 1;
const WRITE_SIZE = 64;

export interface LargeMemoryOptions {
  /** Device memory in bytes, a power of two of at least 64 KiB (default 256 MiB). */
  memSize?: number;
  /** Migration block size (default 64 KiB). */
  blockSize?: number;
  /** 64-byte writes per second while running (default 2000). */
  workRate?: number;
  /** Generator seed (default 1). */
  seed?: number;
  /** Initial memory: all zero (default), or random bytes, as a device that has been busy for a while. */
  fill?: 'zero' | 'random';
  /** Testing control: bytes of state released per pre-copy round (default 0: no limit); see setPrecopyQuota. */
  precopyQuota?: number;
}

export class LargeMemoryDevice extends SampleDevice {
  readonly model = 'large-memory';
  readonly config: Uint8Array;
  readonly bars: readonly (Bar | undefined)[];
  readonly memory: Uint8Array;
  private readonly blockSize: number;
  private readonly regs = new Uint8Array(LargeMemoryRegs.SIZE);
  private readonly dv = new DataView(this.regs.buffer);
  private readonly seed: number;
  private readonly stateImage: StateImage;

  constructor(options: LargeMemoryOptions = {}) {
    super();
    const memSize = options.memSize ?? 256 * 1024 * 1024;
    this.blockSize = options.blockSize ?? 64 * 1024;
    if (memSize < 65536 || (memSize & (memSize - 1)) !== 0)
      throw new RangeError(`memSize ${memSize} must be a power of two >= 64 KiB`);
    if (this.blockSize < 4096 || memSize % this.blockSize !== 0)
      throw new RangeError(`blockSize ${this.blockSize} must divide memSize`);
    this.memory = new Uint8Array(memSize);
    if (options.fill === 'random') fillRandom(this.memory);
    this.stateImage = {
      descriptor: { model: this.model, version: VERSION, memSize, blockSize: this.blockSize },
      regs: this.regs,
      memory: this.memory,
      blockSize: this.blockSize,
      // Fresh memory is untouched zeroes (so a device that never wrote it never has to read it either).
      written: new Uint8Array(memSize / this.blockSize).fill(options.fill === 'random' ? 1 : 0),
    };
    this.seed = options.seed ?? 1;
    this.initRegs();
    this.config = buildPciConfig({
      deviceId: 0x0002,
      classCode: 0x058000,
      revision: VERSION,
      barSizes: [LargeMemoryRegs.SIZE, 0, memSize],
    });
    this.bars = [
      new RegisterBar(
        LargeMemoryRegs.SIZE,
        (o, l) => this.readReg(o, l),
        (o, d) => this.writeReg(o, d),
      ),
      undefined,
      new MemoryBar(this.memory, (o, d) => {
        this.requireRunning('memory write');
        this.memory.set(d, o);
        this.memoryWritten(o, d.byteLength);
      }),
    ];
    this.setWorkRate(options.workRate ?? 2000);
    this.setPrecopyQuota(options.precopyQuota ?? 0);
  }

  /** Configures the DMA ring and enables DMA (the VMM's driver would do this through BAR0). */
  configureDma(base: bigint, size: bigint): void {
    this.dv.setBigUint64(LargeMemoryRegs.DMA_BASE, base, true);
    this.dv.setBigUint64(LargeMemoryRegs.DMA_SIZE, size, true);
    this.dv.setUint32(LargeMemoryRegs.CONTROL, this.dv.getUint32(LargeMemoryRegs.CONTROL, true) | CONTROL_DMA, true);
  }

  protected image(): StateImage {
    return this.stateImage;
  }

  protected applyRegs(regs: Uint8Array): void {
    this.regs.set(regs);
  }

  protected resetForResume(): void {
    // Memory is not cleared: a resume succeeds only after every block arrived (END checks), so nothing
    // left from before can survive into a running device, and zeroing 256 MiB would only add downtime.
    this.regs.fill(0);
    this.initRegs();
  }

  protected work(units: number): void {
    const control = this.dv.getUint32(LargeMemoryRegs.CONTROL, true);
    if ((control & CONTROL_WORK) === 0) return;
    const hot = this.memory.byteLength >>> 3; // 7 in 8 writes land in the first eighth: a realistic hot set
    const slots = this.memory.byteLength / WRITE_SIZE;
    const hotSlots = hot / WRITE_SIZE;
    let rng = this.dv.getUint32(LargeMemoryRegs.RNG, true);
    let count = this.dv.getBigUint64(LargeMemoryRegs.WORK_COUNT, true);
    const line = new Uint8Array(WRITE_SIZE);
    const ldv = new DataView(line.buffer);
    for (let i = 0; i < units; i++) {
      rng = xorshift32(rng);
      const slot = (rng & 7) !== 0 ? (rng >>> 3) % hotSlots : (rng >>> 3) % slots;
      count++;
      ldv.setBigUint64(0, count, true);
      for (let w = 8; w < WRITE_SIZE; w += 4) {
        rng = xorshift32(rng);
        ldv.setUint32(w, rng, true);
      }
      const off = slot * WRITE_SIZE;
      this.memory.set(line, off);
      this.memoryWritten(off, WRITE_SIZE);
      if ((control & CONTROL_DMA) !== 0) this.dmaRecord(line);
    }
    this.dv.setUint32(LargeMemoryRegs.RNG, rng, true);
    this.dv.setBigUint64(LargeMemoryRegs.WORK_COUNT, count, true);
  }

  private dmaRecord(line: Uint8Array): void {
    const size = this.dv.getBigUint64(LargeMemoryRegs.DMA_SIZE, true);
    if (!this.dma || size < BigInt(WRITE_SIZE)) return;
    const n = this.dv.getBigUint64(LargeMemoryRegs.DMA_COUNT, true);
    const base = this.dv.getBigUint64(LargeMemoryRegs.DMA_BASE, true);
    this.dmaWrite(base + ((n * BigInt(WRITE_SIZE)) % (size - (size % BigInt(WRITE_SIZE)))), line);
    this.dv.setBigUint64(LargeMemoryRegs.DMA_COUNT, n + 1n, true);
  }

  private initRegs(): void {
    this.dv.setUint32(LargeMemoryRegs.ID, ID_LMEM, true);
    this.dv.setUint32(LargeMemoryRegs.VERSION, VERSION, true);
    this.dv.setBigUint64(LargeMemoryRegs.MEM_SIZE, BigInt(this.memory.byteLength), true);
    this.dv.setUint32(LargeMemoryRegs.BLOCK_SIZE, this.blockSize, true);
    this.dv.setUint32(LargeMemoryRegs.CONTROL, CONTROL_WORK, true);
    this.dv.setUint32(LargeMemoryRegs.RNG, this.seed >>> 0 || 1, true);
  }

  private readReg(offset: number, length: number): Uint8Array {
    const out = this.regs.slice(offset, offset + length);
    const dStart = LargeMemoryRegs.DIGEST;
    const dEnd = dStart + 32;
    if (offset < dEnd && offset + length > dStart) {
      const digest = imageDigest(this.stateImage);
      const from = Math.max(offset, dStart);
      out.set(digest.subarray(from - dStart, Math.min(offset + length, dEnd) - dStart), from - offset);
    }
    return out;
  }

  private writeReg(offset: number, data: Uint8Array): void {
    this.requireRunning('register write');
    const end = offset + data.byteLength;
    const inside = (a: number, b: number) => offset >= a && end <= b;
    const writable =
      inside(LargeMemoryRegs.CONTROL, LargeMemoryRegs.CONTROL + 4) ||
      inside(LargeMemoryRegs.RNG, LargeMemoryRegs.RNG + 4) ||
      inside(LargeMemoryRegs.DMA_BASE, LargeMemoryRegs.DMA_SIZE + 8) ||
      inside(LargeMemoryRegs.SCRATCH, LargeMemoryRegs.SIZE);
    if (!writable) throw einval(`large-memory: [${offset}, ${end}) is not writable`);
    this.regs.set(data, offset);
  }
}

function fillRandom(memory: Uint8Array): void {
  // randomFillSync takes at most 2^31-1 bytes per call.
  const step = 1 << 30;
  for (let at = 0; at < memory.byteLength; at += step) randomFillSync(memory.subarray(at, at + step));
}
