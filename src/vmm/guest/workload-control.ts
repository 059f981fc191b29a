// The control block shared between the workload (main thread) and its vCPU workers: an Int32Array over a
// SharedArrayBuffer, plus a Float64Array of per-vCPU counters.
//
// The pause handshake: the main thread bumps EPOCH and stores PAUSE in COMMAND (both seq-cst), then
// notifies. A vCPU that sees PAUSE stops between two page writes, stores the epoch it saw into its ACK
// slot (seq-cst, after every one of its writes and marks), bumps SIGNAL and notifies. When the main
// thread has loaded ACK[i] === epoch for every vCPU, each vCPU's writes and dirty marks happen-before
// that load: the VM is stopped and its log complete. Epochs (not a 0/1 flag) make a stale
// acknowledgement from an earlier pause impossible to mistake for this one's.

export const Control = {
  /** slot: the command (RUN, PAUSE or STOP) */
  COMMAND: 0,
  /** slot: bumped by the main thread after each command it stores (and notified), so a vCPU waiting on
   * it wakes for any new command without a lost wake-up */
  EPOCH: 1,
  /** slot: bumped (and notified) by a vCPU after it starts or acknowledges a pause, to wake pause() */
  SIGNAL: 2,
  /** slots ACK..ACK+n: the epoch each vCPU last acknowledged a pause at */
  ACK: 3,
  RUN: 0,
  PAUSE: 1,
  STOP: 2,
} as const;

/** The Float64 numbers block: the rate, then per-vCPU counters at vcpuStats(i) + field. */
export const Stats = {
  /** slot: total page writes per second over all vCPUs (setRate) */
  RATE: 0,
  /** per vCPU: pages written */
  WRITES: 0,
  /** per vCPU: 1 once its loop runs (it mapped memory and the log) */
  STARTED: 1,
  STRIDE: 2,
} as const;

/** The first Float64 slot of vCPU i's counters. */
export function vcpuStats(i: number): number {
  return 1 + Stats.STRIDE * i;
}

/** Float64 slots of the numbers block for n vCPUs. */
export function statsSlots(vcpus: number): number {
  return 1 + Stats.STRIDE * vcpus;
}

export type WritePattern = 'random' | 'hot' | 'sequential';

export const WRITE_PATTERNS: readonly WritePattern[] = ['random', 'hot', 'sequential'];

export interface VcpuConfig {
  index: number;
  vcpus: number;
  fd: number;
  size: number;
  bitmap: SharedArrayBuffer;
  control: SharedArrayBuffer;
  stats: SharedArrayBuffer;
  pattern: WritePattern;
  hotFraction: number;
  hotShare: number;
  seed: number;
  /** Guest memory mapping piece size (tests use small ones). */
  pieceSize?: number;
  /** Pages no vCPU writes: sorted, merged [first page, count] runs (reservedRuns). */
  reserved: [number, number][];
}

/** Bytes of guest RAM (a guest driver's DMA buffer, say) that the synthetic vCPUs leave alone. */
export interface GuestRange {
  offset: number;
  length: number;
}

/**
 * The pages `ranges` touch, as sorted and merged [first page, count] runs. Refuses a range that is empty
 * or reaches past `pages`, and ranges that leave no page to write.
 */
export function reservedRuns(ranges: readonly GuestRange[], pages: number, pageSize: number): [number, number][] {
  const spans: [number, number][] = [];
  for (const { offset, length } of ranges) {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 1)
      throw new RangeError(`reserved range ${offset}+${length}: offset must be ≥ 0 and length ≥ 1`);
    const first = Math.floor(offset / pageSize);
    const end = Math.ceil((offset + length) / pageSize);
    if (end > pages) throw new RangeError(`reserved range ${offset}+${length} ends past guest RAM (${pages} pages)`);
    spans.push([first, end]);
  }
  spans.sort((a, b) => a[0] - b[0]);
  const runs: [number, number][] = [];
  let total = 0;
  for (const [first, end] of spans) {
    const last = runs[runs.length - 1];
    if (last && first <= last[0] + last[1]) {
      const grown = Math.max(last[1], end - last[0]);
      total += grown - last[1];
      last[1] = grown;
    } else {
      runs.push([first, end - first]);
      total += end - first;
    }
  }
  if (total >= pages) throw new RangeError(`reserved ranges cover all ${pages} pages of guest RAM`);
  return runs;
}

/** The `index`-th page (from 0) that no run of `runs` (sorted, merged) covers. */
export function unreservedPage(index: number, runs: readonly (readonly [number, number])[]): number {
  let page = index;
  for (const [first, count] of runs) {
    if (page < first) break;
    page += count;
  }
  return page;
}

/** Int32 slots of the control block for n vCPUs. */
export function controlSlots(vcpus: number): number {
  return Control.ACK + vcpus;
}
