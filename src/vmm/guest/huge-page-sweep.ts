// Background passes that collapse guest RAM into 2 MiB huge pages where it has become fully allocated:
// what Linux's khugepaged does for QEMU's anonymous guest RAM, and does not do for a memfd while the
// kernel's shmem_enabled is "never" (its usual default). A VMM runs them once its guest runs: a fresh
// destination's pages come from the stream 4 KiB at a time, and a booted guest fills its RAM as it goes;
// without them the guest would run (and migrate) in 4 KiB pages (docs/performance.md, page size and the
// kernel's copies).

import type { GuestMemory, HugePagesResult } from './guest-memory.ts';
import { HUGE_PAGE_SIZE, PAGE_SIZE } from './guest-memory.ts';

export type SweepState = 'idle' | 'active' | 'completed' | 'stopped';

export interface SweepOptions {
  /** Longest stretch of collapsing before the event loop gets a turn (default 4 ms). */
  sliceMs?: number;
  /** While true (a migration under way), the sweep waits rather than compete with it. */
  paused?: () => boolean;
  /** How long a paused sweep waits before it looks again (default 200 ms). */
  pausePollMs?: number;
  /**
   * A pass again this long after the last one ended, for blocks filled since (as khugepaged goes on);
   * none: one pass. A pass that found no free huge page (ENOMEM) does not end the repeats.
   */
  repeatMs?: number;
  /** Called after each pass with what that pass collapsed (bytes) and its failure, if any. */
  onPass?: (collapsedBytes: number, failure: string | null) => void;
}

/**
 * Passes over guest RAM's 2 MiB blocks, collapsing each that is fully allocated and not yet huge
 * (GuestMemory.hugeBlockReady: no block with holes, so memory use does not grow), a slice at a time on
 * the event loop. The first collapse failure ends a pass; a kernel without MADV_COLLAPSE (or any failure
 * but ENOMEM) ends the sweep. `result` sums the passes (its failure: the last pass's).
 */
export class HugePageSweep {
  state: SweepState = 'idle';
  readonly result: HugePagesResult = { eligibleBytes: 0, hugeBytes: 0, failure: null, ms: 0 };
  /** Passes finished. */
  passes = 0;
  private next = 0;
  /** hugeBytes when the current pass began. */
  private passStart = 0;
  /** The next slice, waiting: a turn of the event loop, or a paused sweep's next look. */
  private pending: { immediate: NodeJS.Immediate } | { timeout: NodeJS.Timeout } | null = null;
  private resolveDone: () => void = () => {};
  /** Settles when the sweep ends: its one pass done (no repeatMs), a failure that ends it, or stop(). */
  readonly done = new Promise<void>((r) => {
    this.resolveDone = r;
  });

  constructor(
    private readonly memory: GuestMemory,
    private readonly options: SweepOptions = {},
  ) {}

  start(): void {
    if (this.state !== 'idle') return;
    this.state = 'active';
    this.schedule(0);
  }

  /** Ends the sweep where it is (the VMM is closing, say). */
  stop(): void {
    if (this.state !== 'active') return;
    if (this.pending && 'immediate' in this.pending) clearImmediate(this.pending.immediate);
    else if (this.pending) clearTimeout(this.pending.timeout);
    this.pending = null;
    this.finish('stopped');
  }

  /**
   * The next slice after `ms` (0: the event loop's next turn). A wait (between passes, or paused) does not
   * keep the process alive on its own: background work is no reason for a VMM to stay.
   */
  private schedule(ms: number): void {
    this.pending =
      ms > 0
        ? { timeout: setTimeout(() => this.slice(), ms).unref() }
        : { immediate: setImmediate(() => this.slice()) };
  }

  private slice(): void {
    this.pending = null;
    if (this.state !== 'active') return;
    if (this.options.paused?.()) {
      this.schedule(this.options.pausePollMs ?? 200);
      return;
    }
    if (this.next === 0) {
      this.passStart = this.result.hugeBytes;
      this.result.failure = null;
    }
    const t0 = performance.now();
    const budget = this.options.sliceMs ?? 4;
    const blocks = this.memory.hugeBlockCount;
    // At least one block per slice, however small the budget.
    for (let first = true; this.next < blocks && (first || performance.now() - t0 < budget); first = false) {
      const b = this.next++;
      if (!this.memory.hugeBlockReady(b)) continue;
      const r = this.memory.collapseHugePages((b * HUGE_PAGE_SIZE) / PAGE_SIZE, HUGE_PAGE_SIZE / PAGE_SIZE);
      this.result.eligibleBytes += r.eligibleBytes;
      this.result.hugeBytes += r.hugeBytes;
      if (r.failure !== null) {
        this.result.failure = r.failure;
        break;
      }
    }
    this.result.ms += performance.now() - t0;
    if (this.result.failure === null && this.next < blocks) {
      this.schedule(0);
      return;
    }
    this.passes++;
    this.next = 0;
    this.options.onPass?.(this.result.hugeBytes - this.passStart, this.result.failure);
    const goOn = this.result.failure === null || this.result.failure === 'ENOMEM';
    if (this.options.repeatMs !== undefined && goOn) this.schedule(Math.max(1, this.options.repeatMs));
    else this.finish('completed');
  }

  private finish(state: SweepState): void {
    this.state = state;
    this.resolveDone();
  }
}
