// The package as a user gets it: `npm pack` (which compiles dist/), then `npm install ./vfio-migrate-*.tgz`
// in an empty directory (which builds the native addon with node-gyp against this Node's headers), then the
// installed command runs the demo, and a consumer program typed against the package's declarations embeds
// both halves (serves a device, attaches it from a client) with nothing but the package's exports.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

const root = new URL('../..', import.meta.url).pathname;
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
let dir = '';
let app = '';

function run(cmd: string, args: string[], cwd: string, timeout = 300_000) {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout, env: { ...process.env, npm_config_fund: 'false' } });
  const out = `${r.stdout}\n${r.stderr}`;
  assert.equal(
    r.status,
    0,
    `${cmd} ${args.join(' ')} exited ${r.status ?? r.signal}${r.error ? ` (${r.error.message})` : ''}:\n${out}`,
  );
  return out;
}

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'vfio-migrate-pack-'));
  run(npm, ['pack', '--pack-destination', dir], root);
  const tgz = readdirSync(dir).find((f) => /^vfio-migrate-.*\.tgz$/.test(f));
  assert.ok(tgz, `npm pack left no tarball in ${dir}`);
  app = join(dir, 'app');
  run('mkdir', ['-p', app], dir);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  // --prefer-offline: node-gyp and its dependencies come from the npm cache `npm ci` filled.
  run(npm, ['install', '--no-audit', '--prefer-offline', join(dir, tgz)], app);
});

after(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('the tarball ships what users need and nothing else', () => {
  const listed = run('tar', ['-tzf', join(dir, readdirSync(dir).find((f) => f.endsWith('.tgz'))!)], dir)
    .split('\n')
    .filter((l) => l.startsWith('package/'));
  for (const must of [
    'package/dist/index.js',
    'package/dist/index.d.ts',
    'package/bin/vfio-migrate.js',
    'package/dist/cli/front.js',
    'package/native/binding.gyp',
  ])
    assert.ok(listed.includes(must), `${must} is shipped`);
  for (const l of listed) assert.doesNotMatch(l, /^package\/(src|test|bench|\.ci)\//, `${l} is not for users`);
});

test('the installed command runs the demo, verified, from compiled JavaScript', () => {
  const out = run(
    join(app, 'node_modules', '.bin', 'vfio-migrate'),
    ['demo', '--mem', '64M', '--device-mem', '16M'],
    app,
  );
  assert.match(out, /status: +completed/);
  assert.match(out, /verified: +all 64\.0 MiB of guest RAM \(page digests\) and the device state equal/);
});

test("the installed command's bundled front answers, and a command's own usage error exits 2", () => {
  const bin = join(app, 'node_modules', '.bin', 'vfio-migrate');
  assert.match(run(bin, ['--version'], app), /^\d+\.\d+\.\d+/);
  // conform raises this itself (a UsageError of its own module, not the front's bundled copy).
  const r = spawnSync(bin, ['conform', '--socket', join(dir, 'none.sock')], { cwd: app, encoding: 'utf8' });
  assert.equal(r.status, 2, `exit code 2 for a usage error, got ${r.status}: ${r.stderr}`);
  assert.match(r.stderr, /error: give --socket twice/);
});

test('a consumer program typed against the package serves a device and discovers its migration interface', () => {
  writeFileSync(
    join(app, 'embed.ts'),
    `import { RegisterFileDevice, serveDevice } from 'vfio-migrate/device';
import { VfioUserClient, discoverMigration } from 'vfio-migrate/vmm';
const served = serveDevice(new RegisterFileDevice(), { socket: process.argv[2]!, dataSection: 'trapped' });
const client = await VfioUserClient.connect(served.path);
const offered = await discoverMigration(client);
console.log('offered', offered.map((o) => o.flavor).join(','));
client.close();
served.close();
`,
  );
  writeFileSync(
    join(app, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        module: 'nodenext',
        target: 'es2022',
        strict: true,
        outDir: 'out',
        typeRoots: [join(root, 'node_modules', '@types')],
        types: ['node'],
      },
      files: ['embed.ts'],
    }),
  );
  run(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', '.'], app);
  const out = run(process.execPath, [join(app, 'out', 'embed.js'), join(dir, 'embed.sock')], app);
  assert.match(out, /offered seed/);
});
