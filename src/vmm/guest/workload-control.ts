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
}

/** Int32 slots of the control block for n vCPUs. */
export function controlSlots(vcpus: number): number {
  return Control.ACK + vcpus;
}
