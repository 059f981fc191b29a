// One multifd channel thread (QEMU's multifd_send_thread / multifd_recv_thread in migration/multifd.c),
// run as a worker_thread: it uses the main thread's mapping of guest RAM (GuestMemory.attach) and owns
// its channel's TCP connection.
// Pages never pass through a buffer of ours: sending, the packet header goes out followed by the guest
// pages themselves (one corked writev, as QEMU's multifd writes iovecs that point into guest RAM);
// receiving, the socket reads each run of pages straight into guest memory (StreamSocket, the reader
// naming each target: header, offsets, then the pages the offsets name). A receiving channel that met a
// SYNC packet stops reading until the main thread releases it (multifd_recv_sync_main).

import { connect } from 'node:net';
import { parentPort } from 'node:worker_threads';
import {
  type DecodedMultifdHeader,
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
  RecvWorkerConfig,
  SendWorkerConfig,
  StartChannel,
  ToReceiver,
  ToSender,
} from './multifd-threads.ts';
import { StreamSocket } from './stream-socket.ts';

const RAM_BLOCK = 'pc.ram';
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

// Started from a pool (ChannelThreadPool), the thread waits for what it is for.
port.once('message', (m: StartChannel) => {
  const cfg = m.cfg;
  memory = GuestMemory.attach(cfg.memory);
  if (cfg.role === 'send') runSender(cfg);
  else runReceiver(cfg);
});

function runSender(c: SendWorkerConfig): void {
  const post = (m: FromSender) => port.postMessage(m);
  let failed = false;
  let ending = false;
  const fail = (message: string, errno: string) => {
    if (failed) return;
    failed = true;
    post({ type: 'error', message: `multifd channel ${c.id}: ${message}`, errno });
    sock.destroy();
  };
  const sock = connect({ host: c.host, port: c.port });
  sock.setNoDelay(true);
  sock.once('connect', () => {
    sock.write(encodeMultifdInit({ uuid: c.uuid, id: c.id }));
    post({ type: 'connected' });
  });
  sock.on('error', (e) => fail(e.message, (e as NodeJS.ErrnoException).code ?? 'ECONNRESET'));
  sock.on('close', () => {
    if (ending) post({ type: 'closed' });
    else fail('the destination closed the channel', 'ECONNRESET');
  });
  // Writes not yet taken by the kernel; one that makes no progress for stallTimeoutMs is a dead link.
  let pending = 0;
  let timer: NodeJS.Timeout | undefined;
  const arm = () => {
    clearTimeout(timer);
    if (pending > 0)
      timer = setTimeout(
        () => fail(`no progress for ${c.stallTimeoutMs} ms: stalled link`, 'ETIMEDOUT'),
        c.stallTimeoutMs,
      );
  };
  port.on('message', (m: ToSender) => {
    if (failed) return;
    if (m.type === 'end') {
      ending = true;
      sock.end();
      return;
    }
    // The pages go as they are in guest RAM, runs of adjacent pages as one piece: a page a vCPU writes
    // after this is marked dirty again and goes in a later pass (the final pass runs with the VM stopped).
    const parts: Uint8Array[] = [];
    const all = m.normal.length + m.zero.length;
    let bytes = 0;
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
      parts.push(head);
      for (let i = 0; i < normal.length; ) {
        const view = adjacentPages(normal, i, normal.length);
        parts.push(view);
        i += view.byteLength / PAGE_SIZE;
      }
      bytes += head.byteLength + PAGE_SIZE * normal.length;
      taken = end;
    }
    pending++;
    arm();
    sock.cork();
    for (let i = 0; i < parts.length - 1; i++) sock.write(parts[i]!);
    sock.write(parts[parts.length - 1]!, (err) => {
      if (err) return fail(err.message, 'ECONNRESET');
      pending--;
      arm();
      post({ type: 'sent', bytes, packets: m.packets });
    });
    sock.uncork();
  });
}

function runReceiver(c: RecvWorkerConfig): void {
  const post = (m: FromReceiver) => port.postMessage(m);
  let failed = false;
  let id = -1;
  const s = new StreamSocket(c.socketFd);
  const fail = (message: string, errno: string) => {
    if (failed) return;
    failed = true;
    post({ type: 'error', message: `multifd channel ${id < 0 ? '(before its init packet)' : id}: ${message}`, errno });
    // Not closed here, and no more reads: the main thread closes every channel once its ERROR went out on
    // the main stream, so the source hears the reason before any channel drops.
  };

  const initBuf = new Uint8Array(MULTIFD_INIT_BYTES);
  const headerBuf = new Uint8Array(MULTIFD_HEADER_BYTES);
  const offsetsBuf = new Uint8Array(8 * MULTIFD_PACKET_PAGES);
  type State = 'init' | 'header' | 'offsets' | 'pages';
  // Typed by `as`: the closures below change them, which flow analysis does not see.
  let state = 'init' as State;
  /** Bytes of the current piece (init, header, offsets; in 'pages' the current page) already read. */
  let filled = 0;
  let h: DecodedMultifdHeader | null = null;
  const offsets = new Float64Array(MULTIFD_PACKET_PAGES);
  let nextPage = 0;
  let packets = 0;
  let failure = null as (Error & { errno?: string }) | null;

  const zeroPage = (i: number) => {
    // As ram-handler.ts's fillPage: a page that reads as zero already is left alone.
    if (c.fresh && c.written[i] === 0) return;
    if (memory.isZeroPage(i)) return;
    memory.page(i).fill(0);
    c.written[i] = 1;
  };

  /** The buffer the current fixed-size piece (init packet, header, offsets) is read into, whole. */
  const piece = (): Uint8Array =>
    state === 'init'
      ? initBuf
      : state === 'header'
        ? headerBuf
        : offsetsBuf.subarray(0, 8 * (h!.normalPages + h!.zeroPages));

  /** Pages nextPage.. that are adjacent in guest RAM, as one view, from the byte not yet read. */
  const pagesTarget = (): Uint8Array => adjacentPages(offsets, nextPage, h!.normalPages).subarray(filled);

  /** A whole piece was read: decode it; true when the channel must stop (a SYNC packet ended). */
  const complete = (): boolean => {
    switch (state) {
      case 'init': {
        const init = decodeMultifdInit(initBuf);
        if (c.uuid && Buffer.compare(Buffer.from(init.uuid), Buffer.from(c.uuid)) !== 0)
          throw Object.assign(
            new Error(`received uuid ${hex(init.uuid)} and expected uuid ${hex(c.uuid)} for channel ${init.id}`),
            { errno: 'EINVAL' },
          );
        id = init.id;
        post({ type: 'hello', id });
        state = 'header';
        return false;
      }
      case 'header':
        h = decodeMultifdHeader(headerBuf);
        if (h.ramblock !== RAM_BLOCK && h.normalPages + h.zeroPages > 0)
          throw new Error(`packet names RAM block "${h.ramblock}", this VM has "${RAM_BLOCK}"`);
        state = 'offsets';
        return h.normalPages + h.zeroPages === 0 ? complete() : false;
      case 'offsets': {
        const n = h!.normalPages + h!.zeroPages;
        readMultifdOffsets(offsetsBuf.subarray(0, 8 * n), h!, memory.size, offsets);
        for (let k = h!.normalPages; k < n; k++) {
          const i = offsets[k]! / PAGE_SIZE;
          zeroPage(i);
          c.received[i] = 1;
        }
        nextPage = 0;
        state = 'pages';
        return h!.normalPages === 0 ? complete() : false;
      }
      case 'pages':
        packets++;
        state = 'header';
        return (h!.flags & MULTIFD_FLAG_SYNC) !== 0;
    }
  };

  s.setSink({
    target: () => {
      if (failure) return headerBuf; // nothing more is decoded; the bytes are dropped
      return state === 'pages' ? pagesTarget() : piece().subarray(filled);
    },
    landed: (n) => {
      Atomics.add(c.progress, 0, 1);
      if (failure) return true;
      try {
        if (state !== 'pages') {
          filled += n;
          if (filled < piece().byteLength) return false;
          filled = 0;
          return complete();
        }
        // n bytes of the run from the current page on: every page they complete is in guest RAM now.
        filled += n;
        while (filled >= PAGE_SIZE) {
          const i = offsets[nextPage]! / PAGE_SIZE;
          c.written[i] = 1;
          c.received[i] = 1;
          nextPage++;
          filled -= PAGE_SIZE;
        }
        return nextPage === h!.normalPages ? complete() : false;
      } catch (err) {
        failure = err as Error & { errno?: string };
        return true;
      }
    },
  });

  let release: (() => void) | null = null;
  port.on('message', (m: ToReceiver) => {
    if (m.type === 'release') release?.();
    else if (m.type === 'drain') {
      s.socket.once('close', () => post({ type: 'drained' }));
      s.endAndDrain(m.ms);
    }
  });
  void (async () => {
    for (;;) {
      let more: boolean;
      try {
        more = await s.wait();
      } catch (err) {
        const e = err as NodeJS.ErrnoException;
        return fail(e.message, e.code ?? 'ECONNRESET');
      }
      if (failure) return fail(failure.message.replace(/^migration stream: /, ''), failure.errno ?? 'EPROTO');
      if (!more) {
        if (state === 'header' && filled === 0) post({ type: 'eof', packets });
        else fail(`connection cut ${state === 'init' ? 'before the init packet' : 'inside a packet'}`, 'ECONNRESET');
        return;
      }
      // A SYNC packet ended: held until the main thread has every channel's (multifd_recv_sync_main).
      const released = new Promise<void>((r) => (release = r));
      post({ type: 'sync', packetNum: h!.packetNum, packets });
      await released;
      release = null;
    }
  })();
}

function hex(u: Uint8Array): string {
  return Buffer.from(u).toString('hex');
}
