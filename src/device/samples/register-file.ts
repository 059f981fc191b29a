// Sample device (a): a small register-file device in the manner of a UART. 4 KiB of state: identity and
// control registers, a free-running tick counter that advances while the device runs, scratch space and a
// transmit FIFO that the driver fills through TX_DATA. It has no pre-copy data: its whole state moves in
// stop-and-copy, which is the case every migration driver must also handle.

import { einval } from '../../errors.ts';
import type { Bar } from '../bar.ts';
import { buildPciConfig } from '../pci-config.ts';
import { RegisterBar, SampleDevice } from './sample-device.ts';
import type { StateImage } from './saved-state.ts';

export const RegisterFileRegs = {
  ID: 0x000, // u32 ro 'UART'
  VERSION: 0x004, // u32 ro
  TICKS: 0x008, // u64 ro: advances by one per unit of work while running
  TX_DATA: 0x010, // u32 wo: low byte appended to the FIFO
  TX_HEAD: 0x014, // u32 ro: bytes ever written to the FIFO
  LCR: 0x018, // u32 rw
  IER: 0x01c, // u32 rw
  SCRATCH: 0x100, // rw up to FIFO
  FIFO: 0x800, // ro ring, 2 KiB
  SIZE: 0x1000,
} as const;

const ID_UART = 0x54524155; // "UART" little-endian
const VERSION = 1;
const FIFO_SIZE = RegisterFileRegs.SIZE - RegisterFileRegs.FIFO;

export class RegisterFileDevice extends SampleDevice {
  readonly model = 'register-file';
  readonly config = buildPciConfig({
    deviceId: 0x0001,
    classCode: 0x070002,
    revision: VERSION,
    barSizes: [RegisterFileRegs.SIZE],
  });
  readonly bars: readonly (Bar | undefined)[];
  private readonly regs = new Uint8Array(RegisterFileRegs.SIZE);
  private readonly dv = new DataView(this.regs.buffer);
  private readonly stateImage: StateImage = {
    descriptor: { model: this.model, version: VERSION, regs: RegisterFileRegs.SIZE },
    regs: this.regs,
    memory: new Uint8Array(0),
    blockSize: 4096,
    written: new Uint8Array(0),
  };

  constructor(options: { tickRate?: number } = {}) {
    super();
    this.initRegs();
    this.bars = [
      new RegisterBar(
        RegisterFileRegs.SIZE,
        (o, l) => this.regs.slice(o, o + l),
        (o, d) => this.writeReg(o, d),
      ),
    ];
    this.setWorkRate(options.tickRate ?? 100);
  }

  protected image(): StateImage {
    return this.stateImage;
  }

  protected applyRegs(regs: Uint8Array): void {
    this.regs.set(regs);
  }

  protected resetForResume(): void {
    this.regs.fill(0);
    this.initRegs();
  }

  protected work(units: number): void {
    this.dv.setBigUint64(
      RegisterFileRegs.TICKS,
      this.dv.getBigUint64(RegisterFileRegs.TICKS, true) + BigInt(units),
      true,
    );
  }

  private initRegs(): void {
    this.dv.setUint32(RegisterFileRegs.ID, ID_UART, true);
    this.dv.setUint32(RegisterFileRegs.VERSION, VERSION, true);
  }

  private writeReg(offset: number, data: Uint8Array): void {
    this.requireRunning('register write');
    const end = offset + data.byteLength;
    if (offset === RegisterFileRegs.TX_DATA && data.byteLength === 4) {
      const head = this.dv.getUint32(RegisterFileRegs.TX_HEAD, true);
      this.regs[RegisterFileRegs.FIFO + (head % FIFO_SIZE)] = data[0]!;
      this.dv.setUint32(RegisterFileRegs.TX_HEAD, head + 1, true);
      return;
    }
    const rw =
      (offset >= RegisterFileRegs.LCR && end <= RegisterFileRegs.IER + 4) ||
      (offset >= RegisterFileRegs.SCRATCH && end <= RegisterFileRegs.FIFO);
    if (!rw) throw einval(`register-file: [${offset}, ${end}) is not writable`);
    this.regs.set(data, offset);
  }
}
