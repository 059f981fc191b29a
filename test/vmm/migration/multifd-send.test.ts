// The source's multifd channels (multifd-send.ts, multifd-channel.ts) against the destination's
// (multifd-recv.ts), in one process with real channel threads and TCP: pages handed out several packets
// to an operation, normal and zero pages mixed in every proportion, partial batches at a pass end. Every
// page must arrive once per pass with its contents (zero pages zeroed over what the destination held),
// and the packet count the receiver checks at each flush must match what the sender numbered. On fresh
// memory a zero page never written is left alone: the destination then holds exactly the pages that
// ever held data. Each side's channel threads move pages staged, direct or as measured (x-multifd-io):
// the same bytes arrive whichever way each side took, and a forced way is the only one taken.
// Pages are queued as the RAM saver queues them: taken from a dirty log into a batch's lists whole words
// at a time (GuestMemory.takeDirtyPages), so a batch's last packet may be short; a full batch while every
// channel is full waits for room.
import assert from 'node:assert/strict';
import { fstatSync } from 'node:fs';
import { test } from 'node:test';
import { native } from '../../../src/native/addon.ts';
import { FdAcceptor } from '../../../src/native/fd-acceptor.ts';
import { GuestDirtyBitmap } from '../../../src/vmm/guest/dirty-bitmap.ts';
import { compareDigests, GuestMemory } from '../../../src/vmm/guest/guest-memory.ts';
import type { MultifdIo, MultifdIoCounts } from '../../../src/vmm/migration/multifd-channel.ts';
import { MultifdReceiver } from '../../../src/vmm/migration/multifd-recv.ts';
import { MultifdSender } from '../../../src/vmm/migration/multifd-send.ts';

const PAGE = 4096;
const PAGES = 8192; // 32 MiB: several batches of 8 x 128 pages per pass

/** [the sender's way, the receiver's way] */
const IO: [MultifdIo, MultifdIo][] = [
  ['staged', 'direct'],
  ['direct', 'staged'],
  ['auto', 'auto'],
];

/** A forced way is the only one taken; 'auto' takes both (its first packets on each channel alternate). */
function checkIo(side: string, io: MultifdIo, counts: MultifdIoCounts): void {
  const what = `${side} (${io}): ${counts.staged} packets staged, ${counts.direct} direct`;
  if (io === 'staged') assert.ok(counts.staged > 0 && counts.direct === 0, what);
  if (io === 'direct') assert.ok(counts.direct > 0 && counts.staged === 0, what);
  if (io === 'auto') assert.ok(counts.staged > 0 && counts.direct > 0, what);
}

/**
 * Queues every page marked in `log` on the sender, as the RAM saver does; calls `waiting` each time the
 * sender had to wait for a channel with room (before waiting).
 */
async function queueLog(sender: MultifdSender, mem: GuestMemory, log: GuestDirtyBitmap, waiting?: () => void) {
  for (let w = 0; w < log.wordCount; ) {
    const next = sender.queue();
    if (next instanceof Promise) waiting?.();
    const q = next instanceof Promise ? await next : next;
    w += mem.takeDirtyPages(log.words, w, log.wordCount - w, q, Number.POSITIVE_INFINITY);
  }
}

/** The source's channels to the receiver behind `acceptor`. */
function openSender(src: GuestMemory, acceptor: FdAcceptor, channels: number, io?: MultifdIo): Promise<MultifdSender> {
  return MultifdSender.open({
    memory: src,
    host: '127.0.0.1',
    port: native().localPort(acceptor.fd),
    channels,
    uuid: new Uint8Array(16),
    stallTimeoutMs: 60_000,
    io,
  });
}

for (const fresh of [false, true])
  for (const [sendIo, recvIo] of IO)
    test(`pages in batches of packets, zero pages in long runs between data pages: all arrive, each pass (${fresh ? 'fresh memory' : 'memory holding old contents'}; sent ${sendIo}, received ${recvIo})`, async () => {
      const src = GuestMemory.create(PAGES * PAGE, 'mfd-send-src');
      const dst = GuestMemory.create(PAGES * PAGE, 'mfd-send-dst');
      const received = new Uint8Array(new SharedArrayBuffer(PAGES));
      const receiver = new MultifdReceiver({
        memory: dst,
        channels: 3,
        uuid: null,
        // Not fresh: a zero page must be zeroed over whatever the destination holds. Fresh: a zero page
        // never written is left alone.
        maps: { received, written: new Uint8Array(new SharedArrayBuffer(PAGES)), fresh },
        stallTimeoutMs: 60_000,
        io: recvIo,
      });
      const acceptor = new FdAcceptor(native().listenTcp('127.0.0.1', 0, 8), {
        connection: (fd) => receiver.adopt(fd),
        error: (e) => assert.fail(e),
      });
      let sender: MultifdSender | undefined;
      try {
        sender = await openSender(src, acceptor, 3, sendIo);
        if (!fresh) for (let i = 0; i < PAGES; i++) dst.page(i).fill(0xee); // what a zero page must overwrite
        // Pass 1: data where (i mod 997) < 300: runs of 300 data pages and 697 zero pages, so batches hold
        // zero pages past their first packet. Passes 2 and 3: partial passes, contents changed, and data
        // pages with (i mod 997) < 30 gone back to zero.
        // Taken from a dirty log as the RAM handler takes them: data and zero pages mixed in words.
        const pass = async (pages: number[], tag: number) => {
          const log = new GuestDirtyBitmap(PAGES);
          for (const i of pages) {
            const data = i % 997 < 300 && (tag === 1 || i % 997 >= 30);
            if (data) src.page(i).fill((i * 13 + tag) & 0xff || 1);
            else src.page(i).fill(0);
            log.set(i);
          }
          await queueLog(sender!, src, log);
          assert.ok(log.isEmpty(), 'every mark taken');
          await sender!.sync();
          await receiver.flush();
        };
        await pass(
          Array.from({ length: PAGES }, (_, i) => i),
          1,
        );
        assert.equal(
          received.reduce((n, r) => n + r, 0),
          PAGES,
          'every page arrived in pass 1',
        );
        await pass(
          Array.from({ length: Math.ceil(PAGES / 7) }, (_, k) => k * 7),
          2,
        );
        // Pass 3: a scattered third of the pages, so words hold any number of pages and batches end short
        // of 1024 by various amounts.
        await pass(
          Array.from({ length: PAGES }, (_, i) => i).filter((i) => (i * 2654435761) % 2 ** 32 < 2 ** 32 / 3),
          3,
        );
        checkIo('sender', sendIo, sender.ioCounts);
        checkIo('receiver', recvIo, receiver.ioCounts);
        await sender.close();
        await receiver.finish();
        if (fresh) {
          let everData = 0;
          for (let i = 0; i < PAGES; i++) if (i % 997 < 300) everData++;
          // Read before the digests, which read (and so allocate) every page.
          const held = (fstatSync(dst.fd).blocks * 512) / PAGE;
          assert.equal(held, everData, 'the destination holds the pages that ever held data, no zero page');
        }
        const c = compareDigests(src.pageDigests(), dst.pageDigests());
        assert.ok(c.equal, `${c.differing} pages differ, first ${c.first.join(', ')}`);
      } finally {
        await sender?.close();
        acceptor.close();
        await receiver.close();
        src.close();
        dst.close();
      }
    });

test('a full batch while every channel is full: queue() waits for room, then every page arrives', async () => {
  // 31 pages of each 32-page word: a batch takes whole words, 1023 pages, its last packet 127. One channel
  // whose receiving side is not read at first: its 16 packets in flight and the socket buffers fill, and
  // queue() must wait.
  const pages = 16384; // 64 MiB
  const src = GuestMemory.create(pages * PAGE, 'mfd-wait-src');
  const dst = GuestMemory.create(pages * PAGE, 'mfd-wait-dst');
  const maps = {
    received: new Uint8Array(new SharedArrayBuffer(pages)),
    written: new Uint8Array(new SharedArrayBuffer(pages)),
    fresh: true,
  };
  const receiver = new MultifdReceiver({ memory: dst, channels: 1, uuid: null, maps, stallTimeoutMs: 60_000 });
  // The channel's connection, held unread until queue() has to wait (the acceptor may hear of it
  // only after the sender is open: it runs on the event loop).
  let held = -1;
  let accepted!: (fd: number) => void;
  const connection = new Promise<number>((resolve) => (accepted = resolve));
  const acceptor = new FdAcceptor(native().listenTcp('127.0.0.1', 0, 8), {
    connection: (fd) => {
      held = fd;
      accepted(fd);
    },
    error: (e) => assert.fail(e),
  });
  let sender: MultifdSender | undefined;
  try {
    sender = await openSender(src, acceptor, 1);
    const log = new GuestDirtyBitmap(pages);
    for (let i = 0; i < pages; i++)
      if (i % 32 !== 31) {
        src.page(i).fill((i % 251) + 1);
        log.set(i);
      }
    let waited = 0;
    const s = sender;
    await queueLog(s, src, log, () => {
      // From the first wait on, the channel is read.
      if (waited++ === 0)
        void connection.then((fd) => {
          receiver.adopt(fd);
          held = -1;
        });
    });
    assert.ok(waited > 0, 'queue() never had to wait for room');
    await sender.sync();
    await receiver.flush();
    await sender.close();
    await receiver.finish();
    let missing = 0;
    for (let i = 0; i < pages; i++) if (i % 32 !== 31 && maps.received[i] !== 1) missing++;
    assert.equal(missing, 0, 'pages queued but never received');
    const c = compareDigests(src.pageDigests(), dst.pageDigests());
    assert.ok(c.equal, `${c.differing} pages differ, first ${c.first.join(', ')}`);
  } finally {
    await sender?.close();
    acceptor.close();
    if (held >= 0) native().close(held);
    await receiver.close();
    src.close();
    dst.close();
  }
});
