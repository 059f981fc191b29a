// The command line's own behaviour (commander underneath): --version, help per command, an unknown command
// or option named with a suggestion and exit code 2 instead of the manual, typed option values refused
// with the reason, and `--version`/`help` loading no command's implementation.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

const BIN = new URL('../../bin/vfio-migrate.js', import.meta.url).pathname;
const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

// What main.ts may load besides the declarations in options/: the option parsers and the size format.
const LIGHT = ['main.ts', 'option-types.ts', 'format.ts'];

function cli(...args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

test('--version prints the package version and nothing else', () => {
  for (const flag of ['--version', '-V']) assert.deepEqual(cli(flag), { code: 0, out: `${pkg.version}\n`, err: '' });
});

test("help lists every command; help COMMAND and COMMAND --help print that command's options only", () => {
  const all = cli('help');
  assert.equal(all.code, 0);
  for (const c of ['demo', 'region-demo', 'serve', 'vmm', 'probe', 'conform', 'report', 'analyze'])
    assert.match(all.out, new RegExp(`\\n  ${c} `));
  assert.match(all.out, /Exit codes: 0 success, 1 the command failed, 2 a usage error/);
  assert.deepEqual(cli(), all, 'no arguments: the same overview');
  for (const one of [cli('help', 'serve'), cli('serve', '--help'), cli('serve', '-h')]) {
    assert.equal(one.code, 0);
    assert.match(one.out, /^Usage: vfio-migrate serve /);
    assert.match(one.out, /--socket <path> +UNIX socket to create/);
    assert.doesNotMatch(one.out, /--qmp/);
  }
  const demo = cli('help', 'demo');
  assert.match(demo.out, /--json +one JSON object on stdout/);
  assert.match(demo.out, /--flavor <f>[\s\S]*choices: "seed",\s+"v1",\s+"v2",\s+"mixed"/);
});

test('an unknown command is named, with a suggestion, exit code 2, and no manual', () => {
  for (const r of [cli('serv'), cli('help', 'serv')]) {
    assert.equal(r.code, 2);
    assert.equal(r.out, '');
    assert.equal(r.err, "error: unknown command 'serv'\n(Did you mean serve?)\n");
  }
  const far = cli('frobnicate');
  assert.equal(far.code, 2);
  assert.equal(far.err, "error: unknown command 'frobnicate'\n", 'no suggestion when nothing is close');
  assert.equal(cli('help', 'frobnicate').code, 2);
});

test('an unknown option is named with a suggestion, exit code 2, and no manual', () => {
  const r = cli('probe', '--sockt', '/x');
  assert.equal(r.code, 2);
  assert.equal(r.out, '');
  assert.equal(r.err, "error: unknown option '--sockt'\n(Did you mean --socket?)\n");
});

test('bad values are refused before anything runs: the option, the value and why; exit code 2', () => {
  const cases: [string[], RegExp][] = [
    [['vmm', '--qmp', '/x', '--mem', 'lots'], /option '--mem <size>' argument 'lots' is invalid\. not a size/],
    [
      ['vmm', '--qmp', '/x', '--vcpus', '0'],
      /option '--vcpus <n>' argument '0' is invalid\. not a whole number of at least 1/,
    ],
    [
      ['vmm', '--qmp', '/x', '--dma-buffers', '0+4K,8M'],
      /'--dma-buffers <ranges>' argument '0\+4K,8M' is invalid\. '8M' is not OFFSET\+LENGTH/,
    ],
    [
      ['vmm', '--qmp', '/x', '--dma-buffers', '4K+0'],
      /'--dma-buffers <ranges>' argument '4K\+0' is invalid\. '4K\+0' is empty/,
    ],
    [['probe', '--socket', '/x', '--timeout', '1e3'], /'--timeout <ms>' argument '1e3' is invalid/],
    [['demo', '--flavor', 'v3'], /argument 'v3' is invalid\. Allowed choices are seed, v1, v2, mixed\./],
    [['serve', '--socket', '/x'], /required option '--device <name>' not specified/],
    [['probe'], /required option '--socket <path>' not specified/],
    [['vmm'], /required option '--qmp <path>' not specified/],
    [['report', 'rec.jsonl'], /required option '-o, --output <file>' not specified/],
    [['analyze'], /missing required argument 'file'/],
    [['analyze', 'a', 'b'], /too many arguments for 'analyze'/],
    [['conform', '--socket', '/a'], /give --socket twice/],
  ];
  for (const [args, why] of cases) {
    const r = cli(...args);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.err}`);
    assert.equal(r.out, '');
    assert.match(r.err, why);
    assert.equal(r.err.trim().split('\n').length, 1, `${args.join(' ')}: one line`);
  }
});

// The hooks, run on Node's loader thread: every module resolved under src/cli/ is appended to a log file.
const HOOKS = `
  import { appendFileSync } from 'node:fs';
  let log;
  export function initialize(data) { log = data.log; }
  export async function resolve(specifier, context, next) {
    const r = await next(specifier, context);
    if (r.url.includes('/src/cli/')) appendFileSync(log, r.url.replace(/^.*\\/src\\/cli\\//, '') + '\\n');
    return r;
  }`;

/** The modules under src/cli/ that one run of the CLI resolves, in order. */
function loadedCliModules(dir: string, status: number, ...args: string[]): string[] {
  const log = join(dir, `${args.join('_').replace(/\W/g, '_')}.log`);
  writeFileSync(log, '');
  const register = `import { register } from 'node:module'; register(${JSON.stringify(`data:text/javascript,${encodeURIComponent(HOOKS)}`)}, { data: { log: ${JSON.stringify(log)} } });`;
  const r = spawnSync(
    process.execPath,
    ['--import', `data:text/javascript,${encodeURIComponent(register)}`, BIN, ...args],
    {
      encoding: 'utf8',
      timeout: 60_000,
    },
  );
  assert.equal(r.status, status, r.stderr);
  return [...new Set(readFileSync(log, 'utf8').split('\n').filter(Boolean))];
}

test("--version and help load the commands' declarations only, never a command's implementation", () => {
  const dir = mkdtempSync(join(tmpdir(), 'cli-loads-'));
  try {
    for (const args of [['--version'], ['help'], ['help', 'vmm'], ['demo', '--help']]) {
      const loaded = loadedCliModules(dir, 0, ...args);
      assert.ok(loaded.includes('main.ts'), `${args.join(' ')}: the hook saw main.ts (${loaded.join(', ')})`);
      assert.ok(loaded.includes('options/vmm.ts'), `${args.join(' ')}: the hook saw the declarations`);
      const implementations = loaded.filter((m) => !m.startsWith('options/') && !LIGHT.includes(m));
      assert.deepEqual(implementations, [], `${args.join(' ')} loaded ${implementations.join(', ')}`);
    }
    // The check can fail: a command that runs loads its implementation, and the hook sees it.
    assert.ok(loadedCliModules(dir, 1, 'analyze', join(dir, 'missing.stream')).includes('analyze.ts'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
