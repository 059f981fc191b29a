// When to stop iterating and switch over. QEMU's rule: measure the bandwidth over windows of at least
// 100 ms and complete once what is pending fits in bandwidth × downtime-limit. Ours decides on the
// bandwidth over the last second of windows (see BandwidthMeter.smoothed). Ours budgets the whole
// switch-over, because its fixed costs are real (we saw 399 ms of downtime under a 300 ms limit with the
// transfer alone budgeted): the expected downtime is
//
//   fixed costs (vCPU and device stop, the final log sync, EOF to GO: the destination's validation and
//   the READY/GO handshake, measured: see SwitchoverEstimator)
//   + for each handler (RAM, each device): its pending bytes / the rate it sent at in pre-copy, never
//     faster than the link (a device whose data section reads slower than the link is counted at its
//     own speed)
//
// and the switch-over happens once that is within downtime-limit. With avail-switchover-bandwidth set,
// every handler's bytes count at that rate, as in QEMU. Until the link's bandwidth was measured over one
// full window, the expected downtime is unknown (undefined; query-migrate leaves it out, as QEMU does).

export const BUFFER_DELAY_MS = 100;

/** The switch-over decision uses the bandwidth over about the last second (several windows). */
export const SMOOTHING_WINDOWS = 10;

export class BandwidthMeter {
  private windowStart: number;
  private windowBytes = 0;
  /** Last measured bandwidth in bytes per ms (0 until one window completed). */
  bytesPerMs = 0;
  /** The last SMOOTHING_WINDOWS full windows: bytes and ms. */
  private readonly history: { bytes: number; ms: number }[] = [];

  constructor(now = performance.now()) {
    this.windowStart = now;
  }

  /** True once one full window was measured. */
  get measured(): boolean {
    return this.bytesPerMs > 0;
  }

  /** Accounts `bytes` sent; closes the window when at least 100 ms have passed. */
  sent(bytes: number, now = performance.now()): void {
    this.windowBytes += bytes;
    const elapsed = now - this.windowStart;
    if (elapsed >= BUFFER_DELAY_MS) {
      this.bytesPerMs = this.windowBytes / elapsed;
      this.history.push({ bytes: this.windowBytes, ms: elapsed });
      if (this.history.length > SMOOTHING_WINDOWS) this.history.shift();
      this.windowStart = now;
      this.windowBytes = 0;
    }
  }

  /**
   * Bytes per ms over the last full windows (about a second), 0 until one was measured. On a shared or
   * noisy link single 100 ms windows vary several-fold, and deciding on one would switch over exactly
   * when a lucky window made the estimate small.
   */
  smoothed(): number {
    let bytes = 0;
    let ms = 0;
    for (const w of this.history) {
      bytes += w.bytes;
      ms += w.ms;
    }
    return ms > 0 ? bytes / ms : 0;
  }

  /**
   * The transfer begins now: what went before (the stream header and the setup sections, written around
   * each handler's setup, which can take hundreds of ms) keeps its bytes but not its time. Measured from
   * the migration's start instead, the first window was those few hundred bytes over the whole setup, a
   * link of a few bytes per ms, and the first expected downtime for a 1 GiB guest came out at 1e8 ms.
   */
  restart(now = performance.now()): void {
    for (const w of this.history) this.windowBytes += w.bytes;
    this.history.length = 0;
    this.bytesPerMs = 0;
    this.windowStart = now;
  }

  /** Bandwidth of whatever has been sent in the current (unfinished) window, or the last full one. */
  current(now = performance.now()): number {
    const elapsed = now - this.windowStart;
    if (this.bytesPerMs > 0 || elapsed <= 0) return this.bytesPerMs;
    return this.windowBytes / elapsed;
  }
}

/** What one handler still has to send, and how fast it sent in pre-copy. */
export interface PendingWork {
  /** Display name (`ram`, `0000:00:05.0/vfio`). */
  idstr: string;
  bytes: number;
  /** bytes per ms of its last sizeable pre-copy step; 0 = not measured (the link's bandwidth is used) */
  rate: number;
}

/** The switch-over's fixed costs in ms, whatever the amount of data. */
export interface SwitchoverCosts {
  /** Stopping the VM: vCPUs paused, each device's RUNNING cleared. */
  stopMs: number;
  /** The final log sync (device dirty bitmaps merged). */
  syncMs: number;
  /** From EOF sent to GO sent: the destination validates what it loaded, READY, GO. */
  finishMs: number;
  /** Per-device fixed steps of stop-and-copy (state changes, config state), summed over the devices. */
  deviceMs: number;
}

export interface DowntimeInput {
  pending: readonly PendingWork[];
  /** bytes per ms measured on the link (0 = not yet measured) */
  bandwidth: number;
  /** bytes per second the user says the link has for the switch-over (0 = use the measurements) */
  availSwitchoverBandwidth: number;
  costs: SwitchoverCosts;
}

export function fixedCostMs(c: SwitchoverCosts): number {
  return c.stopMs + c.syncMs + c.deviceMs + c.finishMs;
}

/**
 * Expected downtime in ms (see the top of this file), or undefined while the link's bandwidth is unknown
 * and something is still pending.
 */
export function expectedDowntimeMs(i: DowntimeInput): number | undefined {
  let t = fixedCostMs(i.costs);
  const avail = i.availSwitchoverBandwidth > 0 ? i.availSwitchoverBandwidth / 1000 : 0;
  for (const p of i.pending) {
    if (p.bytes <= 0) continue;
    let rate = avail;
    if (!(rate > 0)) {
      if (!(i.bandwidth > 0)) return undefined;
      rate = p.rate > 0 ? Math.min(p.rate, i.bandwidth) : i.bandwidth;
    }
    t += p.bytes / rate;
  }
  return t;
}

/** Bytes that fit in the limit at the link's rate once the fixed costs are paid (the progress display). */
export function switchoverThreshold(i: Omit<DowntimeInput, 'pending'> & { downtimeLimitMs: number }): number {
  const bw = i.availSwitchoverBandwidth > 0 ? i.availSwitchoverBandwidth / 1000 : i.bandwidth;
  return Math.max(0, bw * (i.downtimeLimitMs - fixedCostMs(i.costs)));
}

/**
 * True when the switch-over is expected to fit in the downtime limit, or nothing is pending at all
 * (iterating cannot make the fixed costs smaller).
 */
export function canSwitchOver(i: DowntimeInput & { downtimeLimitMs: number }): boolean {
  if (i.pending.every((p) => p.bytes <= 0)) return true;
  const t = expectedDowntimeMs(i);
  return t !== undefined && t <= i.downtimeLimitMs;
}

/**
 * Starting allowances before a switch-over was measured (ms), replaced by measurements: what the demo's
 * first switch-over took here (1 GiB guest, a large-memory device): stop ~16, EOF to GO ~50 (the
 * destination applies what is still in flight, validates the device, answers READY).
 */
export const INITIAL_STOP_MS = 20;
export const INITIAL_FINISH_MS = 50;

/**
 * Keeps the fixed costs of a switch-over as measured: the log sync at every pre-copy iteration, and
 * stop, per-device steps and finish at each switch-over this source made (they carry over to the next
 * migration of the same VM, where they are the best guess). Before the first switch-over, stop, device
 * steps and finish are the starting allowances plus the round trip to the devices (a pending-bytes query
 * each, averaged: one slow query on a busy host must not stall convergence): stopping changes each
 * device's state, its stop-and-copy changes it twice more, the destination does the same.
 */
export class SwitchoverEstimator {
  private syncMs = 0;
  private deviceRoundTripMs = -1;
  private measured: Omit<SwitchoverCosts, 'syncMs'> | null = null;

  /** A pre-copy log sync took `ms`. */
  noteSync(ms: number): void {
    this.syncMs = ms;
  }

  /** One pending-bytes query of every device took `ms` in all (one round trip each). */
  noteDeviceQuery(ms: number): void {
    this.deviceRoundTripMs = this.deviceRoundTripMs < 0 ? ms : 0.75 * this.deviceRoundTripMs + 0.25 * ms;
  }

  /** A switch-over happened, with these measured costs. */
  noteSwitchover(c: Omit<SwitchoverCosts, 'syncMs'>): void {
    this.measured = { ...c };
  }

  costs(): SwitchoverCosts {
    if (this.measured) return { ...this.measured, syncMs: this.syncMs };
    const rt = Math.max(0, this.deviceRoundTripMs);
    return {
      stopMs: INITIAL_STOP_MS + rt,
      syncMs: this.syncMs,
      deviceMs: 2 * rt,
      finishMs: INITIAL_FINISH_MS + rt,
    };
  }
}
