// The source side of a live migration: header, setup sections, pre-copy iterations until what is left
// fits the downtime limit, then stop the VM, send the rest, EOF, and (over TCP) the two-phase handshake
// with the destination. Any failure or cancel before the commit point undoes everything the migration
// did to the VM: the engine's caller resumes the VM and the devices' notifiers set them running.

import { Errno } from '../../abi/errno.ts';
import { VfioError } from '../../errors.ts';
import { StreamEncoder } from '../../stream/encoder.ts';
import { ReturnPathType } from '../../stream/return-path.ts';
import { BandwidthMeter, canSwitchOver, expectedDowntimeMs, switchoverThreshold } from './convergence.ts';
import type { MigrationHandler, SectionWriter } from './handler.ts';
import type { OutgoingStream } from './transport.ts';

export interface MigrationParameters {
  /** ms; QEMU's default 300 */
  downtimeLimit: number;
  /** bytes/s; 0 = unlimited */
  maxBandwidth: number;
  /** bytes/s the user vouches for at switch-over; 0 = use the measured bandwidth */
  availSwitchoverBandwidth: number;
}

export const DEFAULT_PARAMETERS: MigrationParameters = {
  downtimeLimit: 300,
  maxBandwidth: 0,
  availSwitchoverBandwidth: 0,
};

export interface OutgoingProgress {
  phase: 'setup' | 'active' | 'device' | 'handshake';
  iteration: number;
  pendingBytes: number;
  bytesSent: number;
  bandwidth: number;
  thresholdBytes: number;
  expectedDowntimeMs: number;
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
}

export interface OutgoingResult {
  iterations: number;
  bytesSent: number;
  setupMs: number;
  totalMs: number;
  /** From the VM stop to the commit (READY received, GO sent). */
  downtimeMs: number;
  converged: boolean;
  /**
   * Set when something failed after the commit point (e.g. GO could not be sent). The source must still
   * not resume: the destination may have received GO and be running the VM.
   */
  afterCommitError?: string;
}

/** Thrown when the migration was cancelled; the caller reports status cancelled rather than failed. */
export class MigrationCancelled extends VfioError {
  constructor() {
    super(Errno.ECONNRESET, 'migration cancelled');
    this.name = 'MigrationCancelled';
  }
}

export async function runOutgoing(o: OutgoingOptions): Promise<OutgoingResult> {
  const t0 = performance.now();
  const encoder = new StreamEncoder();
  const meter = new BandwidthMeter();
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
  const writerFor = (h: MigrationHandler): SectionWriter => ({
    part: (pieces) => send(encoder.part(ids.get(h)!, pieces as Uint8Array[])),
  });
  const progress = (phase: OutgoingProgress['phase'], iteration: number, pendingBytes: number) => {
    const p = o.parameters();
    const bandwidth = meter.current();
    o.onProgress?.({
      phase,
      iteration,
      pendingBytes,
      bytesSent: o.transport.bytes,
      bandwidth,
      thresholdBytes: switchoverThreshold({
        bandwidth,
        downtimeLimitMs: p.downtimeLimit,
        availSwitchoverBandwidth: p.availSwitchoverBandwidth,
      }),
      expectedDowntimeMs: expectedDowntimeMs(pendingBytes, bandwidth),
    });
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

  let iterations = 0;
  let converged = false;
  for (;;) {
    check();
    await o.logSync();
    o.onPass?.(iterations + 1);
    let pending = 0;
    for (const h of o.handlers) pending += await h.pendingBytes();
    progress('active', iterations, pending);
    const p = o.parameters();
    if (
      iterations > 0 &&
      canSwitchOver({
        pendingBytes: pending,
        bandwidth: meter.current(),
        downtimeLimitMs: p.downtimeLimit,
        availSwitchoverBandwidth: p.availSwitchoverBandwidth,
      })
    ) {
      converged = true;
      break;
    }
    // One pass: every handler sends what it has (in bounded calls), so the next check sees a fresh sync.
    for (const h of o.handlers) {
      for (let done = false; !done; ) {
        check();
        done = await h.saveIterate(writerFor(h), chunk);
      }
    }
    iterations++;
  }

  check();
  progress('device', iterations, 0);
  const stopAt = performance.now();
  await o.stopVm();
  // The last sync runs with the devices stopped but still saving, so their final DMA is reported.
  await o.logSync();
  for (const h of o.handlers) {
    const payload = await h.saveComplete(writerFor(h));
    await send(encoder.end(ids.get(h)!, payload));
  }
  for (const h of o.handlers) {
    if (!h.saveState) continue;
    const payload = await h.saveState();
    await send(
      encoder.full(
        { sectionId: ids.get(h)!, idstr: h.idstr, instanceId: h.instanceId, versionId: h.versionId },
        payload,
      ),
    );
  }
  await send(encoder.eof());

  if (o.handshake) {
    progress('handshake', iterations, 0);
    const reply = await o.transport.nextMessage(o.handshakeTimeoutMs ?? 30_000);
    if (reply.type === ReturnPathType.ERROR) {
      // The destination's text already ends in its errno name: one "(EIO)" more would only confuse.
      const m = / \((E[A-Z0-9]+)\)$/.exec(reply.text);
      const errno = m && m[1]! in Errno ? Errno[m[1] as keyof typeof Errno] : Errno.EIO;
      throw new VfioError(
        errno,
        `the destination could not load the VM: ${m ? reply.text.slice(0, m.index) : reply.text}`,
      );
    }
    if (reply.type !== ReturnPathType.READY)
      throw new VfioError(Errno.EPROTO, `unexpected return-path message ${reply.type}`);
  }
  // Commit point: from here on the source never resumes this VM, whatever happens next. A cancel that
  // came while we waited for READY still wins here: no GO, and the destination never starts.
  check();
  o.onCommit?.();
  let afterCommitError: string | undefined;
  try {
    if (o.handshake) await o.transport.sendMessage({ type: ReturnPathType.GO, text: '' });
    await o.transport.end();
  } catch (err) {
    afterCommitError = (err as Error).message;
  }
  const downtimeMs = performance.now() - stopAt;
  return {
    iterations,
    bytesSent: o.transport.bytes,
    setupMs,
    totalMs: performance.now() - t0,
    downtimeMs,
    converged,
    afterCommitError,
  };
}
