// `--json` on demo, probe and analyze: stdout holds exactly one JSON object (parsed here), whatever the
// outcome, with the exit code text mode gives; human-readable lines go to stderr. A usage error prints
// nothing on stdout and exits 2, as in text mode.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { DemoResult } from '../../src/cli/demo.ts';
import { type ServerProcess, startServer } from '../support/server-process.ts';
import { runCli } from '../vfio-user/client-support.ts';

let dir = '';
let server: ServerProcess | undefined;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'cli-json-'));
  server = await startServer(['--device', 'register-file', '--quiet']);
});

after(async () => {
  await server?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/**
 * `demo --json` with `args`: checks the exit code (stderr in the message), then parses stdout as the one
 * result object. A generous safety net: four processes and a migration on a machine that may be saturated.
 */
async function demoJson(args: string[], code: number) {
  const r = await runCli(['demo', '--json', ...args], 600_000);
  assert.equal(r.code, code, r.err);
  return { result: JSON.parse(r.out) as DemoResult, err: r.err };
}

test('demo --json: one result object on stdout, the story on stderr, exit 0 when verified', async () => {
  const { result, err } = await demoJson(
    ['--mem', '32M', '--device-mem', '4M', '--device-rate', '200', '--dirty-rate', '500'],
    0,
  );
  assert.equal(result.verdict, 'verified');
  assert.equal(result.status, 'completed');
  assert.equal(result.ramDigestsEqual, true);
  assert.equal(result.deviceDigestsEqual, true);
  assert.equal(result.destinationRunsOn, true);
  assert.equal(result.downtimeLimitMs, 300);
  assert.ok(typeof result.downtimeMs === 'number' && result.downtimeMs >= 0);
  assert.ok(result.passes! >= 1);
  // All 32 MiB of guest RAM was accounted for, as pages sent or zero pages flagged.
  assert.equal((result.ramPages!.normal + result.ramPages!.zero) * 4096 >= 32 << 20, true);
  assert.equal(result.bytes!.total, result.bytes!.ram + result.bytes!.device);
  assert.ok(result.bytes!.device > 0, 'the device sent its state');
  assert.ok(result.throughputBytesPerSecond! > 0);
  assert.deepEqual(
    result.checks.map((c) => [c.name, c.ok]),
    [
      ['guest RAM', true],
      ['device 0000:00:05.0', true],
      ['destination', true],
    ],
  );
  assert.match(err, /status: +completed/, 'the text summary went to stderr');
});

test('demo --json with a guest and a device that write nothing: verified by its run state, not by a wait', async () => {
  const { result } = await demoJson(
    ['--mem', '32M', '--device-mem', '4M', '--device-rate', '0', '--dirty-rate', '0'],
    0,
  );
  assert.equal(result.verdict, 'verified');
  assert.equal(result.destinationRunsOn, true);
  const destination = result.checks.find((c) => c.name === 'destination');
  assert.match(destination?.detail ?? '', /write no memory at these rates, so only its run state was checked/);
});

test('demo --json that cannot converge: cancelled after --converge-within, said why, the source running, exit 1', async () => {
  // The source's device releases one byte of its state per pre-copy round (a testing control) while its
  // pending bytes count all of it (the blocks its work wrote): no pass gets within the 1 ms limit.
  const { result, err } = await demoJson(
    [
      '--mem',
      '32M',
      '--device-mem',
      '64M',
      '--x-precopy-quota',
      '1',
      '--downtime-limit',
      '1',
      '--converge-within',
      '3',
    ],
    1,
  );
  assert.equal(result.verdict, 'failed');
  assert.equal(result.status, 'cancelled');
  assert.match(result.error ?? '', /did not converge in 3 s: .*1 ms downtime limit.*the source VM runs on/);
  assert.deepEqual(
    result.checks.map((c) => [c.name, c.ok]),
    [['migration', false]],
  );
  assert.match(err, /FAILED: the migration did not converge in 3 s.*Try a larger --downtime-limit/);
});

test('probe --json: the device as one object; a failed probe is {"error"} with its errno, exit 1', async () => {
  const ok = await runCli(['probe', '--socket', server!.path, '--json']);
  assert.equal(ok.code, 0, ok.err);
  assert.equal(JSON.parse(ok.out).regions.length, 10);
  assert.equal(
    JSON.parse(ok.out).capabilities.server.x_split_messages,
    true,
    'our server reads messages in any pieces',
  );

  const absent = await runCli(['probe', '--socket', join(dir, 'absent.sock'), '--json']);
  assert.equal(absent.code, 1);
  const e = JSON.parse(absent.out) as { error: string; errno: number; code: string };
  assert.equal(e.code, 'ENOENT');
  assert.equal(e.errno, 2);
  assert.match(e.error, /no vfio-user socket at/);
  assert.match(absent.err, /^vfio-migrate probe: no vfio-user socket/);
});

test('analyze --json: an unreadable file is a JSON analysis too, exit 1', async () => {
  const empty = join(dir, 'empty.stream');
  writeFileSync(empty, new Uint8Array(0));
  const r = await runCli(['analyze', empty, '--json']);
  assert.equal(r.code, 1);
  const a = JSON.parse(r.out) as { file: string; complete: boolean; error?: { kind: string } };
  assert.equal(a.file, empty);
  assert.equal(a.complete, false);
  assert.ok(a.error, 'the analysis says what is wrong');
});

test('a usage error under --json: nothing on stdout, exit 2, as in text mode', async () => {
  for (const args of [
    ['demo', '--json', '--mem', 'lots'],
    ['probe', '--json', '--timeout', 'soon', '--socket', '/x'],
    ['analyze', '--json'],
  ]) {
    const r = await runCli(args);
    assert.equal(r.code, 2, args.join(' '));
    assert.equal(r.out, '');
    assert.match(r.err, /^error: /);
  }
});
