// Populating a fresh destination's guest RAM ahead of the incoming stream, on a thread of its own. QEMU
// populates all of guest RAM before a migration when asked (-mem-prealloc, several threads in
// qemu_prealloc_mem) and otherwise takes a page fault per page as it loads; this is the middle way for a
// VM whose memory is fresh: the loader (ram-handler.ts) populates a dense section's pages itself and asks
// this thread for the span after them, so that the kernel's work of allocating and zeroing the next
// sections' pages runs on another core while this one copies pages in. Only what follows dense data is
// asked for, so a mostly-zero guest still maps next to nothing.
import { Worker } from 'node:worker_threads';
import { workerEntry } from '../worker-entry.ts';
import type { GuestMemory } from './guest-memory.ts';

export class PopulateAhead {
  private readonly worker: Worker;
  /** [0]: end (page) of the last range the thread finished; requests are done in order. */
  private readonly done = new Int32Array(new SharedArrayBuffer(4));
  /** The run of contiguous requests: [start, requestedTo). */
  private start = 0;
  private requestedTo = 0;

  constructor(memory: GuestMemory) {
    this.worker = new Worker(workerEntry(import.meta.url, 'populate-worker'), {
      eval: true,
      workerData: { memory: memory.share(), done: this.done },
    });
    // A thread that is only ever asked for more never keeps the VMM alive; an error is its own (the loader
    // populates what the thread has not, so a dead thread costs speed only).
    this.worker.unref();
    this.worker.on('error', () => {});
  }

  /**
   * Where the loader's own populating of [from, ...) starts: past what the thread already did of it, when
   * `from` lies in the run of ranges asked for so far.
   */
  populatedFrom(from: number): number {
    if (from < this.start || from > this.requestedTo) return from;
    // Requests are done in order: progress below the run's start belongs to an earlier run.
    const done = Math.min(Atomics.load(this.done, 0), this.requestedTo);
    return Math.max(from, done);
  }

  /** Asks for [first, end) to be populated after whatever was asked before it (never backwards). */
  request(first: number, end: number): void {
    if (first < this.start || end <= Math.max(first, this.requestedTo)) return;
    if (first > this.requestedTo) {
      // Not contiguous with the run asked so far: a new run, after the old one.
      this.start = first;
      this.requestedTo = first;
    }
    const from = this.requestedTo;
    this.requestedTo = end;
    this.worker.postMessage({ first: from, count: end - from });
  }

  close(): Promise<number> {
    return this.worker.terminate();
  }
}
