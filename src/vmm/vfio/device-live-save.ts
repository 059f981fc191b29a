// Live save and resume of one device through its seed migration region, in the order the QEMU series
// drives it: SAVING set at setup (pre-copy while the device runs), iterations while pending stays above
// the switch-over threshold, then RUNNING cleared (stop-and-copy), drain to pending 0, SAVING cleared.
// On any failure before the end the migration-state-notifier rule applies: the device goes back to
// RUNNING, so the source carries on as if nothing happened.

import { DeviceState } from '../../abi/migration.ts';
import type { SeedRegionClient } from './seed-region-client.ts';

const { RUNNING, SAVING, RESUMING, MASK } = DeviceState;

export interface LiveSaveOptions {
  /**
   * Switch to stop-and-copy once pending_bytes is at most this: a number, or a function asked at each
   * check (e.g. measured bandwidth x downtime limit).
   */
  switchoverBytes: number | ((stats: LiveSaveStats) => number);
  /** Give up converging after this many pre-copy iterations and switch over anyway. */
  maxIterations: number;
  /** Bytes per pre-copy iteration at most (default: whatever is pending at its start). */
  iterationBudget?: number;
  /** Every chunk, in order, to wherever the state goes. */
  onChunk: (chunk: Uint8Array) => Promise<void> | void;
  /** Runs between iterations while the device keeps running (the VM's time passes here). */
  between?: (iteration: number) => Promise<void>;
  /** A log sync (pull the device's dirty pages): after each iteration and once after the device stopped. */
  logSync?: () => Promise<void>;
  onProgress?: (p: LiveSaveProgress) => void;
  /** Called right after the device stopped and right before SAVING is cleared. */
  onStopped?: () => Promise<void> | void;
}

export interface LiveSaveProgress {
  phase: 'pre-copy' | 'stop-and-copy' | 'done';
  iteration: number;
  pending: bigint;
  sent: number;
}

export interface LiveSaveStats {
  iterations: number;
  precopyBytes: number;
  stopCopyBytes: number;
  chunks: number;
  /** Milliseconds spent moving pre-copy data (not counting time between iterations). */
  precopyMs: number;
  /** Milliseconds from clearing RUNNING to the end of the drain: the device's share of downtime. */
  stopCopyMs: number;
  converged: boolean;
}

export async function saveDeviceLive(client: SeedRegionClient, o: LiveSaveOptions): Promise<LiveSaveStats> {
  const stats: LiveSaveStats = {
    iterations: 0,
    precopyBytes: 0,
    stopCopyBytes: 0,
    chunks: 0,
    precopyMs: 0,
    stopCopyMs: 0,
    converged: false,
  };
  let sent = 0;
  const emit = async (chunk: Uint8Array) => {
    stats.chunks++;
    sent += chunk.byteLength;
    await o.onChunk(chunk);
  };
  try {
    await client.setDeviceState(MASK, SAVING);
    for (;;) {
      const pending = await client.pendingBytes();
      o.onProgress?.({ phase: 'pre-copy', iteration: stats.iterations, pending, sent });
      const threshold = typeof o.switchoverBytes === 'function' ? o.switchoverBytes(stats) : o.switchoverBytes;
      if (pending <= BigInt(Math.floor(threshold))) {
        stats.converged = true;
        break;
      }
      if (stats.iterations >= o.maxIterations) break;
      const t = performance.now();
      const r = await client.iterate(o.iterationBudget ?? Number(pending), emit);
      stats.precopyBytes += r.bytes;
      stats.precopyMs += performance.now() - t;
      stats.iterations++;
      await o.logSync?.();
      await o.between?.(stats.iterations);
    }
    const t0 = performance.now();
    await client.setDeviceState(~RUNNING, 0);
    const before = sent;
    await client.drain(emit);
    stats.stopCopyBytes = sent - before;
    stats.stopCopyMs = performance.now() - t0;
    // The final sync runs while SAVING is still set, so DMA done up to the stop is reported.
    await o.logSync?.();
    o.onProgress?.({ phase: 'stop-and-copy', iteration: stats.iterations, pending: 0n, sent });
    await o.onStopped?.();
    await client.setDeviceState(~SAVING, 0);
    o.onProgress?.({ phase: 'done', iteration: stats.iterations, pending: 0n, sent });
    return stats;
  } catch (err) {
    await recoverRunning(client);
    throw err;
  }
}

/**
 * The migration state notifier's answer to a cancelled or failed migration: clear SAVING and RESUMING
 * and set RUNNING. Best effort: if the device is unreachable the original error is what matters.
 */
export async function recoverRunning(client: SeedRegionClient): Promise<boolean> {
  try {
    await client.setDeviceState(~(SAVING | RESUMING), RUNNING);
    return true;
  } catch {
    return false;
  }
}

/** Destination: RESUMING, then every chunk in order (any split), then RUNNING (or stopped if not started). */
export async function resumeDevice(
  client: SeedRegionClient,
  chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  options: { start?: boolean } = {},
): Promise<{ bytes: number }> {
  await client.setDeviceState(~MASK, RESUMING);
  let bytes = 0;
  for await (const chunk of chunks) {
    await client.loadBuffer(chunk);
    bytes += chunk.byteLength;
  }
  await client.setDeviceState(~MASK, options.start === false ? 0 : RUNNING);
  return { bytes };
}
