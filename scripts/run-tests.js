// Runs every test/**/*.test.ts file with node's test runner (Node 20's --test has no glob support).
// Extra arguments are passed through as file filters: `npm test -- region` runs files whose path contains "region".
// Files run two or more at a time (TEST_CONCURRENCY overrides): most of a file's time is spent waiting on
// the processes it starts, and Node's default (cores - 1) runs them one by one on a 2-core machine. Every
// file already has to pass on a machine whose cores are all busy (`npm run test:loaded`), and each takes
// its sockets, directories and namespaces under names of its own, so files do not meet.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join, relative } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const filters = process.argv.slice(2);

function walk(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return walk(p);
    return e.name.endsWith('.test.ts') ? [p] : [];
  });
}

const files = walk(join(root, 'test'))
  .map((f) => relative(root, f))
  .filter((f) => filters.length === 0 || filters.some((s) => f.includes(s)))
  .sort();
if (files.length === 0) {
  console.error(`no test files match ${filters.join(' ')}`);
  process.exit(1);
}
const concurrency = Number(process.env.TEST_CONCURRENCY ?? Math.max(2, availableParallelism() - 1));
if (!Number.isInteger(concurrency) || concurrency < 1) {
  console.error(`TEST_CONCURRENCY must be a whole number >= 1, got ${process.env.TEST_CONCURRENCY}`);
  process.exit(2);
}
// property-seed: every fast-check property runs from FUZZ_SEED (test/support/fuzz.ts), so failures replay.
const r = spawnSync(
  process.execPath,
  [
    '--import',
    'tsx',
    '--import',
    './test/support/property-seed.ts',
    '--test',
    `--test-concurrency=${concurrency}`,
    '--test-reporter=spec',
    ...files,
  ],
  {
    cwd: root,
    stdio: 'inherit',
  },
);
process.exit(r.status ?? 1);
