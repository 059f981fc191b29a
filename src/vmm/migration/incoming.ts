// The destination side: accept one migration connection (or read a file), load every section as it
// arrives (each verified by its checksum before it is applied), check completeness at EOF, then the
// two-phase handshake: READY to the source, and start the VM only on GO. On any error the destination
// tells the source (ERROR), and its VM never starts.

import { lookup } from 'node:dns/promises';
import { createReadStream } from 'node:fs';
import { isIP } from 'node:net';
import { Errno } from '../../abi/errno.ts';
import { native } from '../../native/addon.ts';
import { FdAcceptor } from '../../native/fd-acceptor.ts';
import { hugeBuffer } from '../../native/huge-buffer.ts';
import { type DecodedSection, StreamDecoder } from '../../stream/decoder.ts';
import {
  encodeReturnPath,
  ReturnPathDecoder,
  type ReturnPathMessage,
  ReturnPathType,
} from '../../stream/return-path.ts';
import { errnoOf, MigrationError, reasonOf } from './errors.ts';
import type { MigrationHandler } from './handler.ts';
import { type StallWatch, StreamSocket } from './stream-socket.ts';

export interface IncomingConnection {
  /**
   * The next sections the stream's bytes complete, verified by `decoder` (at least one, or none once it
   * read the EOF record), or null once the input ended. Rejects on damage (StreamError), a failed link,
   * or a link that stalls (`stall`).
   */
  nextSections(decoder: StreamDecoder, stall?: StallWatch): Promise<DecodedSection[] | null>;
  /** The next bytes after the stream (the source's return-path messages), or null at EOF. */
  nextBytes(timeoutMs: number, what: string): Promise<Uint8Array | null>;
  send(m: ReturnPathMessage): Promise<void>;
  close(): void;
  /**
   * After ERROR: end our side (the ERROR goes out before the FIN) but keep reading, discarding, until
   * the source closes or `ms` pass. Closing at once with unread data would reset the connection, and
   * the source could lose the ERROR that says why.
   */
  closeAfterError?(ms: number): void;
}

/**
 * The main stream over TCP: reads land in the decoder's own buffers (StreamSocket), a large section
 * straight into the buffer it is checked and applied from.
 */
function socketConnection(fd: number): IncomingConnection {
  const s = new StreamSocket(fd);
  // One sink per decoder, so that the buffer Node already holds for the next read stays the right one.
  let reading: { decoder: StreamDecoder; batch: DecodedSection[]; failure: unknown } | null = null;
  const small = new Uint8Array(4096);
  return {
    async nextSections(decoder, stall) {
      if (reading?.decoder !== decoder) {
        const r = { decoder, batch: [] as DecodedSection[], failure: null as unknown };
        reading = r;
        s.setSink({
          target: () => decoder.readTarget(),
          landed: (n) => {
            try {
              r.batch = decoder.received(n);
            } catch (err) {
              r.failure = err;
              return true;
            }
            // The EOF record may come alone: the consumer must hear of it too.
            return r.batch.length > 0 || decoder.ended;
          },
        });
      }
      const r = reading;
      r.batch = [];
      const more = await s.wait(stall);
      if (r.failure) throw r.failure;
      return more ? r.batch : null;
    },
    async nextBytes(timeoutMs, what) {
      let got: Uint8Array | null = null;
      reading = null;
      s.setSink({
        target: () => small,
        landed: (n) => {
          got = small.slice(0, n);
          return true;
        },
      });
      return (await s.wait({ ms: timeoutMs, what })) ? got : null;
    },
    send: (m) => s.write(encodeReturnPath(m)),
    close: () => s.destroy(),
    closeAfterError: (ms) => s.endAndDrain(ms),
  };
}

/**
 * Listens for one incoming migration on HOST:PORT (port 0 picks one; see `port`). The listening socket is
 * ours (native listenTcp + FdAcceptor), so an accepted connection is a descriptor: the main stream is
 * wrapped as a net.Socket, a multifd channel's descriptor goes as it is to the thread that reads it.
 */
export class IncomingListener {
  private readonly acceptor: FdAcceptor;
  /** Connections accepted before accept() was called (the main stream among them). */
  private readonly pending: number[] = [];
  private waiter: { resolve: (fd: number) => void; reject: (e: Error) => void } | null = null;
  private extra: ((fd: number) => void) | null = null;
  private mainTaken = false;

  private constructor(fd: number) {
    this.acceptor = new FdAcceptor(fd, {
      connection: (c) => this.onConnection(c),
      // accept() failing for want of fds backs off and retries (FdAcceptor); the source's connect waits.
      error: () => {},
    });
  }

  static async listen(host: string, port: number): Promise<IncomingListener> {
    // Names resolved as net.Server.listen would (dns.lookup); the socket itself takes numeric addresses.
    const { address } = isIP(host) ? { address: host } : await lookup(host);
    return new IncomingListener(native().listenTcp(address, port, 16));
  }

  get port(): number {
    return native().localPort(this.acceptor.fd);
  }

  private onConnection(fd: number): void {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve(fd);
    } else if (!this.mainTaken) this.pending.push(fd);
    else if (this.extra) this.extra(fd);
    else native().close(fd);
  }

  /**
   * The first connection (the source opens its main stream first); later ones go to `extra` (multifd
   * channels, as descriptors now theirs), or are refused (closed) without it.
   */
  async accept(extra?: (fd: number) => void): Promise<IncomingConnection> {
    const first =
      this.pending.shift() ?? (await new Promise<number>((resolve, reject) => (this.waiter = { resolve, reject })));
    this.mainTaken = true;
    this.extra = extra ?? null;
    for (const fd of this.pending.splice(0)) this.onConnection(fd);
    return socketConnection(first);
  }

  /** Stops listening; an accept() still waiting fails with ECANCELED rather than waiting forever. */
  close(): void {
    this.acceptor.close();
    for (const fd of this.pending.splice(0)) native().close(fd);
    const w = this.waiter;
    this.waiter = null;
    w?.reject(new MigrationError(Errno.ECANCELED, 'the migration listener closed before the source connected'));
  }
}

export function fileConnection(path: string): IncomingConnection {
  const stream = createReadStream(path, { highWaterMark: 1 << 20 });
  const chunks = (stream as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  return {
    async nextSections(decoder) {
      for (;;) {
        const r = await chunks.next();
        if (r.done) return null;
        const batch = decoder.push(r.value);
        if (batch.length > 0 || decoder.ended) return batch;
      }
    },
    nextBytes: async () => null,
    send: async () => {},
    close: () => stream.destroy(),
  };
}

/** How long a destination that sent ERROR keeps reading (and discarding) so the source gets the ERROR. */
export const ERROR_LINGER_MS = 5000;

export interface IncomingOptions {
  handlers: readonly MigrationHandler[];
  connection: IncomingConnection;
  /** TCP: READY/GO with the source. A file has no one to shake hands with. */
  handshake: boolean;
  /** Start the VM after a successful load (after GO over TCP). */
  startVm: () => Promise<void>;
  autostart: boolean;
  /** How long to wait for GO after READY before giving up (the VM then stays stopped). */
  goTimeoutMs?: number;
  /**
   * A stream that brings no data for this long is dead (a link that died without a FIN or RST, a source
   * that hangs): the load fails rather than waiting forever. Unset: no limit.
   */
  stallTimeoutMs?: number;
  maxSectionBytes?: number;
  onSection?: (idstr: string, bytes: number) => void;
  /**
   * The switchover-ack capability (QEMU 8.1): SWITCHOVER_ACK goes to the source once every handler that
   * needs it has loaded its initial data (at once when none does), as QEMU's qemu_loadvm_approve_switchover.
   */
  switchoverAck?: boolean;
  onSwitchoverAck?: () => void;
  /** Rejects when something beside the main stream failed (a multifd channel): the load fails with it. */
  failure?: Promise<never>;
  /** A count that moves while data arrives beside the main stream (multifd channels), for the stall check. */
  progress?: () => number;
}

export interface IncomingResult {
  bytes: number;
  sections: number;
  started: boolean;
}

/**
 * One verified section into its handler. A handler's refusal (the device rejecting its data, a payload
 * that does not parse) is reported with the section it came from, as the decoder reports damage.
 */
async function loadNamed(h: MigrationHandler, s: DecodedSection): Promise<void> {
  try {
    await h.loadSection(s.type, s.payload, s.versionId);
  } catch (err) {
    throw new MigrationError(
      errnoOf(err, Errno.EINVAL),
      `${s.type.toUpperCase()} section "${s.idstr}" (section id ${s.sectionId}, seq ${s.seq}, byte ${s.offset}) refused: ${reasonOf(err)}`,
      { cause: err },
    );
  }
}

export async function runIncoming(o: IncomingOptions): Promise<IncomingResult> {
  // Every section is applied before more bytes are read, so the decoder may reuse its buffers.
  const decoder = new StreamDecoder({
    maxSectionBytes: o.maxSectionBytes,
    reusePayloadBuffers: true,
    // Its two gather buffers are first touched inside the migration: in huge pages, a few faults each.
    allocate: hugeBuffer,
  });
  const byKey = new Map(o.handlers.map((h) => [`${h.idstr}\u0000${h.instanceId}`, h]));
  const bySection = new Map<number, MigrationHandler>();
  let sections = 0;
  let rest: Uint8Array | null = null;
  // Handlers whose approval the switch-over still waits for (empty once the ack went out).
  const awaiting = new Set(o.switchoverAck && o.handshake ? o.handlers.filter((h) => h.switchoverAckNeeded?.()) : []);
  let acked = !(o.switchoverAck && o.handshake);
  const approve = async () => {
    if (acked || awaiting.size > 0) return;
    acked = true;
    await o.connection.send({ type: ReturnPathType.SWITCHOVER_ACK, text: '' });
    o.onSwitchoverAck?.();
  };
  try {
    for (const h of o.handlers) await h.loadSetup();
    await approve();
    const stall: StallWatch | undefined = o.stallTimeoutMs
      ? {
          ms: o.stallTimeoutMs,
          what: `no data from the source for ${o.stallTimeoutMs} ms: stalled link`,
          progress: o.progress,
        }
      : undefined;
    while (!decoder.ended) {
      const next = o.connection.nextSections(decoder, stall);
      const batch = o.failure ? await Promise.race([next, o.failure]) : await next;
      if (!batch) break;
      for (const s of batch) {
        sections++;
        let h: MigrationHandler | undefined;
        if (s.type === 'start' || s.type === 'full') {
          h = byKey.get(`${s.idstr}\u0000${s.instanceId}`);
          if (!h)
            throw new MigrationError(
              Errno.EINVAL,
              `stream section "${s.idstr}" instance ${s.instanceId} matches nothing in this VM`,
            );
          if ((s.versionId ?? 0) > h.versionId) {
            throw new MigrationError(
              Errno.EINVAL,
              `section "${s.idstr}" has version ${s.versionId}, this VM loads up to ${h.versionId}`,
            );
          }
          bySection.set(s.sectionId, h);
        } else {
          h = bySection.get(s.sectionId);
        }
        if (!h) throw new MigrationError(Errno.EINVAL, `section id ${s.sectionId} was never started`);
        await loadNamed(h, s);
        o.onSection?.(h.idstr, s.payload.byteLength);
        if (awaiting.has(h) && h.switchoverApproved?.()) {
          awaiting.delete(h);
          await approve();
        }
      }
    }
    decoder.finish();
    rest = decoder.takeRemainder();
    for (const h of o.handlers) await h.loadComplete();
  } catch (err) {
    const msg = (err as Error).message;
    // Best effort on the way out: `err` is what the caller hears. The link may be what failed (then the
    // ERROR cannot go), and a handler's cleanup failing cannot change the outcome.
    if (o.handshake) await o.connection.send({ type: ReturnPathType.ERROR, text: msg }).catch(() => {});
    if (o.handshake && o.connection.closeAfterError) o.connection.closeAfterError(ERROR_LINGER_MS);
    else o.connection.close();
    for (const h of o.handlers) await h.loadCleanup?.().catch(() => {});
    throw err;
  }
  for (const h of o.handlers) await h.loadCleanup?.();

  if (!o.handshake) {
    o.connection.close();
    if (o.autostart) await o.startVm();
    return { bytes: decoder.offset, sections, started: o.autostart };
  }
  await o.connection.send({ type: ReturnPathType.READY, text: '' });
  const rp = new ReturnPathDecoder();
  const pending: ReturnPathMessage[] = rest && rest.byteLength > 0 ? rp.push(rest) : [];
  while (pending.length === 0) {
    const goMs = o.goTimeoutMs ?? 30_000;
    const chunk = await o.connection.nextBytes(goMs, `no GO from the source within ${goMs} ms`);
    if (!chunk) throw new MigrationError(Errno.ECONNRESET, 'the source went away before GO: the VM stays stopped here');
    pending.push(...rp.push(chunk));
  }
  const go = pending[0]!;
  if (go.type !== ReturnPathType.GO)
    throw new MigrationError(Errno.EPROTO, `expected GO from the source, got message ${go.type}`);
  o.connection.close();
  if (o.autostart) await o.startVm();
  return { bytes: decoder.offset, sections, started: o.autostart };
}
