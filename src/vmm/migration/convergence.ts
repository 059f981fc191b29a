// When to stop iterating and switch over, as QEMU decides it: measure the bandwidth over windows of at
// least 100 ms; the switch-over threshold is bandwidth × downtime-limit (or the user's switch-over
// bandwidth × downtime-limit when set); complete once what is pending fits under it.

export const BUFFER_DELAY_MS = 100;

export class BandwidthMeter {
  private windowStart: number;
  private windowBytes = 0;
  /** Last measured bandwidth in bytes per ms (0 until one window completed). */
  bytesPerMs = 0;

  constructor(now = performance.now()) {
    this.windowStart = now;
  }

  /** Accounts `bytes` sent; closes the window when at least 100 ms have passed. */
  sent(bytes: number, now = performance.now()): void {
    this.windowBytes += bytes;
    const elapsed = now - this.windowStart;
    if (elapsed >= BUFFER_DELAY_MS) {
      this.bytesPerMs = this.windowBytes / elapsed;
      this.windowStart = now;
      this.windowBytes = 0;
    }
  }

  /** Bandwidth of whatever has been sent in the current (unfinished) window, or the last full one. */
  current(now = performance.now()): number {
    const elapsed = now - this.windowStart;
    if (this.bytesPerMs > 0 || elapsed <= 0) return this.bytesPerMs;
    return this.windowBytes / elapsed;
  }
}

export interface SwitchoverInput {
  pendingBytes: number;
  /** bytes per ms */
  bandwidth: number;
  downtimeLimitMs: number;
  /** bytes per second the user says the link has for the switch-over (0 = use the measurement) */
  availSwitchoverBandwidth: number;
}

export function switchoverThreshold(i: Omit<SwitchoverInput, 'pendingBytes'>): number {
  const bw = i.availSwitchoverBandwidth > 0 ? i.availSwitchoverBandwidth / 1000 : i.bandwidth;
  return bw * i.downtimeLimitMs;
}

/** True when what is left can be sent within the downtime limit. */
export function canSwitchOver(i: SwitchoverInput): boolean {
  return i.pendingBytes === 0 || i.pendingBytes <= switchoverThreshold(i);
}

/** Expected downtime in ms for what is pending now at the measured rate (QEMU's expected-downtime). */
export function expectedDowntimeMs(pendingBytes: number, bandwidth: number): number {
  return bandwidth > 0 ? pendingBytes / bandwidth : 0;
}
