// The multifd ordering rule on the destination (multifd-recv.ts), with real TCP connections and real
// channel threads: the bytes of two channels are written by hand with the packet codec so that the
// later pass's copy of a page is on the wire, complete, before the earlier pass's copy of it. Channel B
// carries its SYNC for pass 1 and then page P of pass 2; channel A carries page P of pass 1 and its SYNC,
// written only after all of B's bytes. A receiver without the rule could apply B's newer page first and
// then A's older one over it; with it, B waits at its SYNC until the flush, the flush waits for A's
// SYNC, so P ends with pass 2's contents, whatever the scheduling.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { test } from 'node:test';
import { native } from '../../../src/native/addon.ts';
import { FdAcceptor } from '../../../src/native/fd-acceptor.ts';
import {
  encodeMultifdInit,
  MULTIFD_FLAG_SYNC,
  MULTIFD_HEADER_BYTES,
  MULTIFD_PACKET_PAGES,
  writeMultifdHeader,
} from '../../../src/stream/multifd.ts';
import { GuestMemory } from '../../../src/vmm/guest/guest-memory.ts';
import { MultifdReceiver } from '../../../src/vmm/migration/multifd-recv.ts';

const PAGE = 4096;
const P = 5;

function packet(packetNum: number, pages: { offset: number; fill: number }[], sync: boolean): Buffer {
  const head = Buffer.alloc(MULTIFD_HEADER_BYTES + 8 * pages.length);
  writeMultifdHeader(
    head,
    { flags: sync ? MULTIFD_FLAG_SYNC : 0, pagesAlloc: MULTIFD_PACKET_PAGES, packetNum, ramblock: 'pc.ram' },
    pages.map((p) => p.offset),
    [],
  );
  return Buffer.concat([head, ...pages.map((p) => Buffer.alloc(PAGE, p.fill))]);
}

/** A TCP listener handing each connection's descriptor to the receiver, as the destination's listener does. */
function channelListener(receiver: MultifdReceiver): { port: number; close(): void } {
  const acceptor = new FdAcceptor(native().listenTcp('127.0.0.1', 0, 8), {
    connection: (fd) => receiver.adopt(fd),
    error: (e) => assert.fail(e),
  });
  return { port: native().localPort(acceptor.fd), close: () => acceptor.close() };
}

async function write(s: Socket, b: Buffer): Promise<void> {
  await new Promise<void>((resolve, reject) => s.write(b, (err) => (err ? reject(err) : resolve())));
}

test('a page of pass 2 on one channel never lands before the same page of pass 1 on another', async () => {
  const memory = GuestMemory.create(64 * PAGE);
  const receiver = new MultifdReceiver({
    memory,
    channels: 2,
    uuid: null,
    maps: {
      received: new Uint8Array(new SharedArrayBuffer(64)),
      written: new Uint8Array(new SharedArrayBuffer(64)),
      fresh: true,
    },
    stallTimeoutMs: 60_000,
  });
  const server = channelListener(receiver);
  const a = connect(server.port, '127.0.0.1');
  const b = connect(server.port, '127.0.0.1');
  try {
    await Promise.all([once(a, 'connect'), once(b, 'connect')]);
    const uuid = new Uint8Array(16);
    // Pass 1: packet 0 = A's page P (0x11), packet 1 = A's SYNC, packet 2 = B's SYNC.
    // Pass 2: packet 3 = B's page P (0x22), then both SYNCs (4 on A, 5 on B).
    await write(b, Buffer.concat([encodeMultifdInit({ uuid, id: 1 }), packet(2, [], true)]));
    await write(b, Buffer.concat([packet(3, [{ offset: P * PAGE, fill: 0x22 }], false), packet(5, [], true)]));
    await write(
      a,
      Buffer.concat([
        encodeMultifdInit({ uuid, id: 0 }),
        packet(0, [{ offset: P * PAGE, fill: 0x11 }], false),
        packet(1, [], true),
        packet(4, [], true),
      ]),
    );
    await receiver.flush(); // the main stream's MULTIFD_FLUSH after pass 1
    await receiver.flush(); // and after pass 2
    await receiver.finish();
    assert.equal(memory.page(P)[0], 0x22, 'page P holds pass 2');
    assert.ok(memory.page(P).every((x) => x === 0x22));
  } finally {
    a.destroy();
    b.destroy();
    server.close();
    await receiver.close();
    memory.close();
  }
});

// The channel is held at its SYNC when the flush fails: closing must let it go (close() resolves only once
// every channel's life has ended; the timeout turns a channel left waiting into a failure, not a hang).
test('a flush that finds packets missing is refused (pages expected = pages received)', {
  timeout: 60_000,
}, async () => {
  const memory = GuestMemory.create(16 * PAGE);
  const receiver = new MultifdReceiver({
    memory,
    channels: 1,
    uuid: null,
    maps: {
      received: new Uint8Array(new SharedArrayBuffer(16)),
      written: new Uint8Array(new SharedArrayBuffer(16)),
      fresh: true,
    },
    stallTimeoutMs: 60_000,
  });
  const server = channelListener(receiver);
  const c = connect(server.port, '127.0.0.1');
  try {
    await once(c, 'connect');
    // Packets 0 and 1 never came: the SYNC is numbered 2.
    await write(c, Buffer.concat([encodeMultifdInit({ uuid: new Uint8Array(16), id: 0 }), packet(2, [], true)]));
    await assert.rejects(receiver.flush(), /1 packets received by flush 1, the source sent 3/);
  } finally {
    c.destroy();
    server.close();
    await receiver.close();
    memory.close();
  }
});

/** A receiver of one channel over a small guest, and a connection to it. */
async function oneChannel(pages: number) {
  const memory = GuestMemory.create(pages * PAGE);
  const receiver = new MultifdReceiver({
    memory,
    channels: 1,
    uuid: null,
    maps: {
      received: new Uint8Array(new SharedArrayBuffer(pages)),
      written: new Uint8Array(new SharedArrayBuffer(pages)),
      fresh: false,
    },
    stallTimeoutMs: 60_000,
  });
  const server = channelListener(receiver);
  const c = connect(server.port, '127.0.0.1');
  await once(c, 'connect');
  await write(c, Buffer.from(encodeMultifdInit({ uuid: new Uint8Array(16), id: 0 })));
  return {
    memory,
    receiver,
    c,
    async close() {
      c.destroy();
      server.close();
      await receiver.close();
      memory.close();
    },
  };
}

test('a packet with an offset outside guest RAM fails the load and writes none of its pages', async () => {
  const r = await oneChannel(16);
  try {
    // Page 3 is in range, the offset after it one page past the end: the packet is refused whole.
    await write(
      r.c,
      packet(
        0,
        [
          { offset: 3 * PAGE, fill: 0x33 },
          { offset: 16 * PAGE, fill: 0x44 },
        ],
        true,
      ),
    );
    await assert.rejects(r.receiver.flush(), /page offset 0x10000 is not a page of "pc.ram" \(65536 bytes\)/);
    assert.ok(
      r.memory.page(3).every((x) => x === 0),
      'page 3 untouched',
    );
  } finally {
    await r.close();
  }
});

test('a header counting more pages than a packet holds fails the load with the codec reason', async () => {
  const r = await oneChannel(16);
  try {
    const p = packet(0, [{ offset: 0, fill: 0x55 }], true);
    p.writeUInt32BE(MULTIFD_PACKET_PAGES + 1, 16); // normal_pages
    await write(r.c, p);
    await assert.rejects(r.receiver.flush(), /packet carries 129 normal and 0 zero pages, more than its 128/);
    assert.ok(
      r.memory.page(0).every((x) => x === 0),
      'nothing written',
    );
  } finally {
    await r.close();
  }
});
