// Builds native/ (the C N-API addon) with the project's own node-gyp, against the headers of the Node that
// runs this script. Run by `npm ci`/`npm install` (the root package's install script) and by
// `npm run build:native`. Never downloads headers: --nodedir points node-gyp at the local ones, and we
// fail early, saying what to install, when they are missing.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const nativeDir = join(root, 'native');

// /usr/bin/node -> /usr; the headers of an installed Node live in <prefix>/include/node.
const nodedir = dirname(dirname(process.execPath));
const header = join(nodedir, 'include', 'node', 'node_api.h');
if (!existsSync(header)) {
  console.error(
    [
      `build-native: Node's C headers are missing: ${header} does not exist.`,
      `The native addon is built against the headers of the Node that runs the build (${process.execPath},`,
      `${process.version}), and they are never downloaded. Install the headers that match this Node:`,
      "  - Debian/Ubuntu with Debian's own nodejs package: apt-get install libnode-dev",
      "  - NodeSource's nodejs package ships them in the nodejs package itself: reinstall nodejs",
      '  - a Node from a tarball or a version manager: use its full distribution, which has include/node',
      'then run `npm run build:native` (or `npm ci`) again.',
    ].join('\n'),
  );
  process.exit(1);
}

let nodeGyp;
try {
  nodeGyp = createRequire(join(root, 'package.json')).resolve('node-gyp/bin/node-gyp.js');
} catch {
  console.error('build-native: node-gyp is not installed; it is a devDependency of this project: run `npm ci`.');
  process.exit(1);
}

// --nodedir alone makes node-gyp use the local headers; the env var keeps a user's npmrc from overriding it.
const env = { ...process.env, npm_config_nodedir: nodedir };
const r = spawnSync(process.execPath, [nodeGyp, 'rebuild', `--nodedir=${nodedir}`], {
  cwd: nativeDir,
  stdio: 'inherit',
  env,
});
if (r.error) {
  console.error(`build-native: could not run node-gyp: ${r.error.message}`);
  process.exit(1);
}
if (r.status !== 0) {
  console.error(`build-native: node-gyp failed (exit ${r.status ?? r.signal}); see the compiler output above.`);
  process.exit(r.status || 1);
}
const built = join(nativeDir, 'build', 'Release', 'vfio_native.node');
if (!existsSync(built)) {
  console.error(`build-native: node-gyp succeeded but ${built} is missing.`);
  process.exit(1);
}
console.log(`build-native: built ${built} against ${nodedir}/include/node (${process.version})`);
