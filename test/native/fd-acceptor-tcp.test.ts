// A TCP listener whose descriptor is ours (native listenTcp, FdAcceptor): accepted connections arrive as
// descriptors that net.Socket wraps with public API, so a migration destination can hand a multifd
// channel's descriptor to its thread. The UNIX FdServer runs on the same acceptor (fd-server.test.ts).
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, Socket } from 'node:net';
import { test } from 'node:test';
import { Errno } from '../../src/abi/errno.ts';
import { native } from '../../src/native/addon.ts';
import { FdAcceptor } from '../../src/native/fd-acceptor.ts';
import { MigrationError } from '../../src/vmm/migration/errors.ts';
import { IncomingListener } from '../../src/vmm/migration/incoming.ts';

function acceptOne(address: string): { port: number; fd: Promise<number>; close(): void } {
  let got!: (fd: number) => void;
  const fd = new Promise<number>((r) => (got = r));
  const acceptor = new FdAcceptor(native().listenTcp(address, 0, 4), {
    connection: got,
    error: (e) => assert.fail(e),
  });
  return { port: native().localPort(acceptor.fd), fd, close: () => acceptor.close() };
}

test('an accepted descriptor is a TCP connection net.Socket can wrap: bytes both ways', async () => {
  const l = acceptOne('127.0.0.1');
  assert.ok(l.port > 0, 'port 0 picked a port');
  const client = connect(l.port, '127.0.0.1');
  try {
    const server = new Socket({ fd: await l.fd, readable: true, writable: true });
    server.write('ping');
    const [from] = (await once(client, 'data')) as [Buffer];
    assert.equal(from.toString(), 'ping');
    client.write('pong');
    const [back] = (await once(server, 'data')) as [Buffer];
    assert.equal(back.toString(), 'pong');
    server.destroy();
  } finally {
    client.destroy();
    l.close();
  }
});

test('"::" takes IPv4 clients too, as net.Server does', async (t) => {
  let l: ReturnType<typeof acceptOne>;
  try {
    l = acceptOne('::');
  } catch (e) {
    t.skip(`no IPv6 socket here: ${(e as Error).message}`);
    return;
  }
  const client = connect(l.port, '127.0.0.1');
  try {
    await once(client, 'connect');
    native().close(await l.fd);
  } finally {
    client.destroy();
    l.close();
  }
});

test('a name or garbage where a numeric address belongs is EINVAL; a port in use is EADDRINUSE', async () => {
  assert.throws(() => native().listenTcp('localhost', 0, 1), /EINVAL/);
  assert.throws(() => native().listenTcp('1.2.3.4.5', 0, 1), /EINVAL/);
  assert.throws(() => native().listenTcp('127.0.0.1', 70000, 1), RangeError);
  const l = acceptOne('127.0.0.1');
  try {
    assert.throws(() => native().listenTcp('127.0.0.1', l.port, 1), /EADDRINUSE/);
  } finally {
    l.close();
  }
  assert.throws(() => native().localPort(987654), /EBADF/);
});

test('the destination listener: the first connection is the main stream, later ones go to the channel handler as descriptors', async () => {
  const listener = await IncomingListener.listen('localhost', 0);
  const main = connect(listener.port, '127.0.0.1');
  const extra: number[] = [];
  let channelArrived!: () => void;
  const arrived = new Promise<void>((r) => (channelArrived = r));
  const chan = new Socket();
  try {
    await once(main, 'connect');
    const conn = await listener.accept((fd) => {
      extra.push(fd);
      channelArrived();
    });
    chan.connect(listener.port, '127.0.0.1');
    await arrived;
    assert.equal(extra.length, 1);
    const wrapped = new Socket({ fd: extra[0]!, readable: true, writable: true });
    chan.write('channel');
    const [c] = (await once(wrapped, 'data')) as [Buffer];
    assert.equal(c.toString(), 'channel', 'the descriptor is the channel connection');
    wrapped.destroy();
    main.write('main');
    const first = await conn.nextBytes(60_000, 'no bytes on the main stream');
    assert.equal(Buffer.from(first!).toString(), 'main');
    conn.close();
  } finally {
    main.destroy();
    chan.destroy();
    listener.close();
  }
});

test('without a channel handler, connections after the main stream are closed', async () => {
  const listener = await IncomingListener.listen('127.0.0.1', 0);
  const main = connect(listener.port, '127.0.0.1');
  let late: Socket | undefined;
  try {
    await once(main, 'connect'); // accepted in handshake order: main first
    late = connect(listener.port, '127.0.0.1');
    const conn = await listener.accept();
    await once(late, 'close');
    conn.close();
  } finally {
    main.destroy();
    late?.destroy();
    listener.close();
  }
});

test('closing the destination listener fails an accept() still waiting (ECANCELED), never leaves it hanging', async () => {
  const listener = await IncomingListener.listen('127.0.0.1', 0);
  const waiting = listener.accept();
  listener.close();
  await assert.rejects(waiting, (e: unknown) => e instanceof MigrationError && e.errno === Errno.ECANCELED);
});

test('setNotsentLowat: a peer that reads nothing takes only its window and the low-water mark, not a send buffer', async () => {
  /** Bytes a connection's accepted end takes in nonblocking writes before EAGAIN, the peer not reading. */
  const takes = async (lowat: number | null) => {
    const l = acceptOne('127.0.0.1');
    const client = connect(l.port, '127.0.0.1');
    client.pause();
    try {
      const fd = await l.fd;
      try {
        if (lowat !== null) assert.equal(native().setNotsentLowat(fd, lowat), lowat, 'read back as set');
        const chunk = new Uint8Array(4096);
        let total = 0;
        for (;;) {
          const n = native().sendmsg(fd, chunk, []);
          if (n < 0) return total;
          total += n;
        }
      } finally {
        native().close(fd);
      }
    } finally {
      client.destroy();
      l.close();
    }
  };
  const limited = await takes(16 << 10);
  const unlimited = await takes(null);
  // The peer's receive window (Linux starts it well under 1 MiB) plus at most the mark unsent.
  assert.ok(limited < 1 << 20, `${limited} bytes taken with a 16 KiB mark`);
  assert.ok(unlimited > 2 * limited, `${unlimited} bytes taken without one, ${limited} with`);
  assert.throws(() => native().setNotsentLowat(987654, 4096), /EBADF/);
  const [a, b] = native().socketpair();
  try {
    assert.throws(() => native().setNotsentLowat(a, 4096), /EOPNOTSUPP|ENOPROTOOPT/, 'not a TCP socket');
  } finally {
    native().close(a);
    native().close(b);
  }
});
