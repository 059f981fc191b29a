// The outgoing TCP transport queues several write groups at once (WRITE_WINDOW): writes issued without
// waiting still reach the peer whole and in call order, and each write resolves only once the kernel
// took its bytes, so a caller never reuses memory that is still queued.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type Socket } from 'node:net';
import { test } from 'node:test';
import { openOutgoing } from '../../../src/vmm/migration/transport.ts';

/** A listener whose first connection is handed back paused (nothing read until resumed). */
async function pausedPeer(): Promise<{ port: number; accepted: Promise<Socket>; close(): void }> {
  const server = createServer({ pauseOnConnect: true });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const accepted = once(server, 'connection').then(([s]) => s as Socket);
  const { port } = server.address() as { port: number };
  return { port, accepted, close: () => server.close() };
}

test('concurrent writes arrive whole and in call order; the last is unresolved while the peer reads nothing', async () => {
  const peer = await pausedPeer();
  const out = await openOutgoing({ kind: 'tcp', host: '127.0.0.1', port: peer.port });
  const sock = await peer.accepted;
  try {
    // 24 writes of 3 MiB + 1 byte (groups of 1 MiB and a ragged end), each of its own byte value:
    // 72 MiB is far more than the kernel's send and receive buffers hold while the peer reads nothing.
    const sizes = Array.from({ length: 24 }, (_, i) => (3 << 20) + 1 + i);
    const settled: boolean[] = sizes.map(() => false);
    const writes = sizes.map((n, i) => {
      const p = out.write([new Uint8Array(n).fill(i + 1)]);
      void p.then(() => {
        settled[i] = true;
      });
      return p;
    });
    // Let the event loop turn many times: whatever fits is taken by the kernel meanwhile.
    for (let i = 0; i < 50; i++) await new Promise((r) => setImmediate(r));
    assert.equal(settled.at(-1), false, 'the last write resolved while its bytes cannot have been taken');

    let expectWrite = 0;
    let leftInWrite = sizes[0]!;
    let total = 0;
    sock.on('data', (d: Buffer) => {
      for (let k = 0; k < d.byteLength; ) {
        const take = Math.min(leftInWrite, d.byteLength - k);
        const piece = d.subarray(k, k + take);
        assert.ok(
          piece.every((b) => b === expectWrite + 1),
          `bytes of write ${expectWrite} out of place`,
        );
        k += take;
        total += take;
        leftInWrite -= take;
        if (leftInWrite === 0) leftInWrite = sizes[++expectWrite] ?? Number.POSITIVE_INFINITY;
      }
    });
    const ended = once(sock, 'end');
    sock.resume();
    await Promise.all(writes);
    await out.end(); // resolves once both sides closed: the peer read to the end
    await ended;
    assert.equal(expectWrite, sizes.length);
    assert.equal(
      total,
      sizes.reduce((a, b) => a + b, 0),
    );
  } finally {
    out.destroy();
    sock.destroy();
    peer.close();
  }
});
