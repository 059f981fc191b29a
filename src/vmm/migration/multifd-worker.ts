// One multifd channel thread (QEMU's multifd_send_thread / multifd_recv_thread in migration/multifd.c),
// run as a worker_thread: it maps guest RAM from the memfd and owns its channel's TCP connection.
// Sending, it copies the pages the main thread names into a packet and writes it; receiving, it copies
// each page from the socket's buffers straight into guest memory. A receiving channel that met a SYNC
// packet stops reading until the main thread releases it (multifd_recv_sync_main).

import { connect, Socket } from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';
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
  ToReceiver,
  ToSender,
} from './multifd-threads.ts';

const RAM_BLOCK = 'pc.ram';
const port = parentPort!;
const cfg = workerData as SendWorkerConfig | RecvWorkerConfig;
const memory = GuestMemory.map(cfg.fd, cfg.size, { pieceSize: cfg.pieceSize });

if (cfg.role === 'send') runSender(cfg);
else runReceiver(cfg);

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
    const buf = Buffer.allocUnsafe(
      MULTIFD_HEADER_BYTES + 8 * (m.normal.length + m.zero.length) + PAGE_SIZE * m.normal.length,
    );
    let at = writeMultifdHeader(
      buf,
      {
        flags: m.sync ? MULTIFD_FLAG_SYNC : 0,
        pagesAlloc: MULTIFD_PACKET_PAGES,
        packetNum: m.packetNum,
        ramblock: RAM_BLOCK,
      },
      m.normal,
      m.zero,
    );
    // Copied now: a page a vCPU writes later is marked dirty again and goes in a later pass.
    for (const off of m.normal) {
      buf.set(memory.page(off / PAGE_SIZE), at);
      at += PAGE_SIZE;
    }
    pending++;
    arm();
    sock.write(buf, (err) => {
      if (err) return fail(err.message, 'ECONNRESET');
      pending--;
      arm();
      post({ type: 'sent', bytes: buf.byteLength, sync: m.sync });
    });
  });
}

function runReceiver(c: RecvWorkerConfig): void {
  const post = (m: FromReceiver) => port.postMessage(m);
  let failed = false;
  let id = -1;
  const sock = new Socket({ fd: c.socketFd, readable: true, writable: true });
  const fail = (message: string, errno: string) => {
    if (failed) return;
    failed = true;
    post({ type: 'error', message: `multifd channel ${id < 0 ? '(before its init packet)' : id}: ${message}`, errno });
    // Not closed here: the main thread closes every channel once its ERROR went out on the main stream,
    // so the source hears the reason before any channel drops.
    sock.pause();
  };
  // Unconsumed input: chunks as the socket gave them, `head` bytes of the first already used.
  const chunks: Buffer[] = [];
  let head = 0;
  let buffered = 0;
  const take = (n: number): Uint8Array => {
    const out = new Uint8Array(n);
    copyOut(out);
    return out;
  };
  /** Copies the next `into.byteLength` buffered bytes into `into` (guest memory for a page), consuming them. */
  const copyOut = (into: Uint8Array) => {
    let at = 0;
    while (at < into.byteLength) {
      const ch = chunks[0]!;
      const n = Math.min(ch.byteLength - head, into.byteLength - at);
      into.set(ch.subarray(head, head + n), at);
      at += n;
      head += n;
      if (head === ch.byteLength) {
        chunks.shift();
        head = 0;
      }
    }
    buffered -= into.byteLength;
  };

  let state: 'init' | 'header' | 'offsets' | 'pages' = 'init';
  let h: DecodedMultifdHeader | null = null;
  const offsets = new Float64Array(MULTIFD_PACKET_PAGES);
  let nextPage = 0;
  let packets = 0;
  let blocked = false;

  const zeroPage = (i: number) => {
    // As ram-handler.ts's fillPage: a page that reads as zero already is left alone.
    if (c.fresh && c.written[i] === 0) return;
    if (memory.isZeroPage(i)) return;
    memory.page(i).fill(0);
    c.written[i] = 1;
  };

  const step = (): boolean => {
    switch (state) {
      case 'init': {
        if (buffered < MULTIFD_INIT_BYTES) return false;
        const init = decodeMultifdInit(take(MULTIFD_INIT_BYTES));
        if (c.uuid && Buffer.compare(Buffer.from(init.uuid), Buffer.from(c.uuid)) !== 0)
          throw Object.assign(
            new Error(`received uuid ${hex(init.uuid)} and expected uuid ${hex(c.uuid)} for channel ${init.id}`),
            { errno: 'EINVAL' },
          );
        id = init.id;
        post({ type: 'hello', id });
        state = 'header';
        return true;
      }
      case 'header':
        if (buffered < MULTIFD_HEADER_BYTES) return false;
        h = decodeMultifdHeader(take(MULTIFD_HEADER_BYTES));
        if (h.ramblock !== RAM_BLOCK && h.normalPages + h.zeroPages > 0)
          throw new Error(`packet names RAM block "${h.ramblock}", this VM has "${RAM_BLOCK}"`);
        state = 'offsets';
        return true;
      case 'offsets': {
        const n = h!.normalPages + h!.zeroPages;
        if (buffered < 8 * n) return false;
        readMultifdOffsets(take(8 * n), h!, memory.size, offsets);
        for (let k = h!.normalPages; k < n; k++) {
          const i = offsets[k]! / PAGE_SIZE;
          zeroPage(i);
          c.received[i] = 1;
        }
        nextPage = 0;
        state = 'pages';
        return true;
      }
      case 'pages': {
        // Page by page straight from the socket's buffers into guest memory.
        while (nextPage < h!.normalPages) {
          if (buffered < PAGE_SIZE) return false;
          const i = offsets[nextPage]! / PAGE_SIZE;
          copyOut(memory.page(i));
          c.written[i] = 1;
          c.received[i] = 1;
          nextPage++;
        }
        packets++;
        state = 'header';
        if (h!.flags & MULTIFD_FLAG_SYNC) {
          blocked = true;
          sock.pause();
          post({ type: 'sync', packetNum: h!.packetNum, packets });
          return false;
        }
        return true;
      }
    }
  };
  const pump = () => {
    try {
      while (!blocked && !failed && step()) {}
    } catch (err) {
      const e = err as Error & { errno?: string };
      fail(e.message.replace(/^migration stream: /, ''), e.errno ?? 'EPROTO');
    }
  };
  sock.on('data', (d: Buffer) => {
    Atomics.add(c.progress, 0, 1);
    chunks.push(d);
    buffered += d.byteLength;
    pump();
  });
  sock.on('end', () => {
    if (failed) return;
    if (state === 'header' && buffered === 0) post({ type: 'eof', packets });
    else fail(`connection cut ${state === 'init' ? 'before the init packet' : 'inside a packet'}`, 'ECONNRESET');
  });
  sock.on('error', (e) => fail(e.message, (e as NodeJS.ErrnoException).code ?? 'ECONNRESET'));
  port.on('message', (m: ToReceiver) => {
    if (m.type !== 'release' || !blocked) return;
    blocked = false;
    sock.resume();
    pump();
  });
}

function hex(u: Uint8Array): string {
  return Buffer.from(u).toString('hex');
}
