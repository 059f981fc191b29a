// Shared settings for the fuzz properties, so `npm test` runs them briefly and `npm run fuzz` runs the same
// properties for longer. Environment:
//   FUZZ_SEED     seed for every property (default: a fixed one, so a failure in `npm test` replays);
//   FUZZ_RUNS     runs per property instead of each property's own default;
//   FUZZ_SECONDS  run each property until this many seconds have passed (FUZZ_RUNS then bounds it too).
// The seed is printed with every property's name; fast-check prints the failing case's seed and path,
// and FUZZ_SEED=<seed> replays it.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
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

/**
 * The figures of one fuzz target, counted while it runs and printed as the FUZZ-FIGURES line
 * docs/reliability.md quotes. Each count is measured, so each can show a failure:
 * - `inputs`: bad inputs tried (malformed, mutated, hostile);
 * - `valid`: valid requests sent as load (pipelining, pending bounds), kept apart from the bad inputs;
 * - `crashes`: for in-process targets, errors thrown that are not the target's typed error; for processes
 *   under test (`watch`), exits by a signal we did not send, exits we did not ask for, and uncaught-error
 *   traces on their stderr.
 * Print the line (`print`) before asserting on the counts, so a failing run still reports them.
 */
export class FuzzTally {
  inputs = 0;
  valid = 0;
  crashes = 0;
  /** One line per crash counted: what happened. */
  readonly why: string[] = [];
  private readonly stopping = new Set<ChildProcess>();
  private printed = false;

  constructor(readonly target: string) {}

  /** A throw from code under test: anything but one of `types` is a crash (counted, then the test fails). */
  thrown(err: unknown, types: readonly (abstract new (...a: never[]) => Error)[], input = ''): void {
    if (types.some((t) => err instanceof t)) return;
    this.crash(`threw ${(err as Error)?.stack ?? String(err)}${input ? ` for ${input}` : ''}`);
    assert.fail(this.why.at(-1));
  }

  /** Counts the crashes of a process under test from now on. `name` labels them. */
  watch(proc: ChildProcess, name: string): this {
    const who = `${name} (pid ${proc.pid})`;
    // Node prints an uncaught error as its stack, a blank line and "Node.js vNN", then exits non-zero: one
    // crash, counted at its first stack frame. A caught error that a server logs with its stack is an
    // unhandled case too, and counts the same way.
    let inTrace = false;
    let fatal = false;
    proc.stderr?.on('data', (d: Buffer | string) => {
      for (const line of String(d).split('\n')) {
        if (/^\s+at \S.*:\d+:\d+\)?$/.test(line)) {
          if (!inTrace) this.crash(`${who} printed an error trace: ${line.trim()}`);
          inTrace = true;
        } else if (/^Node\.js v\d+/.test(line) || /\b(uncaught|unhandled)\b/i.test(line)) {
          if (!inTrace) this.crash(`${who}: ${line.trim()}`);
          fatal = true;
          inTrace = false;
        } else if (line.trim() !== '') inTrace = false;
      }
    });
    proc.on('exit', (code, signal) => {
      const asked = this.stopping.has(proc);
      if (signal) {
        if (!(asked && signal === 'SIGTERM')) this.crash(`${who} killed by ${signal}`);
      } else if (!fatal && (code !== 0 || !asked)) {
        this.crash(`${who} exited with code ${code}${asked ? '' : ', unasked'}`);
      }
    });
    return this;
  }

  /** The test is about to stop `proc` (SIGTERM, QMP quit): a clean exit is not a crash. */
  expectExit(proc: ChildProcess): void {
    this.stopping.add(proc);
  }

  private crash(what: string): void {
    this.crashes++;
    this.why.push(what);
  }

  /** Prints the FUZZ-FIGURES line (with any further measured figures), then any crashes it counted. */
  print(more: { fdDelta?: number; rssDeltaKib?: number; [k: string]: number | undefined } = {}): void {
    this.printed = true;
    const { fdDelta, rssDeltaKib, ...rest } = more;
    const parts = [`target=${this.target}`, `inputs=${this.inputs}`, `valid=${this.valid}`, `crashes=${this.crashes}`];
    if (fdDelta !== undefined) parts.push(`fd_delta=${fdDelta}`);
    if (rssDeltaKib !== undefined) parts.push(`rss_delta_kib=${rssDeltaKib}`);
    for (const [k, v] of Object.entries(rest)) if (v !== undefined) parts.push(`${k}=${v}`);
    console.log(`FUZZ-FIGURES ${parts.join(' ')} seed=${FUZZ_SEED}`);
    for (const w of this.why) console.log(`  crash: ${w}`);
  }

  /** For an after() hook: prints the counts of a target whose test failed before printing them. */
  flush(): void {
    if (!this.printed) this.print({ incomplete: 1 });
  }

  /** Prints the figures, then fails if any crash was counted. */
  printAndCheck(more?: Parameters<FuzzTally['print']>[0]): void {
    this.print(more);
    assert.equal(this.crashes, 0, `${this.crashes} crash(es) in ${this.target}: ${this.why.join('; ')}`);
  }
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
