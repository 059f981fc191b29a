// The synthetic guest: vCPUs as worker threads (vcpu-worker.ts), each mapping guest RAM from the memfd
// and writing pages at its share of a total rate with a pattern, marking each page in the shared dirty
// log after writing it. pause() resolves only when every vCPU has acknowledged, through the shared
// control block, that it stopped writing: then all its writes and marks are visible here, which is what
// "the VM is stopped" must mean before the last dirty pages are collected (workload-control.ts has the
// handshake).

import { Worker } from 'node:worker_threads';
import { Errno } from '../../abi/errno.ts';
import { VfioError } from '../../errors.ts';
import { workerEntry } from '../worker-entry.ts';
import type { GuestDirtyBitmap } from './dirty-bitmap.ts';
import { type GuestMemory, PAGE_SIZE } from './guest-memory.ts';
import {
  Control,
  controlSlots,
  type GuestRange,
  reservedRuns,
  Stats,
  statsSlots,
  type VcpuConfig,
  vcpuStats,
  WRITE_PATTERNS,
  type WritePattern,
} from './workload-control.ts';

export type { GuestRange, WritePattern } from './workload-control.ts';

export interface WorkloadOptions {
  vcpus: number;
  /** Page writes per second over all vCPUs (0 = an idle guest). */
  pagesPerSecond: number;
  pattern: WritePattern;
  /** For `hot`: the fraction of memory (from page 0) that takes `hotShare` of the writes (default 0.1). */
  hotFraction?: number;
  /** For `hot`: the share of writes that go to the hot pages (default 7/8). */
  hotShare?: number;
  seed?: number;
  /**
   * Guest RAM the vCPUs never write: the buffers a guest driver gives a device to DMA into, which a real
   * guest leaves to the device (a device checking its DMA by reading it back needs them left alone).
   */
  reserved?: readonly GuestRange[];
  /** Create the vCPUs paused (a destination's guest runs only once the VM starts). */
  startPaused?: boolean;
  /** How long the vCPU threads may take to start before pause() gives up on them (default 30 s). */
  startupTimeoutMs?: number;
  /** Where a vCPU thread's crash is reported (default: stderr). pause() and resume() fail afterwards. */
  onError?: (vcpu: number, err: Error) => void;
}

export interface WorkloadStats {
  /** Pages written by each vCPU. */
  perVcpu: number[];
  total: number;
  /** Milliseconds the workload has been running (not paused) since it was created. */
  runningMs: number;
}

const bootstrap = workerEntry(import.meta.url, 'vcpu-worker');

type AtomicsWithWaitAsync = typeof Atomics & {
  waitAsync(
    ta: Int32Array,
    index: number,
    value: number,
    timeout?: number,
  ): { async: false; value: 'not-equal' | 'timed-out' } | { async: true; value: Promise<'ok' | 'timed-out'> };
};

export class Workload {
  /** The vCPU threads (exposed for fault injection in tests). */
  readonly workers: readonly Worker[];
  private readonly ctl: Int32Array;
  private readonly nums: Float64Array;
  private readonly dead: (Error | null)[];
  private running: boolean;
  private stopped = false;
  private runningSince = 0;
  private runningTotal = 0;

  constructor(
    memory: GuestMemory,
    dirty: GuestDirtyBitmap,
    readonly options: WorkloadOptions,
  ) {
    const n = options.vcpus;
    if (!Number.isSafeInteger(n) || n < 1 || n > 1024) throw new RangeError(`vcpus ${n} must be 1..1024`);
    if (!WRITE_PATTERNS.includes(options.pattern)) throw new RangeError(`unknown write pattern ${options.pattern}`);
    if (dirty.pages !== memory.pages)
      throw new RangeError(`the dirty log covers ${dirty.pages} pages, guest memory ${memory.pages}`);
    checkRate(options.pagesPerSecond);
    const reserved = reservedRuns(options.reserved ?? [], memory.pages, PAGE_SIZE);
    const control = new SharedArrayBuffer(4 * controlSlots(n));
    const stats = new SharedArrayBuffer(8 * statsSlots(n));
    this.ctl = new Int32Array(control);
    this.nums = new Float64Array(stats);
    this.nums[Stats.RATE] = options.pagesPerSecond;
    this.dead = new Array<Error | null>(n).fill(null);
    this.running = !options.startPaused;
    if (options.startPaused) this.command(Control.PAUSE);
    else this.runningSince = performance.now();
    const onError = options.onError ?? ((i, err) => process.stderr.write(`vcpu ${i}: ${err.stack ?? err.message}\n`));
    const workers: Worker[] = [];
    for (let i = 0; i < n; i++) {
      const cfg: VcpuConfig = {
        index: i,
        vcpus: n,
        fd: memory.fd,
        size: memory.size,
        pieceSize: memory.pieceSize,
        bitmap: dirty.buffer,
        control,
        stats,
        pattern: options.pattern,
        hotFraction: options.hotFraction ?? 0.1,
        hotShare: options.hotShare ?? 7 / 8,
        seed: (options.seed ?? 1) + i * 7919,
        reserved,
      };
      const w = new Worker(bootstrap, { eval: true, workerData: cfg });
      w.on('error', (err) => {
        this.dead[i] ??= err;
        onError(i, err);
        this.wake();
      });
      w.on('exit', (code) => {
        if (!this.stopped) this.dead[i] ??= new Error(`exited with code ${code}`);
        this.wake();
      });
      w.unref();
      workers.push(w);
    }
    this.workers = workers;
  }

  get vcpus(): number {
    return this.workers.length;
  }

  get isRunning(): boolean {
    return this.running;
  }

  /** Page writes done so far, all vCPUs. Exact once paused; a lower bound while running. */
  get pagesWritten(): number {
    let n = 0;
    for (let i = 0; i < this.vcpus; i++) n += this.nums[vcpuStats(i) + Stats.WRITES]!;
    return n;
  }

  stats(): WorkloadStats {
    const perVcpu: number[] = [];
    for (let i = 0; i < this.vcpus; i++) perVcpu.push(this.nums[vcpuStats(i) + Stats.WRITES]!);
    const runningMs = this.runningTotal + (this.running ? performance.now() - this.runningSince : 0);
    return { perVcpu, total: perVcpu.reduce((a, b) => a + b, 0), runningMs };
  }

  /** The total page-write rate (pages/s over all vCPUs; 0 = idle). Takes effect at once. */
  get rate(): number {
    return this.nums[Stats.RATE]!;
  }

  setRate(pagesPerSecond: number): void {
    checkRate(pagesPerSecond);
    this.nums[Stats.RATE] = pagesPerSecond;
    // Bump the epoch so idle or sleeping vCPUs look again.
    this.command(Atomics.load(this.ctl, Control.COMMAND));
  }

  /** vCPU threads that are up (have mapped memory and the log and entered their loop). */
  get vcpusUp(): number {
    return this.countWhere((i) => this.nums[vcpuStats(i) + Stats.STARTED] === 1);
  }

  /** Resolves once every vCPU thread is up (has mapped memory and the log and entered its loop). */
  async ready(timeoutMs = this.options.startupTimeoutMs ?? 30_000): Promise<void> {
    await this.waitFor(() => this.vcpusUp, timeoutMs, 'started');
  }

  /**
   * Stops every vCPU. Resolves once all acknowledged: from then on no vCPU writes, and every write and
   * dirty mark they made is visible to this thread. Rejects with ETIMEDOUT if a vCPU does not answer
   * within `timeoutMs` (once all are up), and at once (EIO) if a vCPU thread died.
   */
  async pause(timeoutMs = 5000): Promise<void> {
    this.checkUsable();
    const epoch = this.command(Control.PAUSE);
    if (this.running) {
      this.runningTotal += performance.now() - this.runningSince;
      this.running = false;
    }
    await this.ready();
    await this.waitFor(
      () => {
        if (Atomics.load(this.ctl, Control.COMMAND) !== Control.PAUSE)
          throw new VfioError(Errno.EBUSY, 'the workload was resumed or stopped before every vCPU paused');
        return this.countWhere((i) => Atomics.load(this.ctl, Control.ACK + i) >= epoch);
      },
      timeoutMs,
      'paused',
    );
  }

  /** Lets the vCPUs write again (they start writing as soon as they see it; nothing to wait for). */
  resume(): void {
    this.checkUsable();
    this.command(Control.RUN);
    if (!this.running) {
      this.running = true;
      this.runningSince = performance.now();
    }
  }

  /** Ends the vCPU threads (terminating them; no handshake). Idempotent. */
  async stop(): Promise<void> {
    if (!this.stopped) {
      this.stopped = true;
      this.command(Control.STOP);
      if (this.running) this.runningTotal += performance.now() - this.runningSince;
      this.running = false;
    }
    await Promise.all(this.workers.map((w) => w.terminate()));
  }

  /** Stores a command, then bumps the epoch and wakes every vCPU. Returns the new epoch. */
  private command(cmd: number): number {
    Atomics.store(this.ctl, Control.COMMAND, cmd);
    const epoch = Atomics.add(this.ctl, Control.EPOCH, 1) + 1;
    Atomics.notify(this.ctl, Control.EPOCH);
    return epoch;
  }

  private wake(): void {
    Atomics.add(this.ctl, Control.SIGNAL, 1);
    Atomics.notify(this.ctl, Control.SIGNAL);
  }

  private checkUsable(): void {
    if (this.stopped) throw new VfioError(Errno.EINVAL, 'the workload is stopped');
    this.checkAlive();
  }

  private checkAlive(): void {
    const i = this.dead.findIndex((e) => e !== null);
    if (i >= 0) throw new VfioError(Errno.EIO, `vCPU ${i} is dead: ${this.dead[i]!.message}`, { cause: this.dead[i] });
  }

  private countWhere(pred: (i: number) => boolean): number {
    let n = 0;
    for (let i = 0; i < this.vcpus; i++) if (pred(i)) n++;
    return n;
  }

  /** Waits (on SIGNAL, which vCPUs bump and notify) until count() reaches every vCPU. */
  private async waitFor(count: () => number, timeoutMs: number, what: string): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    // A pending Atomics.waitAsync does not keep Node's event loop alive (and the vCPU threads are
    // unref'd): hold it with a timer meanwhile, or a process with nothing else to do would just exit.
    const hold = setInterval(() => {}, 1 << 30);
    try {
      for (;;) {
        const seen = Atomics.load(this.ctl, Control.SIGNAL);
        this.checkAlive();
        const done = count();
        if (done === this.vcpus) return;
        const left = deadline - performance.now();
        if (left <= 0)
          throw new VfioError(Errno.ETIMEDOUT, `only ${done} of ${this.vcpus} vCPUs ${what} within ${timeoutMs} ms`);
        const r = (Atomics as AtomicsWithWaitAsync).waitAsync(this.ctl, Control.SIGNAL, seen, left);
        if (r.async) await r.value;
      }
    } finally {
      clearInterval(hold);
    }
  }
}

function checkRate(r: number): void {
  if (!Number.isFinite(r) || r < 0) throw new RangeError(`page write rate ${r} must be a finite number >= 0`);
}
