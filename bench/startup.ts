// Start-up time of a command: `vfio-migrate --version` and `vfio-migrate help vmm` from the compiled
// package (dist/, as an installed package runs them) and from the sources through tsx (a checkout), against
// bare `node -e ''` measured in the same run. Median of several runs each.

import { spawnSync } from 'node:child_process';

const root = new URL('..', import.meta.url).pathname;
const BIN = new URL('../bin/vfio-migrate.js', import.meta.url).pathname;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function timeRuns(args: string[], env: NodeJS.ProcessEnv, runs: number): number {
  const ms: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    const r = spawnSync(process.execPath, args, { env, stdio: 'ignore' });
    if (r.status !== 0) throw new Error(`node ${args.join(' ')} exited ${r.status ?? r.signal}`);
    ms.push(performance.now() - t0);
  }
  return median(ms);
}

export function startupBench(runs = 9): void {
  const built = spawnSync('npm', ['run', 'build'], { cwd: root, stdio: 'ignore' });
  if (built.status !== 0) throw new Error('npm run build failed');
  const compiled = { ...process.env, VFIO_MIGRATE_COMPILED: '1' };
  const bare = timeRuns(['-e', ''], process.env, runs);
  const rows: [string, number][] = [
    ['compiled --version', timeRuns([BIN, '--version'], compiled, runs)],
    ['compiled help vmm', timeRuns([BIN, 'help', 'vmm'], compiled, runs)],
    ['sources (tsx) help vmm', timeRuns([BIN, 'help', 'vmm'], process.env, runs)],
  ];
  console.log(`start-up, median of ${runs} runs: bare node -e '' ${bare.toFixed(0)} ms`);
  for (const [name, ms] of rows) {
    console.log(`${name.padEnd(24)} ${ms.toFixed(0).padStart(5)} ms   ${(ms / bare).toFixed(2)}x bare node`);
  }
}
