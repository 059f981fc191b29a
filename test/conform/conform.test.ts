// `vfio-migrate conform` on our own devices (each sample device, in each flavor: seed and v1 with mmapped and
// trapped data sections, v2): every rule passes or is skipped for the stated reason, the flavor picked by
// `auto` as the VMM picks it. And the checker can fail: a device that breaks a rule (a fault injected into
// its save) is reported as failing that rule, and, in v1 and v2, as entering the error state it must.
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

/** Rule id -> "outcome: detail" for every rule that did not pass. */
function notPassed(r: ConformReport): Record<string, string> {
  return Object.fromEntries(
    r.results.filter((x) => x.outcome !== 'pass').map((x) => [x.id, `${x.outcome}: ${x.detail}`]),
  );
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

for (const flavor of ['v1', 'v2'] as const) {
  describe(`conform on our devices, ${flavor} flavor`, () => {
    const sections = flavor === 'v1' ? ['mmapped', 'trapped'] : [undefined];
    for (const section of sections) {
      test(`large-memory${section ? `, ${section} data section` : ''}: every rule passes but the error state, never entered`, async () => {
        const r = await run([
          '--flavor',
          flavor,
          '--device',
          'large-memory',
          '--device-mem',
          '4M',
          '--device-fill',
          'random',
          ...(section ? ['--data-section', section] : []),
        ]);
        assert.equal(r.flavor, flavor, 'auto picks what the device offers');
        assert.deepEqual(Object.keys(notPassed(r)), [`${flavor}.error.state`], JSON.stringify(notPassed(r), null, 1));
        assert.match(notPassed(r)[`${flavor}.error.state`]!, /^skip: no device failure was seen/);
        assert.equal(r.passed, r.results.length - 1);
      });
    }

    test('register-file: every rule passes but DMA dirty tracking (it does no DMA) and the error state', async () => {
      const r = await run(['--flavor', flavor, '--device', 'register-file']);
      assert.equal(r.flavor, flavor);
      const other = notPassed(r);
      assert.deepEqual(
        Object.keys(other).sort(),
        [`${flavor}.dirty.reported`, `${flavor}.error.state`],
        JSON.stringify(other),
      );
      assert.match(other[`${flavor}.dirty.reported`]!, /^skip: the device does no DMA/);
    });
  });
}

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

  for (const [flavor, save] of [
    ['v1', 'v1.save.stop-and-copy'],
    ['v2', 'v2.save.stop-copy'],
  ] as const) {
    test(`${flavor}: a device whose save fails fails the save rule, and the error-state rule finds it in error`, async () => {
      const r = await run([
        '--flavor',
        flavor,
        '--device',
        'large-memory',
        '--device-mem',
        '4M',
        '--x-fault',
        'fail-data@stop-and-copy,count=0',
      ]);
      const other = notPassed(r);
      assert.match(other[save]!, /^fail: .*failed: EIO/);
      assert.equal(outcome(r, `${flavor}.error.state`), 'pass', other[`${flavor}.error.state`]);
      assert.equal(outcome(r, `${flavor}.resume.rechunked`), 'skip', 'nothing to resume');
      // Every other failure is the same fault met again (pre-copy ends in the same failing stop-copy).
      const expected = flavor === 'v2' ? [save, 'v2.precopy.resume'] : [save];
      assert.deepEqual(
        Object.keys(other).filter((id) => other[id]!.startsWith('fail')),
        expected,
        JSON.stringify(other, null, 1),
      );
    });
  }

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
