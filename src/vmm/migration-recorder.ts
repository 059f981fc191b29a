// A flight recorder for migrations (`vfio-migrate vmm --record FILE`): JSON lines with every QMP event the
// VMM emits, a sample of query-migrate's numbers at a steady interval (and at every event) while a
// migration is active, and each migration's final result. No QEMU counterpart: QEMU leaves this to a
// management layer polling query-migrate; here it is in the VMM so that no sample depends on a client.
//
// A destination's recording has the same lines; its samples and result also carry `received` (the
// controller's x-incoming: payload bytes per kind, sections, first and last arrival), what a destination
// sees of a migration.
//
// It must never slow or break a migration: it only reads the controller's info(), writes through an
// asynchronous stream, drops samples (counted) while the disk lags, and on a write error reports once
// and stops recording.

import { createWriteStream, type WriteStream } from 'node:fs';
import type { MigrationInfo } from './qmp/commands.ts';

/** What the recorder reads: the migration controller's query-migrate answer and its downtime limit. */
export interface RecorderSource {
  info(): MigrationInfo;
  readonly parameters: { readonly downtimeLimit: number };
}

export const RECORDING_VERSION = 1;
const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
/** Buffered bytes above which samples are dropped (events and results are always written). */
const HIGH_WATER = 1 << 20;

export class MigrationRecorder {
  private readonly t0 = performance.now();
  private readonly timer: NodeJS.Timeout;
  private failed = false;
  private dropped = 0;
  private active = false;

  private constructor(
    private readonly out: WriteStream,
    private readonly path: string,
    private readonly source: RecorderSource,
    private readonly log: (line: string) => void,
    intervalMs: number,
  ) {
    out.on('error', (err) => this.fail(err));
    this.write({ kind: 'start', version: RECORDING_VERSION, at: new Date().toISOString(), intervalMs });
    this.timer = setInterval(() => {
      if (this.active) this.sample();
    }, intervalMs);
    this.timer.unref();
  }

  static open(
    path: string,
    source: RecorderSource,
    options: { intervalMs?: number; log?: (line: string) => void } = {},
  ): MigrationRecorder {
    const interval = options.intervalMs ?? 100;
    if (!(interval >= 10)) throw new RangeError(`a recording interval of ${interval} ms is below 10 ms`);
    return new MigrationRecorder(createWriteStream(path), path, source, options.log ?? (() => {}), interval);
  }

  /** Every QMP event the VMM emits goes through here (after it went to the QMP clients). */
  event(event: string, data?: Record<string, unknown>): void {
    this.write({ kind: 'event', t: this.now(), event, ...(data !== undefined ? { data } : {}) });
    if (event !== 'MIGRATION' && event !== 'MIGRATION_PASS') return;
    const status = event === 'MIGRATION' ? String(data?.status) : undefined;
    if (status === 'setup') this.active = true;
    if (status !== undefined && TERMINAL.has(status)) {
      this.active = false;
      // The event is sent from inside the status change: the result is read once that has finished.
      setImmediate(() => this.result());
    } else if (this.active) this.sample();
  }

  /** Stops sampling and flushes what was written. */
  async close(): Promise<void> {
    clearInterval(this.timer);
    if (this.failed || this.out.destroyed) return;
    await new Promise<void>((resolve) => this.out.end(resolve));
  }

  private now(): number {
    return Math.round((performance.now() - this.t0) * 10) / 10;
  }

  private sample(): void {
    if (this.out.writableLength > HIGH_WATER) {
      this.dropped++;
      return;
    }
    const i = this.source.info();
    if (!i.status) return;
    this.write({
      kind: 'sample',
      t: this.now(),
      status: i.status,
      pass: i.ram?.['dirty-sync-count'] ?? 0,
      ram: {
        transferred: i.ram?.transferred ?? 0,
        remaining: i.ram?.remaining ?? 0,
        total: i.ram?.total ?? 0,
        dirtyRate: i.ram?.['dirty-pages-rate'] ?? 0,
        mbps: i.ram?.mbps ?? 0,
      },
      device: { transferred: i.vfio?.transferred ?? 0, pending: i.vfio?.['x-pending'] ?? null },
      expectedDowntime: i['expected-downtime'] ?? null,
      ...received(i),
    });
  }

  private result(): void {
    const i = this.source.info();
    this.write({
      kind: 'result',
      t: this.now(),
      status: i.status ?? 'none',
      totalTime: i['total-time'] ?? null,
      setupTime: i['setup-time'] ?? null,
      downtime: i.downtime ?? null,
      downtimeLimit: this.source.parameters.downtimeLimit,
      switchover: i['x-switchover'] ?? null,
      passes: i.ram?.['dirty-sync-count'] ?? 0,
      ram: {
        transferred: i.ram?.transferred ?? 0,
        total: i.ram?.total ?? 0,
        normal: i.ram?.normal ?? 0,
        duplicate: i.ram?.duplicate ?? 0,
        precopyBytes: i.ram?.['precopy-bytes'] ?? 0,
        downtimeBytes: i.ram?.['downtime-bytes'] ?? 0,
      },
      device: { transferred: i.vfio?.transferred ?? 0 },
      droppedSamples: this.dropped,
      ...received(i),
      ...(i['error-desc'] ? { error: i['error-desc'] } : {}),
    });
  }

  private write(line: Record<string, unknown>): void {
    // After close() (the VMM quitting), a result still queued has nowhere to go.
    if (this.failed || this.out.writableEnded) return;
    try {
      this.out.write(`${JSON.stringify(line)}\n`);
    } catch (err) {
      this.fail(err as Error);
    }
  }

  private fail(err: Error): void {
    if (this.failed) return;
    this.failed = true;
    clearInterval(this.timer);
    this.log(`recording to ${this.path} stopped: ${err.message}`);
    this.out.destroy();
  }
}

/** A destination's view of the migration (query-migrate's x-incoming), in the recording's terms. */
function received(i: MigrationInfo): { received?: Record<string, number | null> } {
  const x = i['x-incoming'];
  if (!x) return {};
  return {
    received: {
      ram: x['ram-bytes'],
      device: x['device-bytes'],
      sections: x.sections,
      firstSection: x['first-section'] ?? null,
      lastSection: x['last-section'] ?? null,
    },
  };
}
