// FdServer and FdSocket.connect on real socket files.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { lstatSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { type NativeError, native } from '../../src/native/addon.ts';
import { FdServer, FdSocket } from '../../src/native/fd-socket.ts';
import { cleanClose, fdFlags, O_CLOEXEC, O_NONBLOCK, receive, tempDir } from './support.ts';

describe('FdServer', () => {
  test('the socket file is created 0600 even with umask 0 (mode set before bind, no chmod window)', () => {
    const { dir, cleanup } = tempDir();
    const old = process.umask(0);
    try {
      const path = join(dir, 'raw.sock');
      const fd = native().listenUnix(path, 4); // the raw call: nothing chmods after bind
      const st = lstatSync(path);
      assert.ok(st.isSocket());
      assert.equal(st.mode & 0o777, 0o600);
      native().close(fd);
    } finally {
      process.umask(old);
      cleanup();
    }
  });

  test('accepts connections and hands out FdSockets that carry fds both ways', async () => {
    const { dir, cleanup } = tempDir();
    try {
      const path = join(dir, 's.sock');
      const server = new FdServer().listen(path);
      assert.equal(server.path, path);
      assert.equal(lstatSync(path).mode & 0o777, 0o600);
      const accepted = once(server, 'connection') as Promise<[FdSocket]>;
      const client = FdSocket.connect(path);
      assert.ok(fdFlags(client.fd) & O_NONBLOCK && fdFlags(client.fd) & O_CLOEXEC);
      const [conn] = await accepted;
      assert.ok(fdFlags(conn.fd) & O_NONBLOCK && fdFlags(conn.fd) & O_CLOEXEC);

      const efd = native().eventfd(0, true);
      client.write(new Uint8Array([1, 2]), [efd]);
      const got = await receive(conn, 2);
      const theirs = got.fds[0]!.fds[0]!;
      native().eventfdWrite(theirs, 5n); // same eventfd through another fd
      assert.equal(native().eventfdRead(efd), 5n);
      native().close(theirs);
      native().close(efd);

      conn.write(new Uint8Array([3]));
      assert.deepEqual([...(await receive(client, 1)).bytes], [3]);
      const closed = cleanClose(conn);
      client.destroy();
      await closed;
      server.close();
      await once(server, 'close');
      assert.equal(lstatSync(path, { throwIfNoEntry: false }), undefined, 'close() removed the socket file');
    } finally {
      cleanup();
    }
  });

  test('a stale socket file (its server died) is replaced', async () => {
    const { dir, cleanup } = tempDir();
    try {
      const path = join(dir, 'stale.sock');
      native().close(native().listenUnix(path, 1)); // a dead server left its file behind
      assert.ok(lstatSync(path).isSocket());
      assert.throws(
        () => FdSocket.connect(path),
        (e: NativeError) => e.code === 'ECONNREFUSED',
      );
      const server = new FdServer().listen(path);
      const accepted = once(server, 'connection') as Promise<[FdSocket]>;
      const client = FdSocket.connect(path);
      const [conn] = await accepted;
      client.destroy();
      conn.destroy();
      server.close();
    } finally {
      cleanup();
    }
  });

  test('a live server or a non-socket file at the path is never removed (EADDRINUSE)', () => {
    const { dir, cleanup } = tempDir();
    try {
      const live = join(dir, 'live.sock');
      const first = new FdServer().listen(live);
      assert.throws(
        () => new FdServer().listen(live),
        (e: NativeError) => e.code === 'EADDRINUSE',
      );
      assert.ok(lstatSync(live).isSocket(), 'the live server keeps its file');
      first.close();

      const file = join(dir, 'plain');
      writeFileSync(file, 'keep me');
      assert.throws(
        () => new FdServer().listen(file),
        (e: NativeError) => e.code === 'EADDRINUSE',
      );
      assert.ok(lstatSync(file).isFile());
    } finally {
      cleanup();
    }
  });

  test('close() leaves a socket file that is no longer ours alone', () => {
    const { dir, cleanup } = tempDir();
    try {
      const path = join(dir, 'moved.sock');
      const server = new FdServer().listen(path);
      // Someone else replaced the path (a newer server, say).
      native().close(native().listenUnix(join(dir, 'other.sock'), 1));
      renameSync(join(dir, 'other.sock'), path);
      const replaced = lstatSync(path).ino;
      server.close();
      assert.equal(lstatSync(path).ino, replaced);
    } finally {
      cleanup();
    }
  });

  test('connect errors: ENOENT for no file, ENAMETOOLONG for a path that does not fit sun_path', () => {
    assert.throws(
      () => FdSocket.connect('/nonexistent/dir/x.sock'),
      (e: NativeError) => e.code === 'ENOENT',
    );
    assert.throws(
      () => FdSocket.connect(`/tmp/${'x'.repeat(200)}`),
      (e: NativeError) => e.code === 'ENAMETOOLONG',
    );
    assert.throws(
      () => FdSocket.connect('/tmp/a\0b'),
      (e: NativeError) => e.code === 'EINVAL',
    );
  });
});
