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

/**
 * Runs `fn` `rounds` times; each round returns its value (MB/s or ms) and optional details. `warmup`
 * rounds run first and are kept apart (Figure.warmup): for figures whose rounds reuse the same processes,
 * so that the first round's cold code is not one of three values.
 */
export async function measure(
  name: string,
  unit: Figure['unit'],
  rounds: number,
  fn: () => Promise<{ value: number; per?: string; note?: string }>,
  options: { warmup?: number } = {},
): Promise<Figure> {
  // A round that measured no time (or none of what it moved) is broken, not infinitely fast.
  const round = async () => {
    const r = await fn();
    if (!Number.isFinite(r.value)) throw new Error(`${name}: a round measured ${r.value}: the run is void`);
    return r;
  };
  const warmup: number[] = [];
  for (let i = 0; i < (options.warmup ?? 0); i++) warmup.push((await round()).value);
  const values: number[] = [];
  let last: { per?: string; note?: string } = {};
  for (let i = 0; i < rounds; i++) {
    const r = await round();
    values.push(r.value);
    last = r;
  }
  const f = figure(name, unit, values, { per: last.per, note: last.note, ...(warmup.length ? { warmup } : {}) });
  say(formatFigure(f));
  return f;
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
}

export function ratio(name: string, a: Figure, b: Figure, aim?: string): Ratio {
  const r: Ratio = { name, value: a.median / b.median, aim };
  say(`${name.padEnd(32)} ${r.value.toFixed(2)}${aim ? `   (aim: ${aim})` : ''}`);
  return r;
}
