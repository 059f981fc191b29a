// The destination's main connection over real loopback TCP (IncomingListener, StreamSocket; a socketpair
// where the test needs the reader's own counters): sections
// decoded from reads that land in the decoder's buffers, whatever the pieces the source writes in; bytes
// that arrive before anyone reads; an EOF record that comes alone; the return path after it; a stalled
// link, damage, and a peer that hangs up, each failing the read with a clear error.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, Socket } from 'node:net';
import { test } from 'node:test';
import { Errno } from '../../../src/abi/errno.ts';
import { native } from '../../../src/native/addon.ts';
import { concat } from '../../../src/stream/bytes.ts';
import { type DecodedSection, StreamDecoder } from '../../../src/stream/decoder.ts';
import { StreamEncoder } from '../../../src/stream/encoder.ts';
import { StreamError } from '../../../src/stream/errors.ts';
import { encodeReturnPath, ReturnPathDecoder, ReturnPathType } from '../../../src/stream/return-path.ts';
import { MigrationError } from '../../../src/vmm/migration/errors.ts';
import { type IncomingConnection, IncomingListener } from '../../../src/vmm/migration/incoming.ts';
import { StreamSocket } from '../../../src/vmm/migration/stream-socket.ts';
import { until } from '../../support/until.ts';

const ID = { sectionId: 0, idstr: 'blob', instanceId: 0, versionId: 1 };

function payload(n: number, seed: number): Uint8Array {
  const p = new Uint8Array(n);
  for (let i = 0; i < n; i++) p[i] = (i * 31 + seed) & 0xff;
  return p;
}

/** Header, START, PARTs of these sizes, END; and the EOF record apart. */
function stream(sizes: number[]): { body: Uint8Array; eof: Uint8Array; payloads: Uint8Array[] } {
  const e = new StreamEncoder();
  const payloads = [Uint8Array.of(1), ...sizes.map((n, i) => payload(n, i)), Uint8Array.of(2)];
  const parts: Uint8Array[] = [concat(e.header()), concat(e.start(ID, [payloads[0]!]))];
  for (const p of payloads.slice(1, -1)) parts.push(concat(e.part(0, [p])));
  parts.push(concat(e.end(0, [payloads[payloads.length - 1]!])));
  return { body: concat(parts), eof: concat(e.eof()), payloads };
}

async function pair(): Promise<{ conn: IncomingConnection; peer: Socket; close(): void }> {
  const listener = await IncomingListener.listen('127.0.0.1', 0);
  const peer = connect(listener.port, '127.0.0.1');
  await once(peer, 'connect');
  const conn = await listener.accept();
  return {
    conn,
    peer,
    close: () => {
      conn.close();
      peer.destroy();
      listener.close();
    },
  };
}

const decoder = () => new StreamDecoder({ reusePayloadBuffers: true });

/** Reads sections until `count` arrived, copying each payload (the decoder reuses its buffers). */
async function readSections(conn: IncomingConnection, d: StreamDecoder, count: number): Promise<Uint8Array[]> {
  const got: Uint8Array[] = [];
  while (got.length < count) {
    const batch: DecodedSection[] | null = await conn.nextSections(d);
    assert.ok(batch, 'the connection ended early');
    for (const s of batch) got.push(s.payload.slice());
  }
  return got;
}

test('sections written in odd pieces arrive whole; an EOF record that comes alone ends the batch; GO after it', async () => {
  const p = await pair();
  try {
    const { body, eof, payloads } = stream([100, 300_000, 5, 4 << 20, 70_000]);
    // Pieces that split headers, payloads and trailers anywhere.
    for (let at = 0, k = 0; at < body.byteLength; k++) {
      const n = [7, 65_536, 1, 1_000_000, 3][k % 5]!;
      p.peer.write(body.subarray(at, at + n));
      at += n;
    }
    const d = decoder();
    assert.deepEqual(await readSections(p.conn, d, payloads.length), payloads);
    assert.equal(d.ended, false);
    // Only now the EOF record, by itself: the reader must say so though it completes no section.
    p.peer.write(eof);
    // A safety net against a reader that never reports it (a hang), not a timing: generous.
    const alone = await Promise.race([
      p.conn.nextSections(d),
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error('EOF record not reported')), 60_000).unref()),
    ]);
    assert.deepEqual(alone, []);
    assert.equal(d.ended, true);
    d.finish();
    p.peer.write(encodeReturnPath({ type: ReturnPathType.GO, text: '' }));
    const rp = new ReturnPathDecoder();
    const msgs = [...rp.push(d.takeRemainder())];
    while (msgs.length === 0) msgs.push(...rp.push((await p.conn.nextBytes(60_000, 'no GO'))!));
    assert.equal(msgs[0]!.type, ReturnPathType.GO);
  } finally {
    p.close();
  }
});

test('bytes that arrive before there is a sink are held (reading stops), then handed over in order', async () => {
  const [ours, theirs] = native().socketpair();
  const s = new StreamSocket(ours);
  const peer = new Socket({ fd: theirs, readable: true, writable: true });
  try {
    const { body, eof, payloads } = stream([2 << 20, 10, 200_000]);
    peer.end(concat([body, eof]));
    // With no sink, the first read is held and reading stops: it is there once bytesRead moves.
    await until(() => s.bytesRead > 0, 'the first bytes read');
    const d = decoder();
    let batch: DecodedSection[] = [];
    s.setSink({
      target: () => d.readTarget(),
      landed: (n) => {
        batch = d.received(n);
        return batch.length > 0 || d.ended;
      },
    });
    const got: Uint8Array[] = [];
    while (!d.ended) {
      assert.ok(await s.wait(), 'the sink had work before EOF');
      for (const x of batch) got.push(x.payload.slice());
    }
    assert.deepEqual(got, payloads);
    assert.equal(s.bytesRead, body.byteLength + eof.byteLength);
  } finally {
    s.destroy();
    peer.destroy();
  }
});

test('a link that stops bringing bytes fails the read with ETIMEDOUT; damage with the StreamError', async () => {
  const p = await pair();
  try {
    const { body } = stream([1 << 20]);
    p.peer.write(body.subarray(0, body.byteLength - 100)); // the rest never comes
    const d = decoder();
    await assert.rejects(
      (async () => {
        for (;;) await p.conn.nextSections(d, { ms: 200, what: 'no data for 200 ms: stalled link' });
      })(),
      (e: unknown) => e instanceof MigrationError && e.errno === Errno.ETIMEDOUT && /stalled link/.test(e.message),
    );
  } finally {
    p.close();
  }
  const q = await pair();
  try {
    const { body } = stream([100_000]);
    const bad = body.slice();
    bad[bad.byteLength - 5_000]! ^= 0x40;
    q.peer.write(bad);
    const d = decoder();
    await assert.rejects(
      (async () => {
        for (;;) await q.conn.nextSections(d);
      })(),
      (e: unknown) => e instanceof StreamError && e.code === 'checksum',
    );
  } finally {
    q.close();
  }
});

test('a peer that hangs up mid-stream ends the input (null), and the decoder calls it truncated', async () => {
  const p = await pair();
  try {
    const { body } = stream([300_000]);
    p.peer.end(body.subarray(0, 200_000));
    const d = decoder();
    let batch: DecodedSection[] | null = [];
    while (batch !== null) batch = await p.conn.nextSections(d);
    assert.throws(
      () => d.finish(),
      (e: unknown) => e instanceof StreamError && e.code === 'truncated',
    );
  } finally {
    p.close();
  }
});

test('after an error: what we write goes out before our FIN, and unread bytes do not reset the link', async () => {
  const p = await pair();
  try {
    const { body } = stream([1 << 20]);
    p.peer.write(body.subarray(0, 1000));
    await p.conn.nextSections(decoder(), { ms: 100, what: 'stall' }).catch(() => {});
    await p.conn.send({ type: ReturnPathType.ERROR, text: 'refused' });
    p.conn.closeAfterError!(60_000);
    p.peer.write(body.subarray(1000)); // unread by the destination: drained, not a reset
    const got: Buffer[] = [];
    p.peer.on('data', (b: Buffer) => got.push(b));
    await once(p.peer, 'end');
    const msgs = new ReturnPathDecoder().push(Buffer.concat(got));
    assert.equal(msgs[0]?.type, ReturnPathType.ERROR);
    assert.equal(msgs[0]?.text, 'refused');
  } finally {
    p.close();
  }
});
