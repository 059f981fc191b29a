// The demo's migration progress: on a terminal a bar redrawn in place (RAM and device bytes, rate, pass,
// expected downtime), fitted to the terminal's width; otherwise plain lines at most every `everyMs`, for
// logs and pipes. Plays the part of QEMU's `info migrate` read in a loop, drawn.

import { bytes } from './format.ts';

/** What one query-migrate answer says, in the terms the bar shows. */
export interface MigrationSnapshot {
  status: string;
  pass: number;
  ramTotal: number;
  ramRemaining: number;
  ramSent: number;
  deviceSent: number;
  /** null: not counted yet (before the first pass). */
  devicePending: number | null;
  /** 0 until the first full window was measured. */
  mbps: number;
  expectedDowntimeMs: number | undefined;
}

/** The part of a stream the renderer needs: a fake one in tests, process.stderr in the demo. */
export interface ProgressStream {
  isTTY?: boolean;
  columns?: number;
  write(text: string): unknown;
}

const TERMINAL = new Set(['completed', 'failed', 'cancelled']);

/** A query-migrate answer (QEMU's MigrationInfo, with this VMM's vfio.x-pending) as a snapshot. */
export function snapshotOf(info: Record<string, unknown>): MigrationSnapshot | undefined {
  const ram = info.ram as Record<string, number> | undefined;
  if (!ram) return undefined;
  const vfio = info.vfio as Record<string, number> | undefined;
  return {
    status: String(info.status),
    pass: ram['dirty-sync-count'] ?? 0,
    ramTotal: ram.total ?? 0,
    ramRemaining: ram.remaining ?? 0,
    ramSent: ram.transferred ?? 0,
    deviceSent: vfio?.transferred ?? 0,
    devicePending: vfio?.['x-pending'] ?? null,
    mbps: ram.mbps ?? 0,
    // Before the link was measured, query-migrate's expected-downtime is the limit (as QEMU's), not an
    // estimate: the bar says unknown instead.
    expectedDowntimeMs: (ram.mbps ?? 0) > 0 ? (info['expected-downtime'] as number | undefined) : undefined,
  };
}

/** How much of the guest RAM is across: nothing during setup, all of it once completed. */
export function fractionDone(s: MigrationSnapshot): number {
  if (s.status === 'completed') return 1;
  if (s.status === 'setup' || s.ramTotal <= 0) return 0;
  return Math.max(0, Math.min(1, 1 - s.ramRemaining / s.ramTotal));
}

/** The words after the bar (and the whole line when there is no terminal). */
export function progressText(s: MigrationSnapshot): string {
  const device =
    s.devicePending === null
      ? `device ${bytes(s.deviceSent)} sent`
      : `device ${bytes(s.deviceSent)} sent, ${bytes(s.devicePending)} pending`;
  // Rate and expected downtime only once measured: never a guess.
  const rate = s.mbps > 0 ? `${s.mbps.toFixed(s.mbps < 10 ? 1 : 0)} Mbit/s` : 'rate not measured yet';
  const downtime = TERMINAL.has(s.status)
    ? s.status
    : s.expectedDowntimeMs !== undefined
      ? `expected downtime ${s.expectedDowntimeMs} ms`
      : 'expected downtime unknown';
  return `${s.status} pass ${s.pass}: RAM ${bytes(s.ramSent)} sent, ${bytes(s.ramRemaining)} left, ${device}, ${rate}, ${downtime}`;
}

/** The bar's words, shortest first-things-first: on a narrow terminal the end is what gets cut. */
export function barText(s: MigrationSnapshot): string {
  const rate = s.mbps > 0 ? `${s.mbps.toFixed(s.mbps < 10 ? 1 : 0)} Mbit/s` : 'rate ?';
  const downtime = TERMINAL.has(s.status)
    ? s.status
    : s.expectedDowntimeMs !== undefined
      ? `downtime ~${s.expectedDowntimeMs} ms`
      : 'downtime ?';
  const pending = s.devicePending === null ? '' : `, ${bytes(s.devicePending)} pending`;
  return (
    `pass ${s.pass} | ${rate} | ${downtime} | RAM ${bytes(s.ramRemaining)} left, ${bytes(s.ramSent)} sent` +
    ` | device ${bytes(s.deviceSent)} sent${pending}`
  );
}

/** One terminal line of at most `columns - 1` characters: percentage, bar, then as much text as fits. */
export function barLine(s: MigrationSnapshot, columns: number): string {
  const f = fractionDone(s);
  const pct = `${Math.floor(f * 100)}%`.padStart(4);
  const text = barText(s);
  const room = Math.max(10, columns - 1);
  // The bar takes what the text leaves, between 10 and 30 cells; a narrow terminal cuts the text instead.
  const width = Math.max(10, Math.min(30, room - pct.length - 3 - text.length - 1));
  const full = Math.round(f * width);
  const bar = `${'█'.repeat(full)}${'░'.repeat(width - full)}`;
  const line = `${pct} ${bar} ${text}`;
  return line.length <= room ? line : `${line.slice(0, room - 1)}…`;
}

export class MigrationProgress {
  private last = Number.NEGATIVE_INFINITY;
  private drawn = false;
  private readonly now: () => number;

  constructor(
    private readonly out: ProgressStream,
    private readonly options: { everyMs?: number; now?: () => number } = {},
  ) {
    this.now = options.now ?? (() => performance.now());
  }

  update(s: MigrationSnapshot): void {
    if (this.out.isTTY) {
      // \r back to the line's start, \x1b[K clears what a longer previous line left.
      this.out.write(`\r${barLine(s, this.out.columns ?? 80)}\x1b[K`);
      this.drawn = true;
      return;
    }
    const t = this.now();
    if (t - this.last >= (this.options.everyMs ?? 1000) || TERMINAL.has(s.status)) {
      this.out.write(`${progressText(s)}\n`);
      this.last = t;
    }
  }

  /** Ends the bar's line so that what follows starts on its own. */
  done(): void {
    if (this.drawn) this.out.write('\n');
    this.drawn = false;
  }
}
