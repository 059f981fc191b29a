// Where a bench run's results go: printed as JSON with --json, and always appended as one line to
// bench/results/history.jsonl with the machine and the commit, so trends across runs and commits show.

import { execFileSync } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { join } from 'node:path';
import { crc32cImplementation } from '../src/stream/crc32c.ts';
import { type Figure, type Ratio, say } from './figures.ts';

const root = new URL('..', import.meta.url).pathname;
export const HISTORY = join(root, 'bench', 'results', 'history.jsonl');

/** perf samples of one migration, per VMM process, sorted into kinds of work (bench/profile.ts). */
export interface WorkProfile {
  name: string;
  /** Each process: its samples by kind and its CPU ms per GiB moved (not in older runs). */
  sides: { side: string; samples: number; counts: Record<string, number>; cpuMsPerGiB?: number }[];
}

export interface BenchRun {
  date: string;
  commit: string;
  /** Uncommitted changes were present: the figures are not exactly the commit's. */
  dirty: boolean;
  machine: {
    cpu: string;
    cores: number;
    memGiB: number;
    node: string;
    loadavg: number[];
    /** The kernel's release (os.release()): its copies between sockets and memory shape every figure. */
    kernel?: string;
    /** Which CRC-32C code the addon runs here (crc32cImplementation()): every checked byte pays it. */
    crc32c?: string;
  };
  rounds: number;
  /** What ran: the compiled package (dist/) or the sources through tsx (`--sources`); absent: sources. */
  code?: 'compiled' | 'sources';
  /** The one part run (`--only`); absent: every part. The document's tables come from full runs only. */
  only?: string;
  figures: Figure[];
  ratios: Ratio[];
  skipped: { name: string; why: string }[];
  /** Where the CPU went (`--only profile`, perf installed). */
  profiles?: WorkProfile[];
}

function git(...args: string[]): string {
  try {
    return execFileSync('git', args, { cwd: root, encoding: 'utf8' }).trim();
  } catch {
    return '';
  }
}

export function newRun(rounds: number, only?: string): BenchRun {
  return {
    date: new Date().toISOString(),
    commit: git('rev-parse', '--short=12', 'HEAD') || 'unknown',
    // The history file itself is left out: a run appended and not yet committed is not a code change.
    dirty: git('status', '--porcelain', '--untracked-files=no', '--', '.', ':!bench/results') !== '',
    machine: {
      cpu: cpus()[0]?.model ?? 'unknown',
      cores: cpus().length,
      memGiB: Math.round(totalmem() / 2 ** 30),
      node: process.version,
      kernel: release(),
      crc32c: crc32cImplementation(),
      loadavg: loadavg().map((x) => Math.round(x * 100) / 100),
    },
    rounds,
    ...(only ? { only } : {}),
    figures: [],
    ratios: [],
    skipped: [],
  };
}

/** Prints the run (--json) and appends it to the history unless `record` is false (a smoke run). */
export function saveRun(run: BenchRun, json: boolean, record = true): void {
  if (json) console.log(JSON.stringify(run, null, 2));
  if (!record) {
    say('\nresults not recorded (--no-history)');
    return;
  }
  mkdirSync(join(root, 'bench', 'results'), { recursive: true });
  appendFileSync(HISTORY, `${JSON.stringify(run)}\n`);
  say(`\nresults appended to ${HISTORY}`);
}

/** Every run recorded in the history, oldest first; none when there is no history yet. */
export function readHistory(path = HISTORY): BenchRun[] {
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l, i) => {
      try {
        return JSON.parse(l) as BenchRun;
      } catch (err) {
        throw new Error(`${path}:${i + 1} is not a JSON run record: ${(err as Error).message}`);
      }
    });
}
