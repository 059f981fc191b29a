// A migration recording (`vfio-migrate vmm --record`, JSON lines) turned into the tables the report's
// plots draw: a source's (what it sent, pass by pass, and where the downtime went) or a destination's
// (what it received over time, and its own timeline up to starting the VM). Pure: text in, data out, no I/O. No QEMU counterpart (QEMU's migration statistics end at
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
  /** A destination's samples only. */
  received?: Received;
}

/** What a destination received (its query-migrate x-incoming): payload bytes, sections, arrival times (ms). */
export interface Received {
  ram: number;
  device: number;
  sections: number;
  firstSection: number | null;
  lastSection: number | null;
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
  /** A destination's result only. */
  received?: Received;
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
  /** Whose recording: the source's (`migrate`) or the destination's (`--incoming`). */
  role: 'source' | 'destination';
  /** The migration the report shows: the last one recorded (its samples and result). */
  status: string;
  /**
   * Megabytes (10^6) per second between consecutive samples, per stream part, at the interval's end: sent
   * (source) or received (destination).
   */
  throughput: { t: number; part: 'RAM' | 'device'; mbPerS: number }[];
  /** Per dirty-sync pass: RAM still dirty when the pass began, the guest's dirty rate, RAM sent in it. */
  passes: { pass: number; remainingBytes: number; dirtyPagesPerS: number | null; sentBytes: number }[];
  /** The device over time: bytes sent so far, and pending as the last pass counted it (destination: received). */
  device: { t: number; series: 'sent' | 'pending' | 'received'; bytes: number }[];
  /** Destination: RAM payload bytes received so far, over time. */
  ramReceived: { t: number; bytes: number }[];
  /**
   * Destination: its timeline (ms), from the migration's start to the VM's: waiting for the source's first
   * section, receiving the stream, and after the last section (the load's checks, READY, GO, the start).
   */
  timeline: { phase: string; ms: number }[];
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
    /** Destination: sections loaded. */
    sections: number | null;
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
  // A destination's samples carry what it received; a source's what it sent.
  const role: ReportData['role'] = samples.some((s) => s.received) || result?.received ? 'destination' : 'source';
  const ramBytes = (s: SampleLine) => s.received?.ram ?? s.ram.transferred;
  const deviceBytes = (s: SampleLine) => s.received?.device ?? s.device.transferred;
  const throughput: ReportData['throughput'] = [];
  let a = samples[0];
  for (const b of samples.slice(1)) {
    const dt = (b.t - a!.t) / 1000;
    if (dt * 1000 < windowMs && b !== samples.at(-1)) continue;
    if (dt <= 0) continue;
    const at = secs(b.t);
    throughput.push({ t: at, part: 'RAM', mbPerS: (ramBytes(b) - ramBytes(a!)) / dt / 1e6 });
    throughput.push({ t: at, part: 'device', mbPerS: (deviceBytes(b) - deviceBytes(a!)) / dt / 1e6 });
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
  const ramReceived: ReportData['ramReceived'] = [];
  if (role === 'source') {
    for (const s of samples) {
      device.push({ t: secs(s.t), series: 'sent', bytes: s.device.transferred });
      if (s.device.pending !== null) device.push({ t: secs(s.t), series: 'pending', bytes: s.device.pending });
    }
    if (result) device.push({ t: secs(result.t), series: 'sent', bytes: result.device.transferred });
  } else {
    const points = [
      ...samples.filter((s) => s.received).map((s) => ({ t: s.t, r: s.received! })),
      ...(result?.received ? [{ t: result.t, r: result.received }] : []),
    ];
    for (const { t, r } of points) {
      device.push({ t: secs(t), series: 'received', bytes: r.device });
      ramReceived.push({ t: secs(t), bytes: r.ram });
    }
  }
  const timeline = role === 'destination' ? destinationTimeline(result) : [];

  const sw = result?.switchover ?? null;
  const downtime = sw
    ? PHASES.filter(([k]) => typeof sw[k] === 'number').map(([k, label]) => ({ phase: label, ms: sw[k]! }))
    : [];
  const expected = sw?.expected ?? [...samples].reverse().find((s) => s.expectedDowntime !== null)?.expectedDowntime;

  const received = result?.received ?? samples.at(-1)?.received;
  const verified =
    verification ?? (role === 'destination' && result ? destinationChecks(result, rec.events, from) : undefined);
  return {
    startedAt: rec.startedAt,
    role,
    ramReceived,
    timeline,
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
      ramSentBytes: received?.ram ?? result?.ram.transferred ?? samples.at(-1)?.ram.transferred ?? 0,
      deviceSentBytes: received?.device ?? result?.device.transferred ?? samples.at(-1)?.device.transferred ?? 0,
      sections: received?.sections ?? null,
      samples: samples.length,
      events: rec.events.length,
      ...(result?.error ? { error: result.error } : {}),
    },
    ...(verified ? { verification: verified } : {}),
  };
}

/** A destination's timeline: until the first section, the stream, and from the last section to the end. */
function destinationTimeline(result: ResultLine | undefined): ReportData['timeline'] {
  const r = result?.received;
  if (!result || !r || r.firstSection === null || r.lastSection === null || result.totalTime === null) return [];
  return [
    { phase: 'waiting for the source', ms: r.firstSection },
    { phase: 'receiving the stream', ms: r.lastSection - r.firstSection },
    { phase: 'load checks, READY/GO, start', ms: Math.max(0, result.totalTime - r.lastSection) },
  ];
}

/**
 * What a destination checked itself, from its result: a completed incoming migration has loaded every
 * section, found every guest page among them and each device's state accepted (the load refuses
 * otherwise, before READY), and got GO; then the VM started (RESUME) or waits for `cont` (-S).
 */
function destinationChecks(result: ResultLine, events: EventLine[], from: number): Verification {
  const ok = result.status === 'completed';
  const r = result.received;
  const started = events.some((e) => e.event === 'RESUME' && e.t >= from && e.t <= result.t);
  const why = result.error ?? `ended ${result.status}`;
  const checks: Verification['checks'] = [
    { name: 'stream', ok, detail: ok ? `${r?.sections ?? '?'} sections loaded, through EOF` : why },
    { name: 'guest RAM', ok, detail: ok ? 'every page arrived (checked before READY)' : why },
    { name: 'devices', ok, detail: ok ? "each device's state loaded and accepted" : why },
  ];
  if (ok)
    checks.push({
      name: 'VM',
      ok: true,
      detail: started ? 'started here after GO' : 'loaded, paused until cont (-S)',
    });
  return { ok, checks };
}
