// A request's bulk data (a MIG_DATA_WRITE's or REGION_WRITE's bytes on a destination VMM) is sent by
// reference (RequestOptions.lend): the header and the payload's head in one buffer, the data after it
// as the caller's own memory, with no message buffer and no copy. The caller reuses that memory as soon
// as the request settles, so the request may settle only when the socket no longer holds it. Here the
// message arrives whole at a real peer, and two peers that misbehave (one answers before reading the
// data, one never reads) find the request failed and the connection closed, the data dropped, instead of
// a settled request whose bytes are still queued. Nothing waits on the machine's speed: the peers never
// read what is left, so the waits end by the requests' own timeouts.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { Errno } from '../../src/abi/errno.ts';
import { Command, MessageType } from '../../src/abi/vfio-user/commands.ts';
import { decodeHeader, encodeMessage } from '../../src/abi/vfio-user/header.ts';
import { HEADER_SIZE } from '../../src/abi/vfio-user/limits.ts';
import { decodeMigDataWriteRequest } from '../../src/abi/vfio-user/mig-data.ts';
import { decodeRegionWriteRequest, encodeRegionWriteReply } from '../../src/abi/vfio-user/region-access.ts';
import { VfioError } from '../../src/errors.ts';
import { native } from '../../src/native/addon.ts';
import { FdSocket } from '../../src/native/fd-socket.ts';
import { VfioUserClient } from '../../src/vfio-user/client.ts';
import { Connection } from '../../src/vfio-user/connection.ts';
import type { ReceivedMessage } from '../../src/vfio-user/framing.ts';
import { until } from '../support/until.ts';
import { ScriptedServer } from './client-support.ts';

const MiB = 1024 * 1024;
const LIMITS = { maxMsgSize: 8 * MiB, maxFds: 8 };
const HEAD = Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8);

for (const size of [100, MiB + 3]) {
  test(`a lent request of ${size} bytes arrives as one message: the head, then the data`, async () => {
    const [a, b] = FdSocket.pair();
    const client = new Connection(a, LIMITS);
    const server = new Connection(b, LIMITS);
    const seen: ReceivedMessage[] = [];
    server.on('command', (m) => {
      seen.push(m);
      server.reply(m);
    });
    try {
      const data = randomBytes(size);
      const first = client.request(Command.MIG_DATA_WRITE, HEAD, { lend: data });
      // A plain request right behind it must not land inside the lent one's bytes.
      const second = client.request(Command.DEVICE_RESET, new Uint8Array(0));
      await Promise.all([first, second]);
      assert.equal(a.writableLength, 0, 'nothing of the lent data is still queued once the request settled');
      assert.deepEqual(
        seen.map((m) => m.header.cmd),
        [Command.MIG_DATA_WRITE, Command.DEVICE_RESET],
      );
      assert.equal(seen[0]!.header.msgSize, HEADER_SIZE + HEAD.byteLength + size);
      assert.deepEqual(seen[0]!.payload, new Uint8Array(Buffer.concat([HEAD, data])));
    } finally {
      client.close();
      server.close();
    }
  });
}

/** A client connection with the kernel's default send buffer, far below the 4 MiB it lends. */
function stuckPair(): { client: Connection; peer: number; socket: FdSocket } {
  const [fd, peer] = native().socketpair();
  const socket = new FdSocket(fd);
  return { client: new Connection(socket, { ...LIMITS, sendBuffer: 0 }), peer, socket };
}

/** The request failed with ETIMEDOUT, and the connection was closed, dropping the lent data it held. */
async function dropped(req: Promise<unknown>, p: ReturnType<typeof stuckPair>): Promise<void> {
  await assert.rejects(req, (e: unknown) => e instanceof VfioError && e.errno === Errno.ETIMEDOUT);
  assert.ok(p.client.isClosed, 'the connection was closed');
  assert.equal(p.socket.writableLength, 0, 'and the lent data dropped with it');
}

test('a peer that answers before reading the data: the request fails once its timeout passed with the data unsent, and the connection drops it', async () => {
  const p = stuckPair();
  const { client, peer, socket } = p;
  try {
    let settled = false;
    const req = client.request(Command.MIG_DATA_WRITE, HEAD, { lend: new Uint8Array(4 * MiB), timeoutMs: 300 });
    req.then(
      () => {
        settled = true;
      },
      () => {
        settled = true;
      },
    );
    // The peer reads the header alone and answers success at once, reading nothing more.
    const header = new Uint8Array(HEADER_SIZE);
    assert.equal(native().recvmsg(peer, header, 0)?.bytes, HEADER_SIZE);
    const h = decodeHeader(header, { maxMsgSize: LIMITS.maxMsgSize });
    native().sendmsg(peer, encodeMessage({ msgId: h.msgId, cmd: h.cmd, type: MessageType.REPLY }), []);
    await until(() => client.pendingRequests === 0, 'the reply to arrive');
    assert.ok(socket.writableLength > 0, 'most of the lent data is still queued');
    assert.equal(settled, false, 'a request whose lent data is still queued has not settled');
    await dropped(req, p);
  } finally {
    client.close();
    native().close(peer);
  }
});

test('a peer that never reads: the request times out and the connection drops the lent data', async () => {
  const p = stuckPair();
  try {
    await dropped(p.client.request(Command.MIG_DATA_WRITE, HEAD, { lend: new Uint8Array(4 * MiB), timeoutMs: 300 }), p);
  } finally {
    p.client.close();
    native().close(p.peer);
  }
});

test("MIG_DATA_WRITE and REGION_WRITE hand the caller's own bytes to the socket, piece by piece, and they arrive whole", async (t) => {
  const srv = new ScriptedServer({
    // A server that reads messages in any pieces (as ours), so writes go at its max_data_xfer_size.
    offer: { splitMessages: true },
    handlers: {
      [Command.MIG_DATA_WRITE]: (m, conn) => conn.reply(m),
      [Command.REGION_WRITE]: (m, conn) => {
        const r = decodeRegionWriteRequest(m.payload, { maxCount: MiB });
        conn.reply(m, encodeRegionWriteReply({ offset: r.offset, region: r.region, count: r.data.byteLength }));
      },
    },
  });
  const client = await VfioUserClient.connect(srv.path, { timeoutMs: 60_000 });
  const write = FdSocket.prototype.write;
  /** Each write's buffers (a message in parts is one write: libvfio-user reads a body with one recv). */
  const handed: Uint8Array[][] = [];
  FdSocket.prototype.write = function (
    this: FdSocket,
    data: Uint8Array | readonly Uint8Array[],
    fds?: readonly number[],
  ) {
    handed.push(data instanceof Uint8Array ? [data] : [...data]);
    return write.call(this, data, fds);
  };
  t.after(() => {
    FdSocket.prototype.write = write;
    client.close();
    srv.close();
  });
  const data = randomBytes(2 * MiB + 5);
  /** [offset in data, length, bytes before it in the same write] for each write carrying the caller's bytes. */
  const lent = () =>
    handed.flatMap((parts) =>
      parts
        .map((p, i) => ({ p, before: parts.slice(0, i).reduce((n, q) => n + q.byteLength, 0) }))
        .filter(({ p }) => p.buffer === data.buffer)
        .map(({ p, before }) => [p.byteOffset - data.byteOffset, p.byteLength, before]),
    );
  await client.migDataWrite(data);
  assert.deepEqual(
    lent(),
    [
      [0, MiB, 16 + 8],
      [MiB, MiB, 16 + 8],
      [2 * MiB, 5, 16 + 8],
    ],
    "each piece handed over as a view of the caller's memory, in one write with its message's header",
  );
  const got = srv.seenOf(Command.MIG_DATA_WRITE).map((m) => decodeMigDataWriteRequest(m.payload).data);
  assert.deepEqual(new Uint8Array(Buffer.concat(got)), new Uint8Array(data));

  handed.length = 0;
  await client.regionWrite(2, 4096n, data);
  assert.deepEqual(
    lent().map(([, n, before]) => [n, before]),
    [
      [MiB, 16 + 16],
      [MiB, 16 + 16],
      [5, 16 + 16],
    ],
    'the pieces of REGION_WRITE by reference too',
  );
  const writes = srv.seenOf(Command.REGION_WRITE).map((m) => decodeRegionWriteRequest(m.payload, { maxCount: MiB }));
  assert.deepEqual(
    writes.map((w) => [w.region, Number(w.offset)]),
    [
      [2, 4096],
      [2, 4096 + MiB],
      [2, 4096 + 2 * MiB],
    ],
  );
  assert.deepEqual(new Uint8Array(Buffer.concat(writes.map((w) => w.data))), new Uint8Array(data));
});
