// Runs every test/**/*.test.ts file with node's test runner (Node 20's --test has no glob support).
// Extra arguments are passed through as file filters: `npm test -- region` runs files whose path contains "region".
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
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
// property-seed: every fast-check property runs from FUZZ_SEED (test/support/fuzz.ts), so failures replay.
const r = spawnSync(
  process.execPath,
  ['--import', 'tsx', '--import', './test/support/property-seed.ts', '--test', '--test-reporter=spec', ...files],
  {
    cwd: root,
    stdio: 'inherit',
  },
);
process.exit(r.status ?? 1);
