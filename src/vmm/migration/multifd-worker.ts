// One multifd channel thread (QEMU's multifd_send_thread / multifd_recv_thread in migration/multifd.c),
// run as a worker_thread: it uses the main thread's mapping of guest RAM (GuestMemory.attach) and moves
// its channel's bytes with blocking calls on its own thread (native/src/chanio.c), as QEMU's threads do:
// no event loop between the socket and guest RAM. The main thread owns the socket and an abort eventfd
// that wakes any call at once (it closes both once the thread is gone).
// Each packet's pages pass through one packet-sized staging buffer per thread (512 KiB, reused, so it
// stays in the CPU's caches): sending, they are copied into it and the header and it go out in one writev;
// receiving, one readv fills it and the pages are copied into guest RAM. QEMU's threads instead hand the
// kernel iovecs that point into guest RAM, which saves that copy; but the kernel's own copy between a
// socket and memory not in the caches can be far slower than a user-space copy: on some of our machines
// loopback TCP straight from and into 1 GiB buffers moves a tenth of what it moves through one reused
// buffer (the bench's `raw-tcp-guest / raw-tcp`; docs/performance.md), while the staging copy costs a
// memcpy where it does not pay. A receiving channel that met a SYNC packet stops reading until the main
// thread releases it (multifd_recv_sync_main).

import { parentPort } from 'node:worker_threads';
import { native } from '../../native/addon.ts';
import {
  decodeMultifdHeader,
  decodeMultifdInit,
  encodeMultifdInit,
  MULTIFD_FLAG_SYNC,
  MULTIFD_HEADER_BYTES,
  MULTIFD_INIT_BYTES,
  MULTIFD_PACKET_PAGES,
  readMultifdOffsets,
  writeMultifdHeader,
} from '../../stream/multifd.ts';
import { GuestMemory, PAGE_SIZE } from '../guest/guest-memory.ts';
import type {
  FromReceiver,
  FromSender,
  Ready,
  RecvWorkerConfig,
  SendWorkerConfig,
  StartChannel,
  ToReceiver,
  ToSender,
} from './multifd-threads.ts';

const RAM_BLOCK = 'pc.ram';
/** How long a sending channel that ended waits for the destination to close its side. */
const CLOSE_WAIT_MS = 5000;
const port = parentPort!;
let memory: GuestMemory;

/**
 * The pages at offsets[k..n) that follow each other in guest RAM from offsets[k] on, as one view (ending
 * early at a mapping piece's end): what one write sends or one read fills.
 */
function adjacentPages(offsets: ArrayLike<number>, k: number, n: number): Uint8Array {
  let run = 1;
  while (k + run < n && offsets[k + run] === offsets[k]! + run * PAGE_SIZE) run++;
  return memory.pageRun(offsets[k]! / PAGE_SIZE, run);
}

// Started from a pool (ChannelThreadPool), the thread says its code is loaded, then waits for what it is for.
port.postMessage({ type: 'ready' } satisfies Ready);
port.once('message', (m: StartChannel) => {
  const cfg = m.cfg;
  memory = GuestMemory.attach(cfg.memory);
  if (cfg.role === 'send') runSender(cfg);
  else runReceiver(cfg);
});

/**
 * A failure as the main thread hears it: its message and errno name. A failed syscall (the addon's errors
 * name it) carries its errno name as `code`; ours, as `errno`; anything else gets `otherwise` (a decoding
 * error, StreamError, is the source breaking the protocol).
 */
function reason(err: unknown, otherwise: string): { message: string; errno: string } {
  const e = err as Error & { code?: unknown; errno?: unknown; syscall?: string };
  const errno = typeof e.errno === 'string' ? e.errno : e.syscall !== undefined ? String(e.code) : otherwise;
  return { message: e.message.replace(/^migration stream: /, ''), errno };
}

function runSender(c: SendWorkerConfig): void {
  const post = (m: FromSender) => port.postMessage(m);
  const io = native();
  let failed = false;
  const fail = (err: unknown) => {
    if (failed) return;
    failed = true;
    let { message, errno } = reason(err, 'EIO');
    if (errno === 'ETIMEDOUT') message = `no progress for ${c.stallTimeoutMs} ms: stalled link`;
    post({ type: 'error', message: `multifd channel ${c.id}: ${message}`, errno });
  };
  try {
    io.connectTcp(c.socketFd, c.address, c.port, c.abortFd, c.stallTimeoutMs);
    io.writevAll(c.socketFd, [encodeMultifdInit({ uuid: c.uuid, id: c.id })], c.abortFd, c.stallTimeoutMs);
  } catch (err) {
    fail(err);
    return;
  }
  post({ type: 'connected' });
  const staging = new Uint8Array(MULTIFD_PACKET_PAGES * PAGE_SIZE);
  port.on('message', (m: ToSender) => {
    if (failed) return;
    if (m.type === 'end') {
      // Our FIN behind the last packet; then the destination closes its side once it has read them all.
      try {
        io.shutdown(c.socketFd, 1);
        io.discardUntilEof(c.socketFd, c.abortFd, CLOSE_WAIT_MS);
      } catch {
        // Closing anyway: every packet was written, and the main stream says whether the load succeeded.
      }
      post({ type: 'closed' });
      return;
    }
    // Each packet: its header, then its pages copied into the staging buffer, in one writev. A page a
    // vCPU writes after its copy is marked dirty again and goes in a later pass (the final pass runs with
    // the VM stopped).
    const all = m.normal.length + m.zero.length;
    let bytes = 0;
    try {
      for (let k = 0, taken = 0; k < m.packets; k++) {
        const end = k === m.packets - 1 ? all : taken + MULTIFD_PACKET_PAGES;
        // This packet's share of the normal pages, then of the zero pages.
        const normal = m.normal.subarray(Math.min(taken, m.normal.length), Math.min(end, m.normal.length));
        const zero = m.zero.subarray(Math.max(0, taken - m.normal.length), Math.max(0, end - m.normal.length));
        const head = Buffer.allocUnsafe(MULTIFD_HEADER_BYTES + 8 * (normal.length + zero.length));
        writeMultifdHeader(
          head,
          {
            flags: m.sync && k === m.packets - 1 ? MULTIFD_FLAG_SYNC : 0,
            pagesAlloc: MULTIFD_PACKET_PAGES,
            packetNum: m.packetNum + k,
            ramblock: RAM_BLOCK,
          },
          normal,
          zero,
        );
        for (let i = 0; i < normal.length; ) {
          const view = adjacentPages(normal, i, normal.length);
          staging.set(view, i * PAGE_SIZE);
          i += view.byteLength / PAGE_SIZE;
        }
        bytes += io.writevAll(
          c.socketFd,
          [head, staging.subarray(0, normal.length * PAGE_SIZE)],
          c.abortFd,
          c.stallTimeoutMs,
        );
        taken = end;
      }
    } catch (err) {
      return fail(err);
    }
    post({ type: 'sent', bytes, packets: m.packets });
  });
}

function runReceiver(c: RecvWorkerConfig): void {
  const post = (m: FromReceiver) => port.postMessage(m);
  const io = native();
  let id = -1;
  let failed = false;
  const fail = (message: string, errno: string) => {
    if (failed) return;
    failed = true;
    post({ type: 'error', message: `multifd channel ${id < 0 ? '(before its init packet)' : id}: ${message}`, errno });
    // No more reads: the main thread closes every channel once its ERROR went out on the main stream, so
    // the source hears the reason before any channel drops (see 'drain').
  };
  const headerBuf = new Uint8Array(MULTIFD_HEADER_BYTES);
  const offsetsBuf = new Uint8Array(8 * MULTIFD_PACKET_PAGES);
  const offsets = new Float64Array(MULTIFD_PACKET_PAGES);
  const staging = new Uint8Array(MULTIFD_PACKET_PAGES * PAGE_SIZE);
  let packets = 0;
  /** The packet number of the SYNC packet untilSync() stopped at. */
  let pendingSync = 0;

  /** Fills parts from the socket; false when the source closed before the first byte of them. */
  const read = (parts: Uint8Array[], what: string): boolean => {
    const want = parts.reduce((n, p) => n + p.byteLength, 0);
    const got = io.readvAll(c.socketFd, parts, c.abortFd, -1, c.progress);
    if (got === want) return true;
    if (got === 0 && what === 'header') return false;
    throw Object.assign(new Error(`connection cut ${what === 'init' ? 'before the init packet' : 'inside a packet'}`), {
      errno: 'ECONNRESET',
    });
  };

  const zeroPage = (i: number) => {
    // As ram-handler.ts's fillPage: a page that reads as zero already is left alone.
    if (c.fresh && c.written[i] === 0) return;
    if (memory.isZeroPage(i)) return;
    memory.page(i).fill(0);
    c.written[i] = 1;
  };

  /** Reads packets until one carries SYNC ('sync') or the source closes between packets ('eof'). */
  const untilSync = (): 'sync' | 'eof' => {
    for (;;) {
      if (!read([headerBuf], 'header')) return 'eof';
      const h = decodeMultifdHeader(headerBuf);
      const n = h.normalPages + h.zeroPages;
      if (h.ramblock !== RAM_BLOCK && n > 0)
        throw new Error(`packet names RAM block "${h.ramblock}", this VM has "${RAM_BLOCK}"`);
      if (n > 0) {
        read([offsetsBuf.subarray(0, 8 * n)], 'offsets');
        readMultifdOffsets(offsetsBuf.subarray(0, 8 * n), h, memory.size, offsets);
        for (let k = h.normalPages; k < n; k++) {
          const i = offsets[k]! / PAGE_SIZE;
          zeroPage(i);
          c.received[i] = 1;
        }
        // The pages arrive in the staging buffer, then go into guest RAM a run of adjacent ones at a time.
        const data = staging.subarray(0, h.normalPages * PAGE_SIZE);
        if (h.normalPages > 0) read([data], 'pages');
        for (let k = 0; k < h.normalPages; ) {
          const view = adjacentPages(offsets, k, h.normalPages);
          view.set(data.subarray(k * PAGE_SIZE, k * PAGE_SIZE + view.byteLength));
          const run = view.byteLength / PAGE_SIZE;
          for (const last = k + run; k < last; k++) {
            const i = offsets[k]! / PAGE_SIZE;
            c.written[i] = 1;
            c.received[i] = 1;
          }
        }
      }
      packets++;
      if (h.flags & MULTIFD_FLAG_SYNC) {
        pendingSync = h.packetNum;
        return 'sync';
      }
    }
  };

  let release: (() => void) | null = null;
  port.on('message', (m: ToReceiver) => {
    if (m.type === 'release') release?.();
    else if (m.type === 'drain') {
      // The load failed (and the abort eventfd woke any read): end our side, read and drop until the
      // source closes or m.ms pass.
      try {
        io.shutdown(c.socketFd, 1);
        io.discardUntilEof(c.socketFd, -1, m.ms);
      } catch {
        // The connection is gone already: nothing left to drain.
      }
      post({ type: 'drained' });
    }
  });
  void (async () => {
    try {
      const init = new Uint8Array(MULTIFD_INIT_BYTES);
      read([init], 'init');
      const hello = decodeMultifdInit(init);
      if (c.uuid && Buffer.compare(Buffer.from(hello.uuid), Buffer.from(c.uuid)) !== 0)
        throw Object.assign(
          new Error(`received uuid ${hex(hello.uuid)} and expected uuid ${hex(c.uuid)} for channel ${hello.id}`),
          { errno: 'EINVAL' },
        );
      id = hello.id;
      post({ type: 'hello', id });
      for (;;) {
        if (untilSync() === 'eof') {
          // Our FIN back: the source's channel waits for it to know every packet was taken.
          io.shutdown(c.socketFd, 1);
          post({ type: 'eof', packets });
          return;
        }
        // A SYNC packet ended: held until the main thread has every channel's (multifd_recv_sync_main).
        const released = new Promise<void>((r) => (release = r));
        post({ type: 'sync', packetNum: pendingSync, packets });
        await released;
        release = null;
      }
    } catch (err) {
      const { message, errno } = reason(err, 'EPROTO');
      if (errno === 'ECANCELED') return; // the main thread stopped us: it has its reason already
      fail(message, errno);
    }
  })();
}

function hex(u: Uint8Array): string {
  return Buffer.from(u).toString('hex');
}
