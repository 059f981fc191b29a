// `vfio-migrate conform` on our own devices (each sample device, seed flavor, mmapped and trapped data
// sections): every rule passes or is skipped for the stated reason. And the checker can fail: a device that
// breaks a rule (a fault injected into its save) is reported as failing that rule, with the command's exit
// code 1.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, test } from 'node:test';
import type { ConformReport } from '../../src/conform/report.ts';
import { conform } from '../../src/conform/run.ts';
import { type ServerProcess, startServer } from '../support/server-process.ts';

const BIN = new URL('../../bin/vfio-migrate.js', import.meta.url).pathname;

async function pair(args: string[]): Promise<[ServerProcess, ServerProcess]> {
  return Promise.all([startServer([...args, '--quiet']), startServer([...args, '--quiet'])]);
}

async function run(args: string[], bArgs = args): Promise<ConformReport> {
  const [a, b] = await Promise.all([startServer([...args, '--quiet']), startServer([...bArgs, '--quiet'])]);
  try {
    // The DMA wait is a safety net on a busy machine: the rule goes on as soon as a page changes.
    return await conform({ sockets: [a.path, b.path], dmaWaitMs: 120_000 });
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
}

function outcome(r: ConformReport, id: string): string {
  const x = r.results.find((y) => y.id === id);
  assert.ok(x, `rule ${id} reported`);
  return x.outcome;
}

describe('conform on our devices, seed flavor', () => {
  for (const section of ['mmapped', 'trapped']) {
    test(`large-memory, ${section} data section: every rule passes`, async () => {
      const r = await run([
        '--device',
        'large-memory',
        '--device-mem',
        '4M',
        '--device-fill',
        'random',
        '--data-section',
        section,
      ]);
      assert.equal(r.flavor, 'seed');
      assert.deepEqual(
        r.results.filter((x) => x.outcome !== 'pass').map((x) => `${x.id}: ${x.detail}`),
        [],
      );
      assert.equal(r.passed, 13);
    });
  }

  test('register-file: every rule passes but dirty pages, skipped because it does no DMA', async () => {
    const r = await run(['--device', 'register-file', '--data-section', 'trapped']);
    assert.equal(r.failed, 0, JSON.stringify(r.results.filter((x) => x.outcome === 'fail')));
    assert.equal(outcome(r, 'seed.dirty.reported'), 'skip');
    assert.match(r.results.find((x) => x.id === 'seed.dirty.reported')!.detail, /no DMA/);
  });
});

describe('conform finds a broken device', () => {
  test('a device whose save fails in stop-and-copy fails the save rule; the command exits 1', async () => {
    const [a, b] = await pair([
      '--device',
      'large-memory',
      '--device-mem',
      '4M',
      '--x-fault',
      'fail-data@stop-and-copy,count=0',
    ]);
    try {
      const cli = spawnSync(process.execPath, [BIN, 'conform', '--socket', a.path, '--socket', b.path, '--json'], {
        encoding: 'utf8',
        timeout: 300_000,
      });
      assert.equal(cli.status, 1, cli.stderr);
      const r = JSON.parse(cli.stdout) as ConformReport;
      assert.equal(outcome(r, 'seed.save.stop-and-copy'), 'fail');
      assert.equal(outcome(r, 'seed.resume.rechunked'), 'skip', 'nothing to resume');
      assert.equal(outcome(r, 'seed.state.table'), 'pass', 'the rules it does not break still pass');
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  });

  test('two devices of different flavors or kinds are refused up front', async () => {
    await assert.rejects(
      (async () => {
        const [a, b] = await pair(['--device', 'register-file']);
        try {
          await conform({ sockets: [a.path, b.path], flavor: 'v2' });
        } finally {
          await Promise.all([a.stop(), b.stop()]);
        }
      })(),
      /migration flavor v2 was asked for, but the device offers seed/,
    );
  });
});
