// Where a bench run's results go: printed as JSON with --json, and always appended as one line to
// bench/results/history.jsonl with the machine and the commit, so trends across runs and commits show.

import { execFileSync } from 'node:child_process';
import { appendFileSync, mkdirSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';
import { type Figure, type Ratio, say } from './figures.ts';

const root = new URL('..', import.meta.url).pathname;
export const HISTORY = join(root, 'bench', 'results', 'history.jsonl');

export interface BenchRun {
  date: string;
  commit: string;
  /** Uncommitted changes were present: the figures are not exactly the commit's. */
  dirty: boolean;
  machine: { cpu: string; cores: number; memGiB: number; node: string; loadavg: number[] };
  rounds: number;
  figures: Figure[];
  ratios: Ratio[];
  skipped: { name: string; why: string }[];
}

function git(...args: string[]): string {
  try {
    return execFileSync('git', args, { cwd: root, encoding: 'utf8' }).trim();
  } catch {
    return '';
  }
}

export function newRun(rounds: number): BenchRun {
  return {
    date: new Date().toISOString(),
    commit: git('rev-parse', '--short=12', 'HEAD') || 'unknown',
    dirty: git('status', '--porcelain', '--untracked-files=no') !== '',
    machine: {
      cpu: cpus()[0]?.model ?? 'unknown',
      cores: cpus().length,
      memGiB: Math.round(totalmem() / 2 ** 30),
      node: process.version,
      loadavg: loadavg().map((x) => Math.round(x * 100) / 100),
    },
    rounds,
    figures: [],
    ratios: [],
    skipped: [],
  };
}

export function saveRun(run: BenchRun, json: boolean): void {
  mkdirSync(join(root, 'bench', 'results'), { recursive: true });
  appendFileSync(HISTORY, `${JSON.stringify(run)}\n`);
  if (json) console.log(JSON.stringify(run, null, 2));
  say(`\nresults appended to ${HISTORY}`);
}
