// Raw sendmsg/recvmsg with SCM_RIGHTS on a real socketpair.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { type NativeError, native } from '../../src/native/addon.ts';
import { fdFlags, fdsOpenedSince, O_CLOEXEC, O_NONBLOCK, openFds } from './support.ts';

const PAGE = 4096;

function withPair(fn: (a: number, b: number) => void): void {
  const [a, b] = native().socketpair();
  try {
    fn(a, b);
  } finally {
    native().close(a);
    native().close(b);
  }
}

describe('sendmsg/recvmsg with SCM_RIGHTS', () => {
  test('socketpair fds are nonblocking and close-on-exec', () => {
    withPair((a, b) => {
      for (const fd of [a, b]) {
        assert.ok(fdFlags(fd) & O_NONBLOCK);
        assert.ok(fdFlags(fd) & O_CLOEXEC);
      }
    });
  });

  test('a memfd sent with bytes arrives as a new close-on-exec fd for the same memory', () => {
    const n = native();
    withPair((a, b) => {
      const memfd = n.memfdCreate('passed', PAGE);
      const mine = new Uint8Array(n.mmap(memfd, 0, PAGE, true));
      assert.equal(n.sendmsg(a, new Uint8Array([1, 2, 3]), [memfd]), 3);
      const buf = new Uint8Array(16);
      const r = n.recvmsg(b, buf, 4);
      assert.ok(r);
      assert.equal(r.bytes, 3);
      assert.deepEqual([...buf.subarray(0, 3)], [1, 2, 3]);
      assert.equal(r.truncated, false);
      assert.equal(r.fds.length, 1);
      const got = r.fds[0]!;
      assert.notEqual(got, memfd);
      assert.ok(fdFlags(got) & O_CLOEXEC, 'MSG_CMSG_CLOEXEC');
      const theirs = new Uint8Array(n.mmap(got, 0, PAGE, true));
      theirs[100] = 42;
      assert.equal(mine[100], 42);
      n.munmap(theirs.buffer as ArrayBuffer);
      n.munmap(mine.buffer as ArrayBuffer);
      n.close(got);
      n.close(memfd);
    });
  });

  test('EAGAIN is null from recvmsg and -1 from sendmsg; EOF is 0 bytes', () => {
    const n = native();
    const [a, b] = n.socketpair();
    const buf = new Uint8Array(64 * 1024);
    assert.equal(n.recvmsg(b, buf, 0), null);
    let sent = 0;
    for (;;) {
      const k = n.sendmsg(a, buf, []);
      if (k === -1) break;
      sent += k;
    }
    assert.ok(sent > 0, 'filled the socket');
    let drained = 0;
    for (let r = n.recvmsg(b, buf, 0); r !== null; r = n.recvmsg(b, buf, 0)) drained += r.bytes;
    assert.equal(drained, sent);
    n.close(a);
    assert.deepEqual(n.recvmsg(b, buf, 0), { bytes: 0, fds: [], truncated: false });
    assert.throws(
      () => n.sendmsg(b, buf.subarray(0, 1), []),
      (e: NativeError) => e.code === 'EPIPE',
    );
    n.close(b);
  });

  test('more fds than maxFds: reported as truncated, and every fd that arrived is closed', () => {
    const n = native();
    withPair((a, b) => {
      const sent = [n.memfdCreate('t0', 1), n.memfdCreate('t1', 1), n.memfdCreate('t2', 1)];
      const before = openFds();
      for (const maxFds of [0, 1, 2]) {
        assert.equal(n.sendmsg(a, new Uint8Array([maxFds]), sent), 1);
        const buf = new Uint8Array(8);
        const r = n.recvmsg(b, buf, maxFds);
        assert.ok(r);
        assert.equal(r.truncated, true, `maxFds ${maxFds}`);
        assert.deepEqual(r.fds, []);
        assert.equal(r.bytes, 1, 'the data byte still arrives');
        assert.equal(buf[0], maxFds);
        assert.deepEqual(fdsOpenedSince(before), [], `no fd leaked with maxFds ${maxFds}`);
      }
      // Exactly maxFds fits.
      n.sendmsg(a, new Uint8Array([9]), sent);
      const r = n.recvmsg(b, new Uint8Array(8), 3);
      assert.ok(r && !r.truncated && r.fds.length === 3);
      for (const fd of r.fds) n.close(fd);
      for (const fd of sent) n.close(fd);
    });
  });

  test('fds need a data byte, and at most 253 fit in one message', () => {
    const n = native();
    withPair((a) => {
      assert.throws(
        () => n.sendmsg(a, new Uint8Array(0), [a]),
        (e: NativeError) => e.code === 'EINVAL',
      );
      assert.throws(() => n.sendmsg(a, new Uint8Array(1), new Array(254).fill(a)), RangeError);
      assert.throws(() => n.recvmsg(a, new Uint8Array(1), 254), RangeError);
      assert.throws(() => n.recvmsg(a, new Uint8Array(0), 1), RangeError);
    });
  });

  test('fds ride on the first byte: a partial send delivers them with the bytes it sent', () => {
    const n = native();
    withPair((a, b) => {
      const memfd = n.memfdCreate('partial', 1);
      const big = new Uint8Array(4 * 1024 * 1024).fill(7);
      const first = n.sendmsg(a, big, [memfd]);
      assert.ok(first > 0 && first < big.length, `a partial send (${first} of ${big.length})`);
      const buf = new Uint8Array(big.length);
      const r = n.recvmsg(b, buf, 4);
      assert.ok(r);
      assert.equal(r.fds.length, 1, 'the fd comes with the first read');
      n.close(r.fds[0]!);
      n.close(memfd);
    });
  });
  test('several buffers go as one sendmsg, in order, fds with the first byte; at most 16', () => {
    const n = native();
    withPair((a, b) => {
      const memfd = n.memfdCreate('with-parts', PAGE);
      const parts = [Uint8Array.of(1, 2), new Uint8Array(0), Uint8Array.of(3), Uint8Array.of(4, 5, 6)];
      assert.equal(n.sendmsg(a, parts, [memfd]), 6);
      n.close(memfd);
      const buf = new Uint8Array(16);
      const r = n.recvmsg(b, buf, 4);
      assert.equal(r?.bytes, 6, 'one recvmsg reads every part');
      assert.deepEqual([...buf.subarray(0, 6)], [1, 2, 3, 4, 5, 6]);
      assert.equal(r?.fds.length, 1);
      for (const fd of r?.fds ?? []) n.close(fd);
      assert.throws(() => n.sendmsg(a, new Array(17).fill(Uint8Array.of(1)), []), RangeError);
      assert.throws(() => n.sendmsg(a, [Uint8Array.of(1), 'x' as unknown as Uint8Array], []), TypeError);
    });
  });
});
