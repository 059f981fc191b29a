// The command line's own behaviour: --version, help per command, and an unknown command answered with a
// suggestion and exit code 2 instead of the whole manual.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { suggestCommand } from '../../src/cli/main.ts';

const BIN = new URL('../../bin/vfio-migrate.js', import.meta.url).pathname;
const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

function cli(...args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

test('--version prints the package version and nothing else', () => {
  for (const flag of ['--version', '-V']) assert.deepEqual(cli(flag), { code: 0, out: `${pkg.version}\n`, err: '' });
});

test("help lists every command; help COMMAND prints that command's options only", () => {
  const all = cli('help');
  assert.equal(all.code, 0);
  for (const c of ['demo', 'region-demo', 'serve', 'vmm', 'probe', 'analyze'])
    assert.match(all.out, new RegExp(`\\n  ${c} `));
  const one = cli('help', 'serve');
  assert.equal(one.code, 0);
  assert.match(one.out, /^usage: vfio-migrate serve /);
  assert.doesNotMatch(one.out, /usage: vfio-migrate vmm/);
});

test('an unknown command is named, with a suggestion, exit code 2, and no manual', () => {
  const r = cli('serv');
  assert.equal(r.code, 2);
  assert.equal(r.out, '');
  assert.match(r.err, /unknown command "serv" \(did you mean "serve"\?\)/);
  assert.ok(r.err.split('\n').length <= 2, 'one line, not the manual');
  assert.equal(cli('help', 'frobnicate').code, 2);
});

test('suggestions: the closest command within two edits, or none', () => {
  assert.equal(suggestCommand('prob'), 'probe');
  assert.equal(suggestCommand('vm'), 'vmm');
  assert.equal(suggestCommand('anlyze'), 'analyze');
  assert.equal(suggestCommand('frobnicate'), undefined);
});
