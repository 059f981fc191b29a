// eventfd and the Poller (uv_poll on the event loop).
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { type NativeError, native } from '../../src/native/addon.ts';
import { until } from '../support/until.ts';
import { fdFlags, O_CLOEXEC, O_NONBLOCK } from './support.ts';

const fixture = fileURLToPath(new URL('./fixtures/poller-exit.ts', import.meta.url));

/**
 * Runs the poller-exit fixture in a fresh process; returns how it ended. The timeout is a safety net
 * (a process that exits by itself has a status; one killed at the timeout has a signal instead).
 */
function runFixture(mode: string, timeout = 60_000) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', fixture, mode], { timeout, encoding: 'utf8' });
  return { status: r.status, signal: r.signal, out: r.stdout + r.stderr };
}

describe('eventfd', () => {
  test('round trip: writes add up, a read returns the sum and resets, an empty nonblocking read is null', () => {
    const n = native();
    const fd = n.eventfd(2, true);
    try {
      assert.ok(fdFlags(fd) & O_CLOEXEC);
      assert.ok(fdFlags(fd) & O_NONBLOCK);
      n.eventfdWrite(fd, 5n);
      n.eventfdWrite(fd, 2n ** 40n);
      assert.equal(n.eventfdRead(fd), 2n + 5n + 2n ** 40n);
      assert.equal(n.eventfdRead(fd), null);
      n.eventfdWrite(fd, 1);
      assert.equal(n.eventfdRead(fd), 1n);
    } finally {
      n.close(fd);
    }
  });

  test('counter overflow on a nonblocking eventfd is EAGAIN; 2^64-1 is EINVAL', () => {
    const n = native();
    const fd = n.eventfd(0, true);
    try {
      n.eventfdWrite(fd, 2n ** 64n - 2n);
      assert.throws(
        () => n.eventfdWrite(fd, 1n),
        (e: NativeError) => e.code === 'EAGAIN' && e.errno === 11,
      );
      assert.throws(
        () => n.eventfdWrite(fd, 2n ** 64n - 1n),
        (e: NativeError) => e.code === 'EINVAL',
      );
      assert.throws(() => n.eventfdWrite(fd, 2n ** 64n), RangeError);
      assert.throws(() => n.eventfdWrite(fd, -1n), RangeError);
    } finally {
      n.close(fd);
    }
  });
});

describe('Poller', () => {
  test('reports an eventfd readable from the event loop, and close() inside the callback is safe', async () => {
    const n = native();
    const fd = n.eventfd(0, true);
    const seen: [number, boolean, boolean][] = [];
    let poller: InstanceType<typeof n.Poller> | undefined;
    const done = new Promise<void>((resolve) => {
      poller = new n.Poller(fd, (err, readable, writable) => {
        seen.push([err, readable, writable]);
        assert.equal(n.eventfdRead(fd), 3n);
        poller!.close();
        poller!.close(); // idempotent
        resolve();
      });
    });
    poller!.start(true, false);
    n.eventfdWrite(fd, 3n);
    await done;
    assert.deepEqual(seen, [[0, true, false]]);
    assert.throws(
      () => poller!.start(true, false),
      (e: NativeError) => e.code === 'ERR_POLLER_CLOSED',
    );
    poller!.stop(); // harmless after close
    n.close(fd);
  });

  test('start(false, false) and stop() stop callbacks; start again resumes', async () => {
    const n = native();
    const fd = n.eventfd(1, true);
    let calls = 0;
    const p = new n.Poller(fd, () => {
      calls++;
    });
    p.start(true, false);
    await until(() => calls > 0, 'level-triggered: readable while the counter is nonzero');
    p.stop();
    const atStop = calls;
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(calls, atStop);
    p.start(false, true);
    await until(() => calls > atStop, 'an eventfd is writable');
    p.start(false, false);
    const atStop2 = calls;
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(calls, atStop2);
    p.close();
    n.close(fd);
  });

  test('an exception thrown by the callback is an uncaughtException, as for any Node callback', () => {
    const r = runFixture('throw');
    assert.notEqual(r.status, 0);
    assert.match(r.out, /boom from the poller callback/);
  });

  test('a stopped Poller does not keep the process alive', () => {
    const r = runFixture('stopped');
    assert.equal(r.status, 0, r.out);
    assert.match(r.out, /fired once/);
  });

  test('a started Poller keeps the process alive until unref()', async () => {
    // Once the fixture says its script is done, only the Poller holds the loop: it must still be alive
    // a while later (a loaded machine can only make this check weaker, never make it fail wrongly).
    const child = spawn(process.execPath, ['--import', 'tsx', fixture, 'started'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let exited: number | null | undefined;
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.on('exit', (code) => {
      exited = code;
    });
    try {
      await until(() => out.includes('poller started') || exited !== undefined, 'the fixture to start');
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(exited, undefined, `should still be running: ${out}`);
    } finally {
      child.kill('SIGTERM');
    }
    const unrefd = runFixture('unref');
    assert.equal(unrefd.status, 0, unrefd.out);
  });
});
