// FdSocket over real socketpairs: ordering, fds across partial writes, hangups, truncation, no fd leaks.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { fstatSync, openSync } from 'node:fs';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { VfioError } from '../../src/errors.ts';
import { type NativeError, native } from '../../src/native/addon.ts';
import { FdSocket } from '../../src/native/fd-socket.ts';
import { netCore } from '../support/sysctl.ts';
import { cleanClose, fdsOpenedSince, openFds, pattern, receive } from './support.ts';

const MiB = 1024 * 1024;

/** A 1-page memfd holding `tag` in its first byte. */
function taggedMemfd(tag: number): number {
  const n = native();
  const fd = n.memfdCreate(`tag${tag}`, 4096);
  const ab = n.mmap(fd, 0, 4096, true);
  new Uint8Array(ab)[0] = tag;
  n.munmap(ab);
  return fd;
}

function tagOf(fd: number): number {
  const n = native();
  const ab = n.mmap(fd, 0, 4096, false);
  const tag = new Uint8Array(ab)[0]!;
  n.munmap(ab);
  return tag;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

describe('FdSocket', () => {
  test('bytes and fds cross a pair in order', async () => {
    const before = openFds();
    const [a, b] = FdSocket.pair();
    const m = taggedMemfd(0x42);
    a.write(new Uint8Array([1, 2, 3]), [m]);
    native().close(m);
    a.write(new Uint8Array([4, 5]));
    const got = await receive(b, 5);
    assert.deepEqual([...got.bytes], [1, 2, 3, 4, 5]);
    assert.equal(got.fds.length, 1);
    const fd = got.fds[0]!.fds[0]!;
    assert.equal(got.fds[0]!.chunkStart, 0);
    assert.equal(tagOf(fd), 0x42);
    native().close(fd);
    a.destroy();
    await cleanClose(b);
    assert.equal(a.fd, -1);
    assert.deepEqual(fdsOpenedSince(before), [], 'no fd left open');
  });

  test('fds survive partial and queued writes, arriving with the first byte of their own write', async () => {
    const before = openFds();
    const [a, b] = FdSocket.pair();
    b.pause(); // let the writer's queue build up
    const big1 = pattern(4 * MiB, 1);
    const hdr = pattern(16, 2);
    const big2 = pattern(2 * MiB, 3);
    a.write(big1);
    assert.ok(a.writableLength > 0, 'the socket filled: the rest of big1 is queued');
    const m1 = taggedMemfd(1);
    const m2 = taggedMemfd(2);
    a.write(hdr, [m1]);
    a.write(big2, [m2]);
    // write() queued duplicates: the caller may close its fds at once.
    native().close(m1);
    native().close(m2);
    assert.ok(a.writableLength > hdr.length + big2.length, 'hdr and big2 wait behind the rest of big1');
    const drained = once(a, 'drain');

    // Read each write's bytes separately, as a framing layer would: fds then belong to exactly one message.
    const bounds = [big1.length, big1.length + hdr.length, big1.length + hdr.length + big2.length];
    let pos = 0;
    b.readSize = () => (bounds.find((x) => x > pos) ?? Number.POSITIVE_INFINITY) - pos;
    b.on('data', (chunk) => {
      pos += chunk.length;
    });
    b.resume();
    const got = await receive(b, bounds[2]!);
    await drained;
    assert.equal(a.writableLength, 0);
    assert.deepEqual(got.bytes, concat(big1, hdr, big2));
    assert.deepEqual(
      got.fds.map((f) => [f.chunkStart, f.fds.length]),
      [
        [bounds[0], 1],
        [bounds[1], 1],
      ],
    );
    assert.equal(tagOf(got.fds[0]!.fds[0]!), 1);
    assert.equal(tagOf(got.fds[1]!.fds[0]!), 2);
    for (const f of got.fds) native().close(f.fds[0]!);
    a.destroy();
    await cleanClose(b);
    assert.deepEqual(fdsOpenedSince(before), [], 'the queued duplicates were closed once sent');
  });

  test('with unbounded reads, the chunk carrying fds still contains their first byte', async () => {
    const [a, b] = FdSocket.pair();
    b.pause();
    const big = pattern(3 * MiB, 4);
    a.write(big);
    const m = taggedMemfd(9);
    a.write(new Uint8Array([0xee]), [m]);
    native().close(m);
    b.readSize = () => 8 * MiB;
    b.resume();
    const got = await receive(b, big.length + 1);
    assert.equal(got.fds.length, 1);
    const { chunkStart, chunkLength, fds } = got.fds[0]!;
    assert.ok(chunkStart <= big.length && big.length < chunkStart + chunkLength);
    assert.equal(tagOf(fds[0]!), 9);
    native().close(fds[0]!);
    a.destroy();
    b.destroy();
  });

  test('EOF from the peer is a clean close on both ends', async () => {
    const [a, b] = FdSocket.pair();
    const closedA = cleanClose(a);
    const closedB = cleanClose(b);
    a.destroy();
    a.destroy(); // once only
    await Promise.all([closedA, closedB]);
    assert.ok(b.destroyed);
    assert.throws(
      () => a.write(new Uint8Array(1)),
      (e: Error & { code?: string }) => e.code === 'ERR_SOCKET_CLOSED',
    );
  });

  test('a peer that closes with our data unread: what it sent first is delivered, then a clean close', async () => {
    const [a, b] = FdSocket.pair();
    b.pause();
    a.write(pattern(MiB, 5)); // b never reads this
    b.write(new Uint8Array([0xb, 0x1e]));
    const got: number[] = [];
    a.on('data', (chunk) => got.push(...chunk));
    const closedA = cleanClose(a);
    await sleep(10);
    b.destroy(); // unread data in b: a sees ECONNRESET, a hangup
    await closedA;
    assert.deepEqual(got, [0xb, 0x1e]);
  });

  test('writing to a peer that has gone is a hangup (EPIPE), not an error; a paused reader closes on resume', async () => {
    const [a, b] = FdSocket.pair();
    a.pause(); // a does not notice the EOF by reading
    const closedA = cleanClose(a);
    b.write(new Uint8Array([0x99]));
    b.destroy();
    await sleep(10);
    a.write(new Uint8Array(10)); // EPIPE inside
    assert.equal(a.destroyed, false, 'paused: what the peer sent is kept for the reader');
    assert.throws(() => a.write(new Uint8Array(1)), /closed/);
    const got: number[] = [];
    a.on('data', (chunk) => got.push(...chunk));
    a.resume();
    await closedA;
    assert.deepEqual(got, [0x99]);
  });

  test('end() sends everything queued, then closes', async () => {
    const [a, b] = FdSocket.pair();
    const data = pattern(3 * MiB, 6);
    a.write(data);
    a.end();
    assert.throws(() => a.write(new Uint8Array(1)));
    const received = receive(b, data.length);
    const closed = cleanClose(b);
    assert.deepEqual((await received).bytes, data);
    await closed;
    assert.ok(a.destroyed);
  });

  test('more fds than maxFds is a protocol error (EFAULT) and leaks no fd', async () => {
    const before = openFds();
    const [a, b] = FdSocket.pair({ maxFds: 1 });
    const fds = [taggedMemfd(1), taggedMemfd(2), taggedMemfd(3)];
    const errors: Error[] = [];
    b.on('error', (e) => errors.push(e));
    const closed = new Promise<void>((resolve) => b.once('close', () => resolve()));
    a.write(new Uint8Array([1]), fds);
    for (const fd of fds) native().close(fd);
    await closed;
    assert.equal(errors.length, 1, 'one error, then close');
    const err = errors[0] as VfioError;
    assert.ok(err instanceof VfioError);
    assert.equal(err.code, 'EFAULT');
    assert.match(err.message, /truncated/);
    a.destroy();
    await sleep(5);
    assert.deepEqual(fdsOpenedSince(before), []);
  });

  test('fds that arrive with no data listener are closed, not leaked', async () => {
    const before = openFds();
    const [a, b] = FdSocket.pair();
    // Send one end of a socketpair and keep the other: EOF on ours proves the received copy was closed.
    const [keep, give] = native().socketpair();
    a.write(new Uint8Array([1]), [give]);
    native().close(give);
    let eof = false;
    for (let i = 0; i < 500 && !eof; i++) {
      eof = native().recvmsg(keep, new Uint8Array(1), 0)?.bytes === 0;
      if (!eof) await sleep(5);
    }
    assert.ok(eof, 'the fd nobody took was closed');
    native().close(keep);
    assert.equal(fdsOpenedSince(before).length, 2, 'only the two FdSocket fds');
    a.destroy();
    await cleanClose(b);
  });

  test('an fd that cannot be polled is refused, and closed since the socket owned it', () => {
    const fd = openSync('/proc/self/status', 'r'); // epoll cannot watch a regular file
    assert.throws(
      () => new FdSocket(fd),
      (e: NativeError) => e.code === 'EPERM',
    );
    assert.throws(
      () => fstatSync(fd),
      (e: NativeError) => e.code === 'EBADF',
    );
  });

  test('setSendBuffer: the kernel grants twice the request, capped at net.core.wmem_max', () => {
    const wmemMax = netCore('wmem_max');
    const [a, b] = FdSocket.pair();
    for (const ask of [64 * 1024, 4 * MiB])
      assert.equal(a.setSendBuffer(ask), 2 * Math.min(ask, wmemMax), `asked ${ask}`);
    a.destroy();
    b.destroy();
    assert.throws(
      () => a.setSendBuffer(MiB),
      (e: NativeError) => e.code === 'EBADF',
    );
  });

  test('a write of several buffers sends them in order; what does not fit is queued and follows in order', async () => {
    const [a, b] = FdSocket.pair();
    try {
      const head = pattern(24, 1);
      const body = pattern(64 * 1024, 2);
      a.write([head, body]);
      assert.equal(a.writableLength, 0, 'an idle socket takes both at once');
      b.pause(); // now fill the socket: a second message waits in the queue behind the rest of a big one
      const big = pattern(8 * MiB, 3);
      a.write(big);
      assert.ok(a.writableLength > 0, 'the socket filled');
      a.write([head, body]);
      assert.ok(a.writableLength > head.length + body.length, 'the message waits behind the rest of big');
      b.resume();
      const got = await receive(b, 2 * (head.length + body.length) + big.length);
      assert.deepEqual(got.bytes, concat(head, body, big, head, body));
    } finally {
      a.destroy();
      b.destroy();
    }
  });

  test('write validates: fds need a byte, at most 253 fds', () => {
    const [a, b] = FdSocket.pair();
    assert.throws(() => a.write(new Uint8Array(0), [0]), RangeError);
    assert.throws(() => a.write(new Uint8Array(1), new Array(254).fill(0)), RangeError);
    assert.throws(() => a.write(new Array(17).fill(new Uint8Array(1))), RangeError);
    a.write(new Uint8Array(0)); // nothing to do
    a.write([new Uint8Array(0), new Uint8Array(0)]);
    assert.equal(a.writableLength, 0);
    a.destroy();
    b.destroy();
  });
});
