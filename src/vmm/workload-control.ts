// The control block shared between the workload and its vCPU workers.

export const Control = {
  /** slot 0: the command */
  COMMAND: 0,
  RUN: 0,
  PAUSE: 1,
  STOP: 2,
  /** slots 1..n: per-vCPU "I am paused" acknowledgements */
  ACK: 1,
} as const;

export type WritePattern = 'random' | 'hot' | 'sequential';

export interface VcpuConfig {
  index: number;
  fd: number;
  size: number;
  bitmap: SharedArrayBuffer;
  control: SharedArrayBuffer;
  stats: SharedArrayBuffer;
  pagesPerSecond: number;
  pattern: WritePattern;
  hotFraction: number;
  seed: number;
}
