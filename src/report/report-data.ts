// A migration recording (`vfio-migrate vmm --record`, JSON lines) turned into the tables the report's
// plots draw. Pure: text in, data out, no I/O. No QEMU counterpart (QEMU's migration statistics end at
// query-migrate; this is what a management layer would chart from it).

import { Errno } from '../abi/errno.ts';
import { VfioError } from '../errors.ts';

export interface SampleLine {
  kind: 'sample';
  t: number;
  status: string;
  pass: number;
  ram: { transferred: number; remaining: number; total: number; dirtyRate: number; mbps: number };
  device: { transferred: number; pending: number | null };
  expectedDowntime: number | null;
}

export interface ResultLine {
  kind: 'result';
  t: number;
  status: string;
  totalTime: number | null;
  setupTime: number | null;
  downtime: number | null;
  downtimeLimit: number;
  switchover: Record<string, number> | null;
  passes: number;
  ram: {
    transferred: number;
    total: number;
    normal: number;
    duplicate: number;
    precopyBytes: number;
    downtimeBytes: number;
  };
  device: { transferred: number };
  droppedSamples: number;
  error?: string;
}

export interface EventLine {
  kind: 'event';
  t: number;
  event: string;
  data?: Record<string, unknown>;
}

export interface Recording {
  startedAt: string;
  events: EventLine[];
  samples: SampleLine[];
  results: ResultLine[];
}

/** The verification a demo made after the migration, shown in the report as it was. */
export interface Verification {
  ok: boolean;
  checks: { name: string; ok: boolean; detail: string }[];
}

/** Parses a recording; a line that is not one of the recording's kinds is an EINVAL naming its number. */
export function parseRecording(text: string): Recording {
  const rec: Recording = { startedAt: '', events: [], samples: [], results: [] };
  const lines = text.split('\n');
  let sawStart = false;
  for (const [i, raw] of lines.entries()) {
    if (raw.trim() === '') continue;
    const where = `recording line ${i + 1}`;
    let line: Record<string, unknown>;
    try {
      line = JSON.parse(raw) as Record<string, unknown>;
    } catch {
      // A VMM killed mid-write leaves a cut last line: what came before is still a recording.
      if (i === lines.length - 1 && sawStart) continue;
      throw new VfioError(Errno.EINVAL, `${where} is not JSON: ${raw.slice(0, 60)}`);
    }
    if (typeof line !== 'object' || line === null) throw new VfioError(Errno.EINVAL, `${where} is not an object`);
    if (!sawStart) {
      if (line.kind !== 'start')
        throw new VfioError(Errno.EINVAL, `${where}: not a migration recording (no start line)`);
      if (line.version !== 1) throw new VfioError(Errno.EINVAL, `${where}: recording version ${line.version} is not 1`);
      rec.startedAt = String(line.at ?? '');
      sawStart = true;
      continue;
    }
    if (typeof line.t !== 'number') throw new VfioError(Errno.EINVAL, `${where}: no time "t"`);
    switch (line.kind) {
      case 'event':
        if (typeof line.event !== 'string') throw new VfioError(Errno.EINVAL, `${where}: an event without a name`);
        rec.events.push(line as unknown as EventLine);
        break;
      case 'sample':
        if (typeof line.ram !== 'object' || typeof line.device !== 'object' || typeof line.pass !== 'number')
          throw new VfioError(Errno.EINVAL, `${where}: a sample without ram, device or pass`);
        rec.samples.push(line as unknown as SampleLine);
        break;
      case 'result':
        if (typeof line.status !== 'string' || typeof line.ram !== 'object')
          throw new VfioError(Errno.EINVAL, `${where}: a result without status or ram`);
        rec.results.push(line as unknown as ResultLine);
        break;
      default:
        throw new VfioError(Errno.EINVAL, `${where}: unknown kind "${String(line.kind)}"`);
    }
  }
  if (!sawStart) throw new VfioError(Errno.EINVAL, 'the recording is empty');
  return rec;
}

export interface ReportData {
  startedAt: string;
  /** The migration the report shows: the last one recorded (its samples and result). */
  status: string;
  /** Megabytes (10^6) per second between consecutive samples, per stream part, at the interval's end. */
  throughput: { t: number; part: 'RAM' | 'device'; mbPerS: number }[];
  /** Per dirty-sync pass: RAM still dirty when the pass began, the guest's dirty rate, RAM sent in it. */
  passes: { pass: number; remainingBytes: number; dirtyPagesPerS: number | null; sentBytes: number }[];
  /** The device over time: bytes sent so far, and pending as the last pass counted it. */
  device: { t: number; series: 'sent' | 'pending'; bytes: number }[];
  /** Where the downtime went (ms), in switch-over order; empty unless the migration completed. */
  downtime: { phase: string; ms: number }[];
  downtimeMs: number | null;
  downtimeLimitMs: number | null;
  expectedDowntimeMs: number | null;
  summary: {
    totalTimeMs: number | null;
    passes: number;
    ramBytes: number;
    ramSentBytes: number;
    deviceSentBytes: number;
    samples: number;
    events: number;
    error?: string;
  };
  verification?: Verification;
}

/** The phases of x-switchover in the order they happen, with what the report calls them. */
const PHASES: [key: string, label: string][] = [
  ['stop', 'stop vCPUs and devices'],
  ['sync', 'final dirty sync'],
  ['complete', 'stop-and-copy'],
  ['state', 'device config + EOF'],
  ['finish', 'destination check + GO'],
];

/** The data of the last migration in a recording (samples after its `setup` event, and its result). */
export function reportData(rec: Recording, verification?: Verification, windowMs = 250): ReportData {
  const setups = rec.events.filter((e) => e.event === 'MIGRATION' && e.data?.status === 'setup');
  const from = setups.at(-1)?.t ?? Number.NEGATIVE_INFINITY;
  const samples = rec.samples.filter((s) => s.t >= from).sort((a, b) => a.t - b.t);
  const result = rec.results.filter((r) => r.t >= from).at(-1);
  const t0 = Number.isFinite(from) ? from : (samples[0]?.t ?? 0);
  const secs = (t: number) => Math.round(t - t0) / 1000;

  // Over windows of at least `windowMs`: samples taken at events come close after timed ones, and bytes
  // over a few milliseconds say more about when a chunk left than about the rate.
  const throughput: ReportData['throughput'] = [];
  let a = samples[0];
  for (const b of samples.slice(1)) {
    const dt = (b.t - a!.t) / 1000;
    if (dt * 1000 < windowMs && b !== samples.at(-1)) continue;
    if (dt <= 0) continue;
    const at = secs(b.t);
    throughput.push({ t: at, part: 'RAM', mbPerS: (b.ram.transferred - a!.ram.transferred) / dt / 1e6 });
    throughput.push({ t: at, part: 'device', mbPerS: (b.device.transferred - a!.device.transferred) / dt / 1e6 });
    a = b;
  }

  const passes: ReportData['passes'] = [];
  /** RAM transferred when each pass was first seen. */
  const passStart = new Map<number, number>();
  for (const s of samples) {
    if (s.pass === 0) continue;
    const last = passes.at(-1);
    if (last?.pass === s.pass) continue;
    // A pass sent what went out from its first sample to the next pass's first one.
    if (last) last.sentBytes = s.ram.transferred - passStart.get(last.pass)!;
    passStart.set(s.pass, s.ram.transferred);
    // The rate measured at a sync in the switch-over covers the moments the VM was stopping: not the guest's.
    const rate = s.status === 'active' ? s.ram.dirtyRate : null;
    passes.push({ pass: s.pass, remainingBytes: s.ram.remaining, dirtyPagesPerS: rate, sentBytes: 0 });
  }
  // The last pass ends with the result's totals (its stop-and-copy included).
  const lastPass = passes.at(-1);
  if (lastPass && result && result.passes === lastPass.pass)
    lastPass.sentBytes = result.ram.transferred - (passStart.get(lastPass.pass) ?? 0);

  const device: ReportData['device'] = [];
  for (const s of samples) {
    device.push({ t: secs(s.t), series: 'sent', bytes: s.device.transferred });
    if (s.device.pending !== null) device.push({ t: secs(s.t), series: 'pending', bytes: s.device.pending });
  }
  if (result) device.push({ t: secs(result.t), series: 'sent', bytes: result.device.transferred });

  const sw = result?.switchover ?? null;
  const downtime = sw
    ? PHASES.filter(([k]) => typeof sw[k] === 'number').map(([k, label]) => ({ phase: label, ms: sw[k]! }))
    : [];
  const expected = sw?.expected ?? [...samples].reverse().find((s) => s.expectedDowntime !== null)?.expectedDowntime;

  return {
    startedAt: rec.startedAt,
    status: result?.status ?? samples.at(-1)?.status ?? 'none',
    throughput,
    passes,
    device,
    downtime,
    downtimeMs: result?.downtime ?? null,
    downtimeLimitMs: result?.downtimeLimit ?? null,
    expectedDowntimeMs: expected ?? null,
    summary: {
      totalTimeMs: result?.totalTime ?? null,
      passes: result?.passes ?? samples.at(-1)?.pass ?? 0,
      ramBytes: result?.ram.total ?? samples.at(-1)?.ram.total ?? 0,
      ramSentBytes: result?.ram.transferred ?? samples.at(-1)?.ram.transferred ?? 0,
      deviceSentBytes: result?.device.transferred ?? samples.at(-1)?.device.transferred ?? 0,
      samples: samples.length,
      events: rec.events.length,
      ...(result?.error ? { error: result.error } : {}),
    },
    ...(verification ? { verification } : {}),
  };
}
