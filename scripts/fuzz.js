// `npm run fuzz`: the fuzz tests (every test file with "fuzz" in its path) with longer runs. Each property
// runs for FUZZ_SECONDS (default 5: about ten minutes for the ~120 properties) unless FUZZ_RUNS bounds it;
// the seed is random unless FUZZ_SEED is given, and printed, so a failure replays with
// FUZZ_SEED=<seed> npm run fuzz. Extra arguments narrow the files further (e.g. `npm run fuzz -- stream`).
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join, relative } from 'node:path';

const env = { ...process.env };
if (!env.FUZZ_RUNS && !env.FUZZ_SECONDS) env.FUZZ_SECONDS = '5';
if (!env.FUZZ_SEED) env.FUZZ_SEED = String(Math.floor(Math.random() * 0x7fffffff));
console.log(
  `npm run fuzz: FUZZ_SEED=${env.FUZZ_SEED}${env.FUZZ_SECONDS ? ` FUZZ_SECONDS=${env.FUZZ_SECONDS}` : ''}${
    env.FUZZ_RUNS ? ` FUZZ_RUNS=${env.FUZZ_RUNS}` : ''
  }`,
);
const root = new URL('..', import.meta.url).pathname;
const walk = (dir) =>
  readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? walk(join(dir, e.name)) : e.name.endsWith('.test.ts') ? [join(dir, e.name)] : [],
  );
const words = process.argv.slice(2);
const files = walk(join(root, 'test'))
  .map((f) => relative(root, f))
  .filter((f) => f.includes('fuzz') && words.every((w) => f.includes(w)));
if (files.length === 0) {
  console.error(`no fuzz test files match ${words.join(' ')}`);
  process.exit(1);
}
const runner = new URL('./run-tests.js', import.meta.url).pathname;
const r = spawnSync(process.execPath, [runner, ...files], { stdio: 'inherit', env });
process.exit(r.status ?? 1);
