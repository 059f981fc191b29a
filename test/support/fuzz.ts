// Shared settings for the fuzz properties, so `npm test` runs them briefly and `npm run fuzz` runs the same
// properties for longer. Environment:
//   FUZZ_SEED     seed for every property (default: a fixed one, so a failure in `npm test` replays);
//   FUZZ_RUNS     runs per property instead of each property's own default;
//   FUZZ_SECONDS  run each property until this many seconds have passed (FUZZ_RUNS then bounds it too).
// The seed is printed with every property's name; fast-check prints the failing case's seed and path,
// and FUZZ_SEED=<seed> replays it.
import { readdirSync, readFileSync } from 'node:fs';
import type fc from 'fast-check';

export const FUZZ_SEED = envInt('FUZZ_SEED') ?? 0x5eed_f022;
const RUNS = envInt('FUZZ_RUNS');
const SECONDS = envInt('FUZZ_SECONDS');

function envInt(name: string): number | undefined {
  const v = process.env[name];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw new Error(`${name}=${v} is not an integer`);
  return n;
}

let printed = false;

/** True when `npm run fuzz` (or a caller) asked for longer runs. */
export const LONG_FUZZ = RUNS !== undefined || SECONDS !== undefined;

/**
 * fast-check parameters for one property: `runs` in `npm test`, FUZZ_RUNS / FUZZ_SECONDS when set.
 * Prints the name, the seed and the bound, so any run can be repeated.
 */
export function fuzzParams<T>(name: string, runs: number): fc.Parameters<T> {
  const numRuns = RUNS ?? (SECONDS !== undefined ? 1_000_000_000 : runs);
  const p: fc.Parameters<T> = { seed: FUZZ_SEED, numRuns };
  if (SECONDS !== undefined) p.interruptAfterTimeLimit = SECONDS * 1000;
  // Once per test file in `npm test`; per property in longer runs, where each one's bound matters.
  if (LONG_FUZZ || !printed) {
    printed = true;
    console.log(
      `fuzz ${LONG_FUZZ ? name : '(every property in this file)'}: seed=${FUZZ_SEED} ` +
        `${SECONDS !== undefined ? `seconds=${SECONDS} ` : ''}max-runs=${LONG_FUZZ ? numRuns : 'per property'}` +
        ` (FUZZ_SEED=${FUZZ_SEED} replays)`,
    );
  }
  return p;
}

/** A loop bound for hand-written rounds (fd/RSS checks), scaled like the properties. */
export function fuzzRounds(runs: number): number {
  if (RUNS !== undefined) return RUNS;
  if (SECONDS !== undefined) return runs * Math.max(1, SECONDS);
  return runs;
}

/** Counts inputs per target and prints the FUZZ-FIGURES line docs/reliability.md quotes. */
export function fuzzFigures(f: {
  target: string;
  inputs: number;
  crashes?: number;
  fdDelta?: number;
  rssDeltaKib?: number;
}): void {
  const parts = [`target=${f.target}`, `inputs=${f.inputs}`, `crashes=${f.crashes ?? 0}`];
  if (f.fdDelta !== undefined) parts.push(`fd_delta=${f.fdDelta}`);
  if (f.rssDeltaKib !== undefined) parts.push(`rss_delta_kib=${f.rssDeltaKib}`);
  console.log(`FUZZ-FIGURES ${parts.join(' ')} seed=${FUZZ_SEED}`);
}

/** Open fds of a process (Linux /proc). */
export function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** A field of /proc/PID/status in KiB (VmRSS, VmHWM, RssAnon, RssShmem …). */
export function statusKib(pid: number, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(m[1]);
}
