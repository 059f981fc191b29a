// The blocking channel calls a multifd channel thread makes (native/src/chanio.c), on real TCP
// connections: every byte of many parts moves in order across socket-buffer-sized partial calls; a read
// that meets EOF says how much it got; a stalled peer is ETIMEDOUT and the abort eventfd ECANCELED, also
// for a thread already asleep in the call; and a process exiting with such a thread asleep still ends.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { type NativeError, native } from '../../src/native/addon.ts';
import { tsWorker } from '../vmm/support.ts';

const workerFixture = new URL('./fixtures/chanio-worker.ts', import.meta.url);
const exitFixture = fileURLToPath(new URL('./fixtures/chanio-exit.ts', import.meta.url));

/** A connected TCP pair on loopback: [the connecting side (tcpSocket + connectTcp), the accepted side]. */
function tcpPair(): [number, number] {
  const n = native();
  const listener = n.listenTcp('127.0.0.1', 0, 1);
  try {
    const fd = n.tcpSocket('127.0.0.1');
    n.connectTcp(fd, '127.0.0.1', n.localPort(listener), -1, 10_000);
    let peer = -1;
    while (peer < 0) peer = n.accept(listener); // the connection is queued once connect returned
    return [fd, peer];
  } finally {
    n.close(listener);
  }
}

function thrown(fn: () => unknown): NativeError {
  try {
    fn();
  } catch (err) {
    return err as NativeError;
  }
  assert.fail('expected a throw');
}

describe('channel I/O', () => {
  test('writevAll moves every byte of 3000 parts (empty ones too) in order to a reader on another thread', async () => {
    const n = native();
    const [a, b] = tcpPair();
    // 3000 parts: across the 1024 iovecs of one call; 48 MiB in all: far beyond the socket buffers, so
    // writes go short and wait for the reader.
    const sizes = Array.from({ length: 3000 }, (_, i) => (i % 7 === 3 ? 0 : ((i * 7919) % 32768) + 1));
    const parts = sizes.map((s, i) => new Uint8Array(s).map((_, j) => (i * 31 + j) & 0xff));
    const total = sizes.reduce((x, y) => x + y, 0);
    // The reader asks for the same bytes cut differently: 1 MiB parts.
    const readSizes: number[] = [];
    for (let left = total; left > 0; left -= 1 << 20) readSizes.push(Math.min(left, 1 << 20));
    const w = tsWorker(workerFixture, { fd: b, abortFd: -1, mode: 'read', sizes: readSizes });
    try {
      assert.equal(n.writevAll(a, parts, -1, 60_000), total);
      const [r] = (await once(w, 'message')) as [{ got: number; data: Uint8Array; reads: number }];
      assert.equal(r.got, total);
      assert.ok(r.reads >= 1, 'progress counted the reads');
      assert.deepEqual(Buffer.from(r.data), Buffer.concat(parts));
    } finally {
      await w.terminate();
      n.close(a);
      n.close(b);
    }
  });

  test('readvAll stops at EOF and returns what arrived; discardUntilEof sees the close', () => {
    const n = native();
    const [a, b] = tcpPair();
    try {
      n.writevAll(a, [new Uint8Array([1, 2, 3]), new Uint8Array([4, 5])], -1, -1);
      n.shutdown(a, 1);
      const first = new Uint8Array(2);
      const rest = new Uint8Array(10);
      assert.equal(n.readvAll(b, [first, rest], -1, -1, null), 5);
      assert.deepEqual([...first, ...rest.subarray(0, 3)], [1, 2, 3, 4, 5]);
      assert.equal(n.readvAll(b, [rest], -1, -1, null), 0, 'nothing more: 0 bytes');
      // The other way: b ends its side, a drains to the EOF.
      n.writevAll(b, [new Uint8Array(100_000)], -1, -1);
      n.shutdown(b, 1);
      assert.equal(n.discardUntilEof(a, -1, 60_000), true);
    } finally {
      n.close(a);
      n.close(b);
    }
  });

  test('a peer that never reads: writevAll fails ETIMEDOUT once no byte moved for stallMs', () => {
    const n = native();
    const [a, b] = tcpPair();
    try {
      // Nobody reads b: once its receive window and a's send buffer are full, nothing moves again.
      const e = thrown(() => n.writevAll(a, [new Uint8Array(256 << 20)], -1, 100));
      assert.equal(e.code, 'ETIMEDOUT');
      assert.equal(e.syscall, 'poll');
      assert.equal(n.discardUntilEof(a, -1, 50), false, 'no EOF from a peer that stays open');
    } finally {
      n.close(a);
      n.close(b);
    }
  });

  test('the abort eventfd: ECANCELED at once, for a call made after it and for a thread asleep in one', async () => {
    const n = native();
    const [a, b] = tcpPair();
    const abort = n.eventfd(0, true);
    try {
      const w = tsWorker(workerFixture, { fd: b, abortFd: abort, mode: 'block' });
      const [m] = await once(w, 'message');
      assert.equal(m, 'blocking');
      n.eventfdWrite(abort, 1);
      const [r] = (await once(w, 'message')) as [{ code: string }];
      assert.equal(r.code, 'ECANCELED');
      await w.terminate();
      // Sticky: every later call fails the same way, reads and writes, even one that would not block.
      assert.equal(thrown(() => n.readvAll(b, [new Uint8Array(1)], abort, -1, null)).code, 'ECANCELED');
      assert.equal(thrown(() => n.writevAll(a, [new Uint8Array(64 << 20)], abort, -1)).code, 'ECANCELED');
      assert.equal(thrown(() => n.discardUntilEof(b, abort, 60_000)).code, 'ECANCELED');
    } finally {
      n.close(a);
      n.close(b);
      n.close(abort);
    }
  });

  test('connectTcp: a port nobody listens on is ECONNREFUSED; a bad address is EINVAL', () => {
    const n = native();
    const listener = n.listenTcp('127.0.0.1', 0, 1);
    const port = n.localPort(listener);
    n.close(listener); // the port is free now: a connect is refused
    const fd = n.tcpSocket('127.0.0.1');
    try {
      assert.equal(thrown(() => n.connectTcp(fd, '127.0.0.1', port, -1, 10_000)).code, 'ECONNREFUSED');
      assert.equal(thrown(() => n.connectTcp(fd, 'localhost', port, -1, 10_000)).code, 'EINVAL');
      assert.equal(thrown(() => n.tcpSocket('not an address')).code, 'EINVAL');
    } finally {
      n.close(fd);
    }
  });

  test('a process exiting while a channel thread sleeps in readvAll ends (ChannelFds wakes it at exit)', () => {
    // The timeout is a safety net: without the wake-up the exit waits for the thread forever.
    const r = spawnSync(process.execPath, ['--import', 'tsx', exitFixture], { timeout: 60_000, encoding: 'utf8' });
    assert.equal(r.signal, null, `killed at the safety net: the process did not end\n${r.stdout}${r.stderr}`);
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /blocked in poll; exiting/);
  });
});
