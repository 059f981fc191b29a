// A device of one's own, served with live migration: a stopwatch. BAR0 holds an ID, a tick counter that
// advances while the device runs, and 256 bytes of scratch the driver may write. Its migration state is
// those registers: nothing in pre-copy, all of it in stop-and-copy. libvfio-user's samples/server.c plays
// the same role for a C device.
//
//   node --import tsx examples/stopwatch-device.ts --socket /tmp/stopwatch.sock [--scratch TEXT]
//
// In a project of your own, import from 'vfio-migrate' exactly as below.
import { createHash } from 'node:crypto';
import { parseArgs } from 'node:util';
import {
  type Bar,
  buildPciConfig,
  type DeviceModel,
  DeviceState,
  einval,
  type MigrationBackend,
  serveDevice,
} from 'vfio-migrate';

const ID = 0x50545753; // "STWP"
const REGS = 0x200; // ID u32 @0, TICKS u64 @8, SCRATCH @0x100 (256 bytes)
const MAGIC = 0x31575453; // first word of a saved state: "STW1"

class Stopwatch implements DeviceModel, MigrationBackend {
  readonly model = 'stopwatch';
  readonly config = buildPciConfig({ deviceId: 0x5357, classCode: 0x088000, revision: 1, barSizes: [REGS] });
  readonly regs = new Uint8Array(REGS);
  readonly bars: Bar[];
  private state: number = DeviceState.RUNNING;
  private saved: Uint8Array | null = null; // the state being saved, and how much of it was produced
  private produced = 0;
  private received: Uint8Array[] = [];
  private readonly timer: NodeJS.Timeout;

  constructor() {
    const dv = new DataView(this.regs.buffer);
    dv.setUint32(0, ID, true);
    this.bars = [
      {
        size: REGS,
        read: (off, len) => this.regs.slice(off, off + len),
        write: (off, data) => {
          if (off < 0x100 || off + data.byteLength > REGS) throw einval('only SCRATCH (0x100-0x1ff) is writable');
          if (!(this.state & DeviceState.RUNNING)) throw einval('the stopwatch is stopped');
          this.regs.set(data, off);
        },
      },
    ];
    // The device's own work: a tick every 10 ms, only while it runs (a stopped device changes nothing).
    this.timer = setInterval(() => {
      if (this.state & DeviceState.RUNNING) dv.setBigUint64(8, dv.getBigUint64(8, true) + 1n, true);
    }, 10).unref();
  }

  get migration(): MigrationBackend {
    return this;
  }
  attachDma(): void {} // the stopwatch does no DMA
  stateDigest(): string {
    return createHash('sha256').update(this.regs).digest('hex');
  }
  reset(): void {
    this.regs.fill(0, 8);
    this.state = DeviceState.RUNNING;
  }
  close(): void {
    clearInterval(this.timer);
  }

  // ---- MigrationBackend: called by whichever migration interface the VMM drives ----
  transition(from: number, to: number): void {
    if (from === DeviceState.RESUMING) this.load(); // throws on a bad state: the VMM's write fails
    if (to === DeviceState.RESUMING) this.received = [];
    if (!(to & DeviceState.SAVING)) this.saved = null;
    this.state = to;
  }
  pendingBytes(): number {
    return 8 + REGS - (this.saved ? this.produced : 0);
  }
  produce(out: Uint8Array): number {
    if (this.state & DeviceState.RUNNING) return 0; // nothing before stop-and-copy
    if (!this.saved) {
      this.saved = new Uint8Array(8 + REGS);
      new DataView(this.saved.buffer).setUint32(0, MAGIC, true);
      new DataView(this.saved.buffer).setUint32(4, REGS, true);
      this.saved.set(this.regs, 8);
      this.produced = 0;
    }
    const n = Math.min(out.byteLength, this.saved.byteLength - this.produced);
    out.set(this.saved.subarray(this.produced, this.produced + n));
    this.produced += n;
    return n;
  }
  consume(data: Uint8Array): void {
    this.received.push(data.slice());
  }
  private load(): void {
    const all = Buffer.concat(this.received);
    if (all.byteLength !== 8 + REGS || all.readUInt32LE(0) !== MAGIC || all.readUInt32LE(4) !== REGS) {
      throw einval(`not a stopwatch state (${all.byteLength} bytes)`);
    }
    this.regs.set(all.subarray(8));
  }
}

const { values } = parseArgs({ options: { socket: { type: 'string' }, scratch: { type: 'string' } } });
if (!values.socket) throw new Error('usage: stopwatch-device.ts --socket PATH [--scratch TEXT]');
const stopwatch = new Stopwatch();
if (values.scratch) stopwatch.bars[0]!.write(0x100, new TextEncoder().encode(values.scratch).subarray(0, 0x100));
const served = serveDevice(stopwatch, { socket: values.socket, dataSection: 'trapped' });
console.log(`serving stopwatch on ${served.path}`);
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => served.close());
