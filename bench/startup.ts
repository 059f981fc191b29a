// Start-up time of a command: `vfio-migrate --version` and `vfio-migrate help vmm` from the compiled
// package (dist/, as an installed package runs them) and from the sources through tsx (a checkout), against
// bare `node -e ''` and against an ES module that only imports commander (the least a command line on ES
// modules and commander starts with), measured in the same run, each as many rounds as every other figure.

import { spawnSync } from 'node:child_process';
import { measure, ratio, say } from './figures.ts';
import type { BenchRun } from './results.ts';

const root = new URL('..', import.meta.url).pathname;
const BIN = new URL('../bin/vfio-migrate.js', import.meta.url).pathname;

/** One start, timed from spawn to exit; a failed start fails the bench. */
async function once(args: string[], env: NodeJS.ProcessEnv): Promise<{ value: number }> {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, args, { env, stdio: 'ignore', cwd: root });
  if (r.status !== 0) throw new Error(`node ${args.join(' ')} exited ${r.status ?? r.signal}`);
  return { value: performance.now() - t0 };
}

/** Compiles the package into dist/ (`npm run build`), as an installed package ships it. */
export function buildPackage(): void {
  const built = spawnSync('npm', ['run', 'build'], { cwd: root, stdio: 'ignore' });
  if (built.status !== 0) throw new Error('npm run build failed');
}

/** Needs buildPackage() first. */
export async function startupBench(rounds: number, run: BenchRun): Promise<void> {
  const compiled = { ...process.env, VFIO_MIGRATE_COMPILED: '1' };
  const sources = { ...process.env, VFIO_MIGRATE_COMPILED: '0' };
  say('start-up: a command from spawn to exit');
  const bare = await measure("bare node -e ''", 'ms', rounds, () => once(['-e', ''], process.env));
  const floor = await measure('node importing commander', 'ms', rounds, () =>
    once(['--input-type=module', '-e', "import 'commander';"], process.env),
  );
  const version = await measure('compiled --version', 'ms', rounds, () => once([BIN, '--version'], compiled));
  const help = await measure('compiled help vmm', 'ms', rounds, () => once([BIN, 'help', 'vmm'], compiled));
  const tsx = await measure('sources (tsx) help vmm', 'ms', rounds, () => once([BIN, 'help', 'vmm'], sources));
  run.figures.push(bare, floor, version, help, tsx);
  say();
  run.ratios.push(
    ratio('compiled --version / bare node', version, bare, 'about 1'),
    ratio('node importing commander / bare node', floor, bare),
    ratio('compiled --version / node importing commander', version, floor),
    ratio('compiled help vmm / bare node', help, bare),
    ratio('sources help vmm / bare node', tsx, bare),
  );
}
