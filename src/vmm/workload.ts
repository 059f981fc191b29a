// The synthetic guest: vCPUs as worker threads writing guest RAM at a set rate and pattern. pause()
// resolves only when every vCPU has stopped writing (each acknowledges through the shared control block),
// which is what "the VM is stopped" must mean before the last dirty pages are collected.

import { Worker } from 'node:worker_threads';
import { Errno } from '../abi/errno.ts';
import { VfioError } from '../errors.ts';
import type { GuestDirtyBitmap } from './dirty-bitmap.ts';
import type { GuestMemory } from './guest-memory.ts';
import { Control, type VcpuConfig, type WritePattern } from './workload-control.ts';

export interface WorkloadOptions {
  vcpus: number;
  /** Page writes per second over all vCPUs (0 = an idle guest). */
  pagesPerSecond: number;
  pattern: WritePattern;
  /** For `hot`: the fraction of memory that takes 7 of 8 writes. */
  hotFraction?: number;
  seed?: number;
  /** Create the vCPUs paused (a destination's guest runs only once the VM starts). */
  startPaused?: boolean;
}

const workerUrl = new URL('./vcpu-worker.ts', import.meta.url).href;
const tsxApi = import.meta.resolve('tsx/esm/api');

export class Workload {
  private readonly ctl: Int32Array;
  private readonly stats: Float64Array;
  private readonly workers: Worker[] = [];
  private running = true;

  constructor(
    memory: GuestMemory,
    dirty: GuestDirtyBitmap,
    readonly options: WorkloadOptions,
  ) {
    const control = new SharedArrayBuffer(4 * (1 + options.vcpus));
    const stats = new SharedArrayBuffer(8 * options.vcpus);
    this.ctl = new Int32Array(control);
    this.stats = new Float64Array(stats);
    if (options.startPaused) {
      Atomics.store(this.ctl, Control.COMMAND, Control.PAUSE);
      this.running = false;
    }
    // Workers do not inherit the tsx loader: register it in each, then load the vCPU code.
    const code = `import(${JSON.stringify(tsxApi)}).then(({ register }) => { register(); return import(${JSON.stringify(workerUrl)}); });`;
    for (let i = 0; i < options.vcpus; i++) {
      const cfg: VcpuConfig = {
        index: i,
        fd: memory.fd,
        size: memory.size,
        bitmap: dirty.buffer,
        control,
        stats,
        pagesPerSecond: options.pagesPerSecond / options.vcpus,
        pattern: options.pattern,
        hotFraction: options.hotFraction ?? 0.1,
        seed: (options.seed ?? 1) + i * 7919,
      };
      const w = new Worker(code, { eval: true, workerData: cfg });
      w.on('error', (err) => process.stderr.write(`vcpu ${i}: ${err.message}\n`));
      w.unref();
      this.workers.push(w);
    }
  }

  get isRunning(): boolean {
    return this.running;
  }

  /** Page writes done so far, all vCPUs. */
  get pagesWritten(): number {
    let n = 0;
    for (const v of this.stats) n += v;
    return n;
  }

  /** Stops every vCPU; resolves once all acknowledged (or fails after `timeoutMs`). */
  async pause(timeoutMs = 5000): Promise<void> {
    Atomics.store(this.ctl, Control.COMMAND, Control.PAUSE);
    Atomics.notify(this.ctl, Control.COMMAND);
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      let acked = 0;
      for (let i = 0; i < this.workers.length; i++) acked += Atomics.load(this.ctl, Control.ACK + i);
      if (acked === this.workers.length) break;
      if (performance.now() > deadline)
        throw new VfioError(Errno.ETIMEDOUT, `only ${acked} of ${this.workers.length} vCPUs paused`);
      await new Promise((r) => setTimeout(r, 1));
    }
    this.running = false;
  }

  resume(): void {
    Atomics.store(this.ctl, Control.COMMAND, Control.RUN);
    Atomics.notify(this.ctl, Control.COMMAND);
    this.running = true;
  }

  async stop(): Promise<void> {
    Atomics.store(this.ctl, Control.COMMAND, Control.STOP);
    Atomics.notify(this.ctl, Control.COMMAND);
    await Promise.all(this.workers.map((w) => w.terminate()));
    this.running = false;
  }
}
