// The source side of a live migration: header, setup sections, pre-copy iterations until what is left
// fits the downtime limit, then stop the VM, send the rest, EOF, and (over TCP) the two-phase handshake
// with the destination. Any failure or cancel before the commit point undoes everything the migration
// did to the VM: the engine's caller resumes the VM and the devices' notifiers set them running.

import { Errno } from '../../abi/errno.ts';
import { StreamEncoder } from '../../stream/encoder.ts';
import { ReturnPathType } from '../../stream/return-path.ts';
import {
  BandwidthMeter,
  canSwitchOver,
  expectedDowntimeMs,
  type PendingWork,
  type SwitchoverCosts,
  SwitchoverEstimator,
  switchoverThreshold,
} from './convergence.ts';
import { MigrationCancelled, MigrationError } from './errors.ts';
import type { MigrationHandler, SectionWriter } from './handler.ts';
import type { MultifdIo } from './multifd-channel.ts';
import type { OutgoingStream } from './transport.ts';

export interface MigrationParameters {
  /** ms; QEMU's default 300 */
  downtimeLimit: number;
  /** bytes/s; 0 = unlimited */
  maxBandwidth: number;
  /** bytes/s the user vouches for at switch-over; 0 = use the measured bandwidth */
  availSwitchoverBandwidth: number;
  /** RAM channels when the multifd capability is on (QEMU's default 2) */
  multifdChannels: number;
  /** How multifd channel threads move pages (ours, x-multifd-io): measured per channel by default */
  multifdIo: MultifdIo;
}

export const DEFAULT_PARAMETERS: MigrationParameters = {
  downtimeLimit: 300,
  maxBandwidth: 0,
  availSwitchoverBandwidth: 0,
  multifdChannels: 2,
  multifdIo: 'auto',
};

export interface OutgoingProgress {
  phase: 'setup' | 'active' | 'device' | 'handshake';
  iteration: number;
  /** All handlers' pending bytes (RAM and devices). */
  pendingBytes: number;
  /** Each handler's pending bytes and pre-copy rate, as the expected downtime counts them. */
  pending: PendingWork[];
  bytesSent: number;
  /** bytes per ms over about the last second of full 100 ms windows; 0 until one was measured */
  bandwidth: number;
  thresholdBytes: number;
  /** The fixed costs the expected downtime includes. */
  costs: SwitchoverCosts;
  /** Unknown (undefined) until the bandwidth was measured; see convergence.ts for what it counts. */
  expectedDowntimeMs: number | undefined;
}

/** Where the downtime went, measured at the switch-over (ms). */
export interface SwitchoverPhases {
  /** stopVm: vCPUs paused, devices' RUNNING cleared */
  stopMs: number;
  /** the final log sync */
  syncMs: number;
  /** each handler's stop-and-copy (its END section included) */
  completeMs: number;
  /** non-iterative state (FULL sections) and EOF */
  stateMs: number;
  /** from EOF sent to GO sent: the destination's validation and the handshake */
  finishMs: number;
  /** what the switch-over was expected to take when it was decided */
  expectedMs: number | undefined;
}

export interface OutgoingOptions {
  handlers: readonly MigrationHandler[];
  transport: OutgoingStream;
  parameters: () => MigrationParameters;
  /** Stops the VM for the switch-over (vCPUs paused, devices' RUNNING cleared). */
  stopVm: () => Promise<void>;
  /** A log sync: the device-dirtied pages merged into RAM's dirty log. */
  logSync: () => Promise<void>;
  /** Wait for the destination's READY and send GO (TCP); false for a file. */
  handshake: boolean;
  /**
   * Called at the commit point, after the last cancel check and before GO goes out: from then on the
   * destination may run the VM, so a cancel must be refused and the source must never resume.
   */
  onCommit?: () => void;
  handshakeTimeoutMs?: number;
  signal?: AbortSignal;
  /** Bytes per handler per iterate call: bounds how long between convergence checks and cancels. */
  iterationChunk?: number;
  onProgress?: (p: OutgoingProgress) => void;
  onPass?: (pass: number) => void;
  /** Fixed switch-over costs as measured so far (kept by the caller across migrations); a fresh one if absent. */
  estimator?: SwitchoverEstimator;
  /**
   * The switchover-ack capability (QEMU 8.1): however small the pending data, the VM does not stop before
   * the destination's SWITCHOVER_ACK arrived on the return path (transport.switchoverAcked).
   */
  switchoverAck?: boolean;
  /** Called once, when convergence alone would switch over but the destination has not acked yet. */
  onAwaitingAck?: () => void;
  /** Called once, when the pass loop first sees the destination's ack. */
  onSwitchoverAck?: () => void;
}

export interface OutgoingResult {
  iterations: number;
  bytesSent: number;
  setupMs: number;
  totalMs: number;
  /** From the VM stop to the commit (GO sent over TCP; a file closed): the sum of `phases`. */
  downtimeMs: number;
  phases: SwitchoverPhases;
  converged: boolean;
  /**
   * Set when something failed after the commit point (e.g. GO could not be sent). The source must still
   * not resume: the destination may have received GO and be running the VM.
   */
  afterCommitError?: string;
}

export async function runOutgoing(o: OutgoingOptions): Promise<OutgoingResult> {
  const t0 = performance.now();
  const encoder = new StreamEncoder();
  const meter = new BandwidthMeter();
  const estimator = o.estimator ?? new SwitchoverEstimator();
  const chunk = o.iterationChunk ?? 64 << 20;
  const check = () => {
    if (o.signal?.aborted) throw new MigrationCancelled();
  };
  const send = async (pieces: readonly Uint8Array[]) => {
    check();
    let n = 0;
    for (const p of pieces) n += p.byteLength;
    await o.transport.write(pieces);
    meter.sent(n);
  };
  const ids = new Map(o.handlers.map((h, i) => [h, i]));
  /** Payload bytes each handler handed to the transport, and its rate over its last sizeable iterate step. */
  const handed = o.handlers.map(() => 0);
  const rates = o.handlers.map(() => 0);
  const writerFor = (h: MigrationHandler): SectionWriter => ({
    part: (pieces, payloadCrc) => {
      for (const p of pieces) handed[ids.get(h)!]! += p.byteLength;
      return send(encoder.part(ids.get(h)!, pieces, payloadCrc));
    },
  });
  const bandwidth = () => meter.smoothed();
  const pendingWork = async (): Promise<PendingWork[]> => {
    const q0 = performance.now();
    const out: PendingWork[] = [];
    for (const [i, h] of o.handlers.entries())
      out.push({ idstr: h.idstr, bytes: await h.pendingBytes(), rate: rates[i]! });
    estimator.noteDeviceQuery(performance.now() - q0);
    return out;
  };
  const downtimeInput = (pending: PendingWork[]) => {
    const p = o.parameters();
    return {
      pending,
      bandwidth: bandwidth(),
      availSwitchoverBandwidth: p.availSwitchoverBandwidth,
      costs: estimator.costs(),
      downtimeLimitMs: p.downtimeLimit,
    };
  };
  const progress = (phase: OutgoingProgress['phase'], iteration: number, pending: PendingWork[]) => {
    const input = downtimeInput(pending);
    o.onProgress?.({
      phase,
      iteration,
      pendingBytes: pending.reduce((n, w) => n + w.bytes, 0),
      pending,
      bytesSent: o.transport.bytes,
      bandwidth: input.bandwidth,
      thresholdBytes: switchoverThreshold(input),
      costs: input.costs,
      expectedDowntimeMs: expectedDowntimeMs(input),
    });
  };
  const logSync = async () => {
    const s0 = performance.now();
    await o.logSync();
    return performance.now() - s0;
  };

  await send(encoder.header());
  for (const h of o.handlers) {
    const payload = await h.saveSetup();
    await send(
      encoder.start(
        { sectionId: ids.get(h)!, idstr: h.idstr, instanceId: h.instanceId, versionId: h.versionId },
        payload,
      ),
    );
  }
  const setupMs = performance.now() - t0;
  meter.restart(); // setup time is not transfer time (see BandwidthMeter.restart)

  let iterations = 0;
  let converged = false;
  let expectedMs: number | undefined;
  let ackSeen = false;
  let awaitingAck = false;
  for (;;) {
    check();
    estimator.noteSync(await logSync());
    o.onPass?.(iterations + 1);
    const pending = await pendingWork();
    progress('active', iterations, pending);
    const input = downtimeInput(pending);
    if (o.switchoverAck && !ackSeen && o.transport.switchoverAcked) {
      ackSeen = true;
      o.onSwitchoverAck?.();
    }
    if (iterations > 0 && canSwitchOver(input)) {
      if (!o.switchoverAck || ackSeen) {
        expectedMs = expectedDowntimeMs(input);
        converged = true;
        break;
      }
      // QEMU's migration_can_switchover: pre-copy goes on until the destination approves.
      if (!awaitingAck) {
        awaitingAck = true;
        o.onAwaitingAck?.();
      }
      // Nothing else holds the switch-over: a short pause rather than back-to-back empty passes.
      await new Promise((r) => setTimeout(r, ACK_POLL_MS));
    }
    // One pass: every handler sends what it has (in bounded calls), so the next check sees a fresh sync.
    for (const [i, h] of o.handlers.entries()) {
      for (let done = false; !done; ) {
        check();
        const before = handed[i]!;
        const s0 = performance.now();
        done = await h.saveIterate(writerFor(h), chunk);
        const moved = handed[i]! - before;
        // Sizeable steps only: a few bytes say nothing about how fast this handler's data goes.
        if (moved >= RATE_MIN_BYTES) rates[i] = moved / Math.max(0.001, performance.now() - s0);
      }
    }
    iterations++;
  }

  check();
  progress('device', iterations, await pendingWork());
  // One clock reading per boundary, so the phases add up to the downtime exactly.
  const tStop = performance.now();
  await o.stopVm();
  const tStopped = performance.now();
  // The last sync runs with the devices stopped but still saving, so their final DMA is reported.
  await o.logSync();
  const tSynced = performance.now();
  let deviceFixedMs = 0;
  for (const [i, h] of o.handlers.entries()) {
    const h0 = performance.now();
    const before = handed[i]!;
    const payload = await h.saveComplete(writerFor(h));
    await send(encoder.end(ids.get(h)!, payload));
    if (h.saveState) {
      // A device (it has non-iterative state): the part of its stop-and-copy that is not data transfer
      // (state changes) counts as fixed in the next estimate.
      const rate = Math.min(rates[i]! || Number.POSITIVE_INFINITY, bandwidth() || Number.POSITIVE_INFINITY);
      deviceFixedMs += Math.max(0, performance.now() - h0 - (handed[i]! - before) / rate);
    }
  }
  const tCompleted = performance.now();
  for (const h of o.handlers) {
    if (!h.saveState) continue;
    const st0 = performance.now();
    const payload = await h.saveState();
    await send(
      encoder.full(
        { sectionId: ids.get(h)!, idstr: h.idstr, instanceId: h.instanceId, versionId: h.versionId },
        payload,
      ),
    );
    deviceFixedMs += performance.now() - st0;
  }
  await send(encoder.eof());
  const tEof = performance.now();

  if (o.handshake) {
    progress('handshake', iterations, []);
    const reply = await o.transport.nextMessage(o.handshakeTimeoutMs ?? 30_000);
    if (reply.type === ReturnPathType.ERROR) {
      // The destination's text already ends in its errno name: one "(EIO)" more would only confuse.
      const m = / \((E[A-Z0-9]+)\)$/.exec(reply.text);
      const errno = m && m[1]! in Errno ? Errno[m[1] as keyof typeof Errno] : Errno.EIO;
      throw new MigrationError(
        errno,
        `the destination could not load the VM: ${m ? reply.text.slice(0, m.index) : reply.text}`,
      );
    }
    if (reply.type !== ReturnPathType.READY)
      throw new MigrationError(Errno.EPROTO, `unexpected return-path message ${reply.type}`);
  }
  // Commit point: from here on the source never resumes this VM, whatever happens next. A cancel that
  // came while we waited for READY still wins here: no GO, and the destination never starts. Over TCP
  // the downtime ends when GO is sent (the destination starts on it); for a file, once it is closed.
  check();
  o.onCommit?.();
  let afterCommitError: string | undefined;
  let tCommit = performance.now();
  try {
    if (o.handshake) {
      await o.transport.sendMessage({ type: ReturnPathType.GO, text: '' });
      tCommit = performance.now();
    }
    await o.transport.end();
  } catch (err) {
    afterCommitError = (err as Error).message;
  }
  if (!o.handshake) tCommit = performance.now();
  const phases: SwitchoverPhases = {
    stopMs: tStopped - tStop,
    syncMs: tSynced - tStopped,
    completeMs: tCompleted - tSynced,
    stateMs: tEof - tCompleted,
    finishMs: tCommit - tEof,
    expectedMs,
  };
  estimator.noteSwitchover({ stopMs: phases.stopMs, deviceMs: deviceFixedMs, finishMs: phases.finishMs });
  return {
    iterations,
    bytesSent: o.transport.bytes,
    setupMs,
    totalMs: performance.now() - t0,
    // From the VM stop to the commit: the time no VM runs (the destination starts on GO). The phases
    // partition it.
    downtimeMs: tCommit - tStop,
    phases,
    converged,
    afterCommitError,
  };
}

/** Pause between passes while only the destination's switchover-ack is awaited. */
const ACK_POLL_MS = 20;

/** Iterate steps that moved at least this much measure a handler's rate. */
const RATE_MIN_BYTES = 256 << 10;
