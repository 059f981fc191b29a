// One benchmark figure: the same number of rounds for every figure, reported as the median with its spread
// (min-max), so a ratio of two medians measured in one run means something on a noisy machine and a run's
// noise shows. Ratios are taken between medians only.

/** Where human-readable lines go: stdout, or stderr when stdout carries --json. */
let sink: (line: string) => void = (line) => console.log(line);
export function say(line = ''): void {
  sink(line);
}
export function sayTo(fn: (line: string) => void): void {
  sink = fn;
}

export interface Figure {
  name: string;
  unit: 'MB/s' | 'ms';
  /** One value per round, in the order measured. */
  values: number[];
  median: number;
  min: number;
  max: number;
  /** What was moved or done per round, for the reader (e.g. "256.0 MiB"). */
  per?: string;
  /** Extra facts of the last round (e.g. downtime). */
  note?: string;
  /** Values of the warm-up rounds run before the measured ones (not in the median or the spread). */
  warmup?: number[];
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export function figure(name: string, unit: Figure['unit'], values: number[], extra: Partial<Figure> = {}): Figure {
  if (values.length === 0) throw new Error(`${name}: no rounds measured`);
  return { name, unit, values, median: median(values), min: Math.min(...values), max: Math.max(...values), ...extra };
}

/** Bytes moved in `ms` milliseconds: one round of a rate figure. */
export interface Rate {
  bytes: number;
  ms: number;
  /** Raw streams only (bench/raw-streams.ts): CPU both ends used meanwhile (ms on-CPU, every thread of both processes). */
  cpuMs?: number;
  /** What the round's figure note says about how it ran (raw streams: the memory's huge pages). */
  note?: string;
}

/** MB/s (10^6 bytes per second). */
export function mbps(r: Rate): number {
  return r.bytes / r.ms / 1000;
}

/** One round of a figure: its value (MB/s or ms) and optional details. */
export type Round = () => Promise<{ value: number; per?: string; note?: string }>;

/** A round that measured no time (or none of what it moved) is broken, not infinitely fast. */
async function checkedRound(name: string, fn: Round): ReturnType<Round> {
  const r = await fn();
  if (!Number.isFinite(r.value)) throw new Error(`${name}: a round measured ${r.value}: the run is void`);
  return r;
}

/** Collects a figure's rounds in the order they are run, the last one's details kept. */
class Rounds {
  readonly values: number[] = [];
  private last: { per?: string; note?: string } = {};

  constructor(
    readonly name: string,
    private readonly fn: Round,
  ) {}

  async run(): Promise<void> {
    const r = await checkedRound(this.name, this.fn);
    this.values.push(r.value);
    this.last = r;
  }

  figure(unit: Figure['unit'], extra: Partial<Figure> = {}): Figure {
    const f = figure(this.name, unit, this.values, { per: this.last.per, note: this.last.note, ...extra });
    say(formatFigure(f));
    return f;
  }
}

/**
 * Runs `fn` `rounds` times. `warmup` rounds run first and are kept apart (Figure.warmup): for figures
 * whose rounds reuse the same processes, so that the first round's cold code is not one of three values.
 */
export async function measure(
  name: string,
  unit: Figure['unit'],
  rounds: number,
  fn: Round,
  options: { warmup?: number } = {},
): Promise<Figure> {
  const warmup: number[] = [];
  for (let i = 0; i < (options.warmup ?? 0); i++) warmup.push((await checkedRound(name, fn)).value);
  const r = new Rounds(name, fn);
  for (let i = 0; i < rounds; i++) await r.run();
  return r.figure(unit, warmup.length ? { warmup } : {});
}

/**
 * Figures whose ratios are taken, measured in turn: each round of one runs beside a round of each other,
 * under the same load. Measured one after the other, a machine that got busier or quieter in between
 * showed as a difference between them (these machines are shared). Each goes first in turn (a, b, c,
 * then b, c, a, ...): the first of a round meets whatever the round before left (memory just freed,
 * the caches), so no figure always meets it.
 */
export async function measureInTurn(
  unit: Figure['unit'],
  rounds: number,
  entries: readonly { name: string; fn: Round }[],
): Promise<Figure[]> {
  const all = entries.map((e) => new Rounds(e.name, e.fn));
  for (let i = 0; i < rounds; i++) for (let k = 0; k < all.length; k++) await all[(i + k) % all.length]!.run();
  return all.map((r) => r.figure(unit));
}

/** Two figures measured in turn (measureInTurn). */
export async function measurePair(
  unit: Figure['unit'],
  rounds: number,
  a: { name: string; fn: Round },
  b: { name: string; fn: Round },
): Promise<[Figure, Figure]> {
  const [fa, fb] = await measureInTurn(unit, rounds, [a, b]);
  return [fa!, fb!];
}

/** measurePair, or `a` alone when there is no `b` (a baseline not installed here). */
export async function measureWith(
  unit: Figure['unit'],
  rounds: number,
  a: { name: string; fn: Round },
  b: { name: string; fn: Round } | null,
): Promise<[Figure, Figure | null]> {
  return b ? measurePair(unit, rounds, a, b) : [await measure(a.name, unit, rounds, a.fn), null];
}

export function formatFigure(f: Figure): string {
  const digits = f.unit === 'ms' ? 1 : 0;
  const v = (x: number) => x.toFixed(digits);
  return (
    `${f.name.padEnd(22)} ${v(f.median).padStart(7)} ${f.unit.padEnd(4)}  spread ${v(f.min)}-${v(f.max)}` +
    `  rounds ${f.values.map(v).join(' ')}${f.warmup ? ` after warm-up ${f.warmup.map(v).join(' ')}` : ''}` +
    `${f.per ? `  (${f.per} per round)` : ''}${f.note ? `; ${f.note}` : ''}`
  );
}

export interface Ratio {
  name: string;
  value: number;
  /** The aim this ratio is held to, as text (e.g. ">= 0.80"), when there is one. */
  aim?: string;
  /**
   * Ratios of the same run that bound this one from above (the same comparison with a ceiling measured
   * in place of ours): where one of them misses the aim, this one cannot meet it in that run.
   */
  bounds?: string[];
}

export function ratio(name: string, a: Figure, b: Figure, aim?: string, bounds?: string[]): Ratio {
  const r: Ratio = { name, value: a.median / b.median, aim, ...(bounds ? { bounds } : {}) };
  say(`${name.padEnd(32)} ${r.value.toFixed(2)}${aim ? `   (aim: ${aim})` : ''}`);
  return r;
}

/** Whether `value` meets an aim written as ">= x", "> x", "<= x" or "< x"; null for any other aim. */
export function meetsAim(aim: string, value: number): boolean | null {
  const m = /^(>=|>|<=|<)\s*(\d+(?:\.\d+)?)$/.exec(aim.trim());
  if (!m) return null;
  const x = Number(m[2]);
  switch (m[1]) {
    case '>=':
      return value >= x;
    case '>':
      return value > x;
    case '<=':
      return value <= x;
    default:
      return value < x;
  }
}
