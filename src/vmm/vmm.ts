// A VMM process's pieces, wired: guest RAM in a memfd (DMA-mapped into every device server), the dirty
// log, the synthetic guest, the run state with its change handlers (devices, then vCPUs; reversed on
// stop), one VFIO migration driver per device, and the migration controller.

import { createHash, randomFillSync } from 'node:crypto';
import { LargeMemoryRegs } from '../device/samples/large-memory.ts';
import { native } from '../native/addon.ts';
import { VfioUserClient } from '../vfio-user/client.ts';
import { GuestDirtyBitmap } from './guest/dirty-bitmap.ts';
import { bootGuestDriver } from './guest/guest-driver.ts';
import { GUEST_RAM_NAME, GuestMemory, type HugePagesResult } from './guest/guest-memory.ts';
import { HugePageSweep } from './guest/huge-page-sweep.ts';
import { Workload, type WorkloadOptions } from './guest/workload.ts';
import { MigrationController } from './migration/controller.ts';
import { RamHandler } from './migration/ram-handler.ts';
import { statusIsActive } from './migration/status.ts';
import { VfioHandler } from './migration/vfio-handler.ts';
import { RunState } from './run-state.ts';
import { noTrace, type Tracer } from './trace.ts';
import { attachMigrationDriver, type FlavorChoice } from './vfio/attach.ts';
import { parseDeviceSpec } from './vfio/device-spec.ts';
import type { DmaRangeRef, VfioMigrationDriver } from './vfio/driver.ts';

export interface VmmOptions {
  memSize: number;
  /** `PATH[,precopy=on|off]` per device (vfio/device-spec.ts). */
  deviceSockets: readonly string[];
  /** Wait for an incoming migration instead of booting the guest. */
  incoming: boolean;
  workload: WorkloadOptions | null;
  trace?: Tracer;
  log?: (line: string) => void;
  emit?: (event: string, data?: Record<string, unknown>) => void;
  stallTimeoutMs?: number;
  /** The VM's uuid (QEMU's -uuid), 16 bytes; none: multifd channels carry zeroes and none is checked. */
  uuid?: Uint8Array;
  /** Guest RAM contents at boot: zero (default) or pseudo-random bytes (a non-zero guest, for benchmarks). */
  fill?: 'zero' | 'random';
  /** Fault every page in at startup (QEMU's -mem-prealloc) rather than on first use. */
  prefault?: boolean;
  /**
   * Guest RAM in 2 MiB transparent huge pages where it can be (default true): advised MADV_HUGEPAGE, as
   * QEMU advises its RAM, and collapsed into huge pages wherever it is faulted in at startup (prefault,
   * fill), which a memfd gets no other way on a kernel whose shmem THP is off (GuestMemory.collapseHugePages).
   */
  hugePages?: boolean;
  /** Which migration interface to drive on each device (default auto: the newest one it offers). */
  flavor?: FlavorChoice;
  /**
   * Guest RAM is DMA-mapped into each device as this many equal regions (default 1), as QEMU maps one per
   * RAM section; some devices address their DMA by region (libvfio-user's sample uses two).
   */
  dmaRegions?: number;
  /** Wire each device's INTx to an eventfd (SET_IRQS), as a VMM does for a device that raises INTx. */
  intx?: boolean;
}

export interface VmmDevice {
  name: string;
  client: VfioUserClient;
  driver: VfioMigrationDriver;
  handler: VfioHandler;
  /** BAR0's size, read at startup (a stopped device answers only region accesses). */
  bar0Size: number;
  /** eventfds given to the device for its interrupts (closed with the VMM). */
  irqFds: number[];
}

/** What the user is told once a device is lost. */
export function deviceLostMessage(d: VmmDevice): string {
  return (
    `device ${d.name} is lost (its device server hung up: ${d.driver.lost}); its state is gone, so this VM cannot be ` +
    'migrated or saved any more: shut the guest down cleanly and start it again with a new device server'
  );
}

/** PCI-style names for the devices, as QEMU's idstr would carry them: 0000:00:05.0, 0000:00:06.0, … */
/** Guest RAM as `n` page-aligned DMA ranges covering it (the last takes the remainder). */
export function dmaSlices(size: number, n: number): DmaRangeRef[] {
  const pages = size / 4096;
  if (!Number.isInteger(n) || n < 1 || n > pages) throw new RangeError(`DMA regions must be 1 to ${pages}, not ${n}`);
  const each = Math.floor(pages / n) * 4096;
  return Array.from({ length: n }, (_, i) => ({
    iova: BigInt(i * each),
    size: BigInt(i === n - 1 ? size - i * each : each),
  }));
}

function deviceName(i: number): string {
  return `0000:00:${(5 + i).toString(16).padStart(2, '0')}.0`;
}

export class Vmm {
  readonly memory: GuestMemory;
  readonly dirty: GuestDirtyBitmap;
  readonly runState: RunState;
  readonly devices: VmmDevice[] = [];
  readonly migration: MigrationController;
  workload: Workload | null = null;
  private emitFn: (event: string, data?: Record<string, unknown>) => void;

  private constructor(
    readonly options: VmmOptions,
    memory: GuestMemory,
    devices: VmmDevice[],
    dmaRanges: DmaRangeRef[],
  ) {
    this.memory = memory;
    this.devices = devices;
    this.dirty = new GuestDirtyBitmap(memory.pages);
    // A device's DMA_WRITE messages write guest RAM through our client: we log those pages ourselves.
    for (const d of devices) {
      d.client.onDmaWrite = (iova, length) => {
        const first = iova / 4096n;
        const last = (iova + BigInt(Math.max(length, 1)) - 1n) / 4096n;
        this.dirty.sink(first, Number(last - first + 1n), 'all');
      };
    }
    this.runState = new RunState(options.incoming ? 'inmigrate' : 'prelaunch');
    this.emitFn = options.emit ?? (() => {});
    const log = options.log ?? (() => {});
    for (const d of devices)
      this.runState.addChangeHandler((running, reason) => d.driver.vmStateChange(running, reason));
    this.runState.addChangeHandler(async (running) => {
      if (!this.workload) return;
      if (running) this.workload.resume();
      else await this.workload.pause();
    });
    this.runState.addChangeHandler((running) => this.emit(running ? 'RESUME' : 'STOP'));
    for (const d of devices) {
      d.client.on('close', (reason) => {
        if (!reason) return; // our own close() gives no reason
        log(deviceLostMessage(d));
        this.emit('X_DEVICE_LOST', { device: d.name, reason: reason.message });
      });
    }
    this.migration = new MigrationController({
      runState: this.runState,
      // An incoming VM's memfd is new and nothing runs on it before the load: it reads as zeroes wherever
      // the load has not written, so zero pages need not touch it.
      ram: new RamHandler(memory, this.dirty, { freshMemory: options.incoming }),
      memory,
      uuid: options.uuid,
      dirty: this.dirty,
      ramSize: memory.size,
      devices,
      dmaRanges,
      emit: (e, d) => this.emit(e, d),
      log,
      stallTimeoutMs: options.stallTimeoutMs,
    });
  }

  /** Where QMP events go (set once the QMP server exists). */
  set eventSink(fn: (event: string, data?: Record<string, unknown>) => void) {
    this.emitFn = fn;
  }

  private emit(event: string, data?: Record<string, unknown>): void {
    this.emitFn(event, data);
  }

  static async create(o: VmmOptions): Promise<Vmm> {
    const huge = hugePagesOn(o);
    const memory = GuestMemory.create(o.memSize, GUEST_RAM_NAME, { adviseHugePages: huge });
    if (o.prefault) {
      if (huge) logHugePages(memory.collapseHugePages(), o.log);
      const r = memory.prefault();
      o.log?.(`prefaulted ${r.pages} pages (populate ${r.populateMs.toFixed(0)} ms, touch ${r.touchMs.toFixed(0)} ms)`);
    }
    const devices: VmmDevice[] = [];
    const dmaRanges = dmaSlices(memory.size, o.dmaRegions ?? 1);
    try {
      for (const [i, text] of o.deviceSockets.entries()) {
        const name = deviceName(i);
        const spec = parseDeviceSpec(text);
        const client = await VfioUserClient.connect(spec.path, { maxWriteSize: spec.maxWrite });
        let driver: VfioMigrationDriver | undefined;
        const irqFds: number[] = [];
        try {
          for (const r of dmaRanges) await client.dmaMap({ iova: r.iova, size: r.size, fd: memory.fd, offset: r.iova });
          // The device may also reach guest RAM by DMA_READ/DMA_WRITE messages (libvfio-user's vfu_sgl_read/write).
          for (const v of memory.pieceViews()) client.registerDmaMemory(BigInt(v.offset), v.bytes);
          driver = await attachMigrationDriver(client, name, {
            flavor: o.flavor,
            trace: o.trace ?? noTrace,
            precopy: spec.precopy,
            dmaRanges,
          });
          if (o.intx) {
            irqFds.push(native().eventfd(0, true));
            await client.setIrqs({ index: 0, start: 0, count: 1, action: 'trigger', eventfds: irqFds });
          }
          const bar0 = await client.regionInfo(0);
          if (bar0.fd !== undefined) native().close(bar0.fd);
          devices.push({ name, client, driver, handler: new VfioHandler(driver), bar0Size: Number(bar0.size), irqFds });
        } catch (err) {
          // This device is not in `devices` yet: release what was opened for it before the others.
          driver?.close();
          client.close();
          for (const fd of irqFds) native().close(fd);
          throw err;
        }
      }
    } catch (err) {
      for (const d of devices) {
        d.driver.close();
        d.client.close();
        for (const fd of d.irqFds) native().close(fd);
      }
      memory.close();
      throw err;
    }
    const vmm = new Vmm(o, memory, devices, dmaRanges);
    if (o.incoming) {
      // The vCPUs exist from the start but write nothing until the migrated VM starts here.
      if (o.workload) vmm.workload = new Workload(memory, vmm.dirty, { ...o.workload, startPaused: true });
    } else {
      await vmm.boot();
    }
    return vmm;
  }

  /** A fresh guest: the guest driver programs the devices, the vCPUs start, the VM runs. */
  private async boot(): Promise<void> {
    // The device DMA ring: the top 1 MiB of guest RAM (or all of it for a tiny guest).
    const ring = BigInt(Math.min(1 << 20, this.memory.size));
    if (this.options.fill === 'random') {
      if (hugePagesOn(this.options) && !this.memory.allFaultedIn)
        logHugePages(this.memory.collapseHugePages(), this.options.log);
      fillRandom(this.memory);
    }
    for (const d of this.devices) {
      const did = await bootGuestDriver(d.client, BigInt(this.memory.size) - ring, ring);
      if (did) this.options.log?.(`${d.name}: ${did}`);
    }
    if (this.options.workload) {
      this.workload = new Workload(this.memory, this.dirty, this.options.workload);
      // The vCPU threads exist before the VM runs (as QEMU's do): a stop right after boot, a migration's
      // among them, must not wait for them to load and count their start-up as downtime.
      await this.workload.ready();
    }
    this.startHugePageSweep();
    const errors = await this.runState.transition('running', 'boot');
    if (errors.length) throw errors[0];
  }

  /**
   * Digests to prove two VMs equal: SHA-256 over every page's digest, and each device's own state
   * digest read through its BAR (large-memory: its DIGEST register; others: the whole of BAR0).
   */
  async digests(): Promise<{ ram: string; devices: { name: string; digest: string | null; lost?: string }[] }> {
    const ram = createHash('sha256').update(this.memory.pageDigests()).digest('hex');
    const devices: { name: string; digest: string | null; lost?: string }[] = [];
    for (const d of this.devices) {
      if (d.driver.lost) {
        // Nothing to digest: the state is gone. Said as such rather than failing the guest's RAM digest too.
        devices.push({ name: d.name, digest: null, lost: d.driver.lost });
        continue;
      }
      // A device whose BAR0 refuses a 4-byte read (libvfio-user's sample takes only 8) is not large-memory.
      const id = await d.client.regionRead(0, 0, 4).catch(() => null);
      const isLmem = id !== null && new DataView(id.buffer, id.byteOffset, 4).getUint32(0, true) === 0x4d454d4c;
      const bytes = isLmem
        ? await d.client.regionRead(0, LargeMemoryRegs.DIGEST, 32)
        : await d.client.regionRead(0, 0, d.bar0Size);
      devices.push({ name: d.name, digest: createHash('sha256').update(bytes).digest('hex') });
    }
    return { ram, devices };
  }

  async stop(): Promise<void> {
    const errors = await this.runState.transition('paused', 'stop');
    if (errors.length) throw errors[0];
  }

  async cont(): Promise<void> {
    const errors = await this.runState.transition('running', 'cont');
    if (errors.length) throw errors[0];
  }

  /** The huge-page sweep once the guest runs (null before, or with huge pages off). */
  hugePageSweep: HugePageSweep | null = null;

  /**
   * Collapses guest RAM into huge pages in the background wherever it has become fully allocated
   * (HugePageSweep: a pass every HUGE_PAGE_SWEEP_MS, waiting while a migration is under way): started at
   * boot, and by the VMM command once its incoming migration completed. Logs each pass that made any.
   */
  startHugePageSweep(): void {
    if (!hugePagesOn(this.options) || this.hugePageSweep) return;
    const log = this.options.log;
    this.hugePageSweep = new HugePageSweep(this.memory, {
      paused: () => statusIsActive(this.migration.status),
      repeatMs: HUGE_PAGE_SWEEP_MS,
      onPass: (bytes, failure) => {
        const why = failure === null ? '' : `; MADV_COLLAPSE failed (${failure})`;
        if (bytes > 0 || failure !== null)
          log?.(`huge pages: ${(bytes / 2 ** 20).toFixed(0)} MiB of guest RAM collapsed in the background${why}`);
      },
    });
    this.hugePageSweep.start();
  }

  async close(): Promise<void> {
    this.hugePageSweep?.stop();
    this.migration.close();
    await this.workload?.stop();
    for (const d of this.devices) {
      d.driver.close();
      d.client.close();
      for (const fd of d.irqFds) native().close(fd);
    }
    this.memory.close();
  }
}

/** VmmOptions.hugePages with its default. */
function hugePagesOn(o: VmmOptions): boolean {
  return o.hugePages ?? true;
}

/** Between two background passes over guest RAM for blocks to collapse (a pass: an lseek per block not yet huge). */
const HUGE_PAGE_SWEEP_MS = 10_000;

function logHugePages(r: HugePagesResult, log: ((line: string) => void) | undefined): void {
  const mib = (n: number) => (n / 2 ** 20).toFixed(0);
  const why = r.failure === null ? '' : `; MADV_COLLAPSE failed (${r.failure}), the rest stays in 4 KiB pages`;
  log?.(`huge pages: ${mib(r.hugeBytes)} of ${mib(r.eligibleBytes)} MiB of guest RAM (${r.ms.toFixed(0)} ms)${why}`);
}

/** Fills guest RAM with random bytes, 1 MiB at a time. */
function fillRandom(memory: GuestMemory): void {
  memory.prefault(); // much faster than taking the first-write faults one by one
  const buf = new Uint8Array(Math.min(1 << 20, memory.size));
  for (let at = 0; at < memory.size; at += buf.byteLength) {
    randomFillSync(buf);
    memory.write(at, buf.subarray(0, Math.min(buf.byteLength, memory.size - at)));
  }
}
