// A multifd channel's native thread (native/src/chanthread.c through multifd-channel.ts), on real TCP
// connections: every byte of many parts moves in order across socket-buffer-sized partial calls; a read
// that meets EOF says how much it got; a stalled peer is ETIMEDOUT and the abort eventfd ECANCELED, also
// for a thread already asleep in a call; a refused connect is ECONNREFUSED; guest RAM stays mapped for a
// channel whose owner unmapped it; a worker ending with a thread asleep still ends; and the I/O mode is
// set once, before the first operation.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { type ChannelThread, type NativeError, native } from '../../../src/native/addon.ts';
import {
  MULTIFD_FLAG_SYNC,
  MULTIFD_HEADER_BYTES,
  MULTIFD_PACKET_PAGES,
  writeMultifdHeader,
} from '../../../src/stream/multifd.ts';
import { GuestMemory } from '../../../src/vmm/guest/guest-memory.ts';
import { MultifdChannel } from '../../../src/vmm/migration/multifd-channel.ts';
import { tsWorker } from '../support.ts';

const workerFixture = new URL('./fixtures/channel-in-worker.ts', import.meta.url);

/** A connected TCP pair on loopback, each end a channel: [the connecting side, the accepted side]. */
async function channelPair(
  memory: GuestMemory,
  o: { stallMs?: number; progress?: Int32Array; peerMemory?: GuestMemory } = {},
): Promise<[MultifdChannel, MultifdChannel]> {
  const n = native();
  const listener = n.listenTcp('127.0.0.1', 0, 1);
  try {
    const a = new MultifdChannel({ socketFd: n.tcpSocket('127.0.0.1'), memory, stallMs: o.stallMs ?? -1 });
    await a.connect('127.0.0.1', n.localPort(listener), 10_000);
    let peer = -1;
    while (peer < 0) peer = n.accept(listener); // the connection is queued once connect returned
    const b = new MultifdChannel({
      socketFd: peer,
      memory: o.peerMemory ?? memory,
      stallMs: o.stallMs ?? -1,
      progress: o.progress,
    });
    return [a, b];
  } finally {
    n.close(listener);
  }
}

async function rejected(p: Promise<unknown>): Promise<NativeError> {
  try {
    await p;
  } catch (err) {
    return err as NativeError;
  }
  assert.fail('expected a rejection');
}

test('writev moves every byte of 3000 parts (empty ones too) in order to a reader thread; progress counts its reads', async () => {
  const memory = GuestMemory.create(1 << 16);
  const progress = new Int32Array(new SharedArrayBuffer(4));
  const [a, b] = await channelPair(memory, { progress });
  try {
    // 3000 parts: across the 1024 iovecs of one call; 48 MiB in all: far beyond the socket buffers, so
    // writes go short and wait for the reader.
    const sizes = Array.from({ length: 3000 }, (_, i) => (i % 7 === 3 ? 0 : ((i * 7919) % 32768) + 1));
    const parts = sizes.map((s, i) => new Uint8Array(s).map((_, j) => (i * 31 + j) & 0xff));
    const total = sizes.reduce((x, y) => x + y, 0);
    // The reader asks for the same bytes cut differently: 1 MiB parts.
    const into: Uint8Array[] = [];
    for (let left = total; left > 0; left -= 1 << 20) into.push(new Uint8Array(Math.min(left, 1 << 20)));
    const [wrote, read] = await Promise.all([a.writev(parts), b.readv(into)]);
    assert.equal(wrote, total);
    assert.equal(read, total);
    assert.ok(Atomics.load(progress, 0) >= 1, 'progress counted the reads');
    assert.deepEqual(Buffer.concat(into), Buffer.concat(parts));
  } finally {
    await Promise.all([a.close(), b.close()]);
    memory.close();
  }
});

test('readv stops at EOF and says what arrived; discard sees the close', async () => {
  const memory = GuestMemory.create(1 << 16);
  const [a, b] = await channelPair(memory);
  try {
    await a.writev([new Uint8Array([1, 2, 3]), new Uint8Array([4, 5])]);
    await a.shutdown(1);
    const first = new Uint8Array(2);
    const rest = new Uint8Array(10);
    assert.equal(await b.readv([first, rest]), 5);
    assert.deepEqual([...first, ...rest.subarray(0, 3)], [1, 2, 3, 4, 5]);
    assert.equal(await b.readv([rest]), 0, 'nothing more: 0 bytes');
    // The other way: b ends its side, a drains to the EOF.
    await b.writev([new Uint8Array(100_000)]);
    await b.shutdown(1);
    assert.equal(await a.discard(60_000, true), 1);
  } finally {
    await Promise.all([a.close(), b.close()]);
    memory.close();
  }
});

test('a peer that never reads: writev fails ETIMEDOUT once no byte moved for stallMs', async () => {
  const memory = GuestMemory.create(1 << 16);
  const [a, b] = await channelPair(memory, { stallMs: 100 });
  try {
    // Nobody reads b: once its receive window and a's send buffer are full, nothing moves again.
    const e = await rejected(a.writev([new Uint8Array(256 << 20)]));
    assert.equal(e.code, 'ETIMEDOUT');
    assert.equal(e.syscall, 'poll');
    assert.match(e.message, /^poll: Connection timed out \(ETIMEDOUT\)$/);
    assert.equal(await a.discard(50, true), 0, 'no EOF from a peer that stays open');
  } finally {
    await Promise.all([a.close(), b.close()]);
    memory.close();
  }
});

test('abort: ECANCELED for a thread asleep in a call and for every call after it, but a discard told to ignore it', async () => {
  const memory = GuestMemory.create(1 << 16);
  const [a, b] = await channelPair(memory);
  try {
    const asleep = b.readv([new Uint8Array(1)]); // a never writes
    await blockedInPoll();
    b.abort();
    assert.equal((await rejected(asleep)).code, 'ECANCELED');
    // Sticky: later calls fail the same way, reads and writes, even one that would not block.
    assert.equal((await rejected(b.readv([new Uint8Array(1)]))).code, 'ECANCELED');
    assert.equal((await rejected(b.writev([new Uint8Array(64 << 20)]))).code, 'ECANCELED');
    assert.equal((await rejected(b.discard(60_000, true))).code, 'ECANCELED');
    await a.shutdown(1);
    assert.equal(await b.discard(60_000, false), 1, 'a drain after the abort still reads to the EOF');
  } finally {
    await Promise.all([a.close(), b.close()]);
    memory.close();
  }
});

test('the I/O mode is set before the first operation only, to one of the three', async () => {
  const memory = GuestMemory.create(1 << 16);
  const n = native();
  const fd = n.tcpSocket('127.0.0.1');
  const ch = new MultifdChannel({ socketFd: fd, memory, stallMs: -1, io: 'direct' });
  const thread = (ch as unknown as { thread: ChannelThread }).thread;
  try {
    assert.throws(() => thread.setIoMode(3 as 2), RangeError);
    thread.setIoMode(1); // still before any operation
    await ch.shutdown(2).catch(() => {}); // an unconnected socket: the outcome does not matter here
    assert.throws(() => thread.setIoMode(2), /after an operation was queued/);
    assert.deepEqual(ch.ioCounts, { staged: 0, direct: 0 });
  } finally {
    await ch.close();
    memory.close();
  }
});

test('connect: a port nobody listens on is ECONNREFUSED; a bad address is EINVAL at once', async () => {
  const n = native();
  const memory = GuestMemory.create(1 << 16);
  const listener = n.listenTcp('127.0.0.1', 0, 1);
  const port = n.localPort(listener);
  n.close(listener); // the port is free now: a connect is refused
  const c = new MultifdChannel({ socketFd: n.tcpSocket('127.0.0.1'), memory, stallMs: -1 });
  try {
    assert.equal((await rejected(c.connect('127.0.0.1', port, 10_000))).code, 'ECONNREFUSED');
    assert.throws(() => c.connect('localhost', port, 10_000), { code: 'EINVAL' });
  } finally {
    await c.close();
    memory.close();
  }
});

/** How many mappings of the memfd called name this process has (from /proc/self/maps). */
function mappingsOf(name: string): number {
  return readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((l) => l.includes(`/memfd:${name} `)).length;
}

test('a channel holds guest RAM: unmapped by its owner, it stays mapped for the thread until the channel ends', async () => {
  const PAGE = 4096;
  const src = GuestMemory.create(64 * PAGE, 'mfd-hold-src');
  const dst = GuestMemory.create(64 * PAGE, 'mfd-hold-dst');
  for (let i = 0; i < 4; i++) src.page(i).fill(i + 1);
  const [a, b] = await channelPair(src, { peerMemory: dst });
  try {
    // The VMM going away mid-migration: both owners unmap (and close the memfds) before the channels end.
    src.close();
    dst.close();
    assert.equal(mappingsOf('mfd-hold-src'), 1, 'the sending channel still holds the source');
    assert.equal(mappingsOf('mfd-hold-dst'), 1, 'the receiving channel still holds the destination');
    const head = new Uint8Array(MULTIFD_HEADER_BYTES + 4 * 8);
    const offsets = Float64Array.from([0, 1, 2, 3], (i) => i * PAGE);
    const len = writeMultifdHeader(
      head,
      { flags: MULTIFD_FLAG_SYNC, pagesAlloc: MULTIFD_PACKET_PAGES, packetNum: 0, ramblock: 'pc.ram' },
      offsets,
      [],
    );
    const [sent, packets] = await Promise.all([
      a.sendPackets(head, Uint32Array.of(len), offsets, Uint32Array.of(4)),
      b.recv(),
    ]);
    assert.equal(sent, len + 4 * PAGE);
    assert.equal(packets, 1, 'one packet, with SYNC');
  } finally {
    await Promise.all([a.close(), b.close()]);
  }
  assert.equal(mappingsOf('mfd-hold-src') + mappingsOf('mfd-hold-dst'), 0, 'let go once the channels ended');
});

test('a worker ending while its channel thread sleeps in a read ends (the env teardown wakes and joins the thread)', async () => {
  const w = tsWorker(workerFixture, null);
  const [m] = await once(w, 'message');
  assert.equal(m, 'blocking');
  // The safety net: a teardown that joins a thread nobody woke never returns.
  const ended = await Promise.race([
    w.terminate().then(() => 'ended'),
    new Promise((r) => setTimeout(r, 60_000, 'still running')).then((x) => x),
  ]);
  assert.equal(ended, 'ended');
});

/** Resolves once a thread of this process sleeps in poll(2) on two fds with no timeout (a channel call). */
async function blockedInPoll(): Promise<void> {
  const { isBlockedInPoll } = await import('./fixtures/blocked-in-poll.ts');
  while (!isBlockedInPoll()) await new Promise((r) => setTimeout(r, 5));
}
