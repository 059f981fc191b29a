#!/usr/bin/env node
// Entry point. An installed package runs the compiled JavaScript in dist/ (no compiler at run time); a
// checkout, where the TypeScript sources sit beside this folder, runs them through tsx, so what runs there
// is always what is written there. VFIO_MIGRATE_COMPILED=1 runs dist/ in a checkout too (after
// `npm run build`; the start-up bench does this).
import { existsSync } from 'node:fs';

const sources = new URL('../src/cli/main.ts', import.meta.url);
let main;
if (process.env.VFIO_MIGRATE_COMPILED !== '1' && existsSync(sources)) {
  const { register } = await import('tsx/esm/api');
  register();
  ({ main } = await import(sources.href));
} else {
  // The front bundled into one module (scripts/bundle-cli.js): start-up reads one file, not twenty.
  ({ main } = await import('../dist/cli/front.js'));
}
process.exitCode = await main(process.argv.slice(2));
