// Where the migration stream goes: a TCP connection to the destination (with the return path coming back
// on it) or a file. Writes wait for the socket to drain, so the stream is never buffered whole; a link
// that makes no progress for `stallTimeoutMs` is an error, not a hang; `max-bandwidth` is honoured in
// 100 ms windows as QEMU does.

import { once } from 'node:events';
import { type FileHandle, open } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { Errno } from '../../abi/errno.ts';
import {
  encodeReturnPath,
  ReturnPathDecoder,
  type ReturnPathMessage,
  ReturnPathType,
} from '../../stream/return-path.ts';
import { MigrationError } from './errors.ts';

export type MigrationUri = { kind: 'tcp'; host: string; port: number } | { kind: 'file'; path: string };

/** Parses a migration URI; port 0 is accepted only for listening (`forListen`), where it picks a free port. */
export function parseMigrationUri(uri: string, forListen = false): MigrationUri {
  if (uri.startsWith('file:')) {
    const path = uri.slice(5);
    if (!path) throw new MigrationError(Errno.EINVAL, `migration URI "${uri}" has no path`);
    return { kind: 'file', path };
  }
  const m = /^tcp:(\[[^\]]+\]|[^:]+):(\d+)$/.exec(uri);
  if (!m) throw new MigrationError(Errno.EINVAL, `migration URI "${uri}" is not tcp:HOST:PORT or file:PATH`);
  const port = Number(m[2]);
  if (port < (forListen ? 0 : 1) || port > 65535)
    throw new MigrationError(Errno.EINVAL, `migration URI "${uri}": port out of range`);
  return { kind: 'tcp', host: m[1]!.replace(/^\[|\]$/g, ''), port };
}

export interface OutgoingStream {
  /**
   * Writes the pieces; resolves once the transport took them (the memory behind them may be reused).
   * Writes go out in the order of the calls, also when a call is made before the previous one resolved.
   */
  write(pieces: readonly Uint8Array[]): Promise<void>;
  /** Bytes written so far. */
  readonly bytes: number;
  /** The next return-path message (TCP only); rejects when the connection ends first. */
  nextMessage(timeoutMs: number): Promise<ReturnPathMessage>;
  /** Sends a return-path-style message to the peer (the source's GO). */
  sendMessage(m: ReturnPathMessage): Promise<void>;
  /** The destination sent SWITCHOVER_ACK (kept out of nextMessage's queue: it may come at any time). */
  readonly switchoverAcked?: boolean;
  /** Flushes and closes. */
  end(): Promise<void>;
  /** Tears down at once (cancel, failure). */
  destroy(): void;
  /** The destination's ERROR, if it sent one (TCP): its reason beats a link failure it caused. */
  refusal?(): Error | null;
}

export interface TransportOptions {
  /** No write progress for this long is a dead link (default 10 s). */
  stallTimeoutMs?: number;
  /** Connect timeout (default 10 s). */
  connectTimeoutMs?: number;
  /** Current max-bandwidth in bytes/s (0 = unlimited), read at every write. */
  maxBandwidth?: () => number;
  /** Aborts the connect and any wait (migrate_cancel). */
  signal?: AbortSignal;
}

/**
 * Sleeps as needed so that the bytes written never run ahead of the rate by more than one 100 ms window
 * (QEMU's rate-limit window). A write bigger than a window's share (a 4 MiB section at a few MB/s) is paid
 * for in full before the next one: forgiving the excess at each window's end would let a low limit pass
 * one section per 100 ms, i.e. ~40 MB/s whatever was asked. A cancel (`signal`) ends the wait at once.
 */
class RateLimiter {
  /** When the bytes written so far will have been earned at the rate. */
  private readyAt = 0;

  constructor(
    private readonly rate: () => number,
    private readonly signal?: AbortSignal,
  ) {}

  async take(n: number): Promise<void> {
    const limit = this.rate();
    const now = performance.now();
    if (limit <= 0) {
      this.readyAt = now;
      return;
    }
    // Unused time counts as credit for at most one window (a burst), no more.
    this.readyAt = Math.max(this.readyAt, now - 100) + (n / limit) * 1000;
    if (this.readyAt > now) await sleep(this.readyAt - now, undefined, { signal: this.signal });
  }
}

/**
 * Bytes per corked write: the granularity at which a slow link is seen to make progress (a link must take
 * one group per stall timeout: 4 MiB in the default 10 s, 0.4 MB/s), and what Node's socket machinery
 * costs per write and callback (4 MiB, a whole section, measured faster than 1 MiB on loopback, and 1 MiB
 * faster than 512 KiB: docs/performance.md).
 */
const WRITE_GROUP = 4 << 20;
/**
 * Groups handed to the socket and not yet taken by the kernel, at most: the next group is queued while
 * earlier ones go out, so the kernel's send buffer never runs dry between groups or sections (one group
 * at a time left the link idle while each callback came back round the event loop).
 */
const WRITE_WINDOW = 8;

class TcpOutgoing implements OutgoingStream {
  bytes = 0;
  /** Bytes of write groups the kernel has taken in full (stall detection). */
  private completed = 0;
  /** The last write in call order: each call's groups are queued after the previous call's. */
  private tail: Promise<void> = Promise.resolve();
  /** Groups queued on the socket, oldest first; the front ones may be done (dropped when room is needed). */
  private readonly unfinished: Promise<void>[] = [];
  /** Writes waiting on the socket (watch): one 'close' listener fails them all, however many are queued. */
  private readonly closeWatchers = new Set<() => void>();
  private readonly decoder = new ReturnPathDecoder();
  private readonly inbox: ReturnPathMessage[] = [];
  private waiter: (() => void) | null = null;
  private closedError: Error | null = null;
  /** The destination said ERROR on the return path. */
  private refusalError: MigrationError | null = null;
  private readonly limiter: RateLimiter;
  switchoverAcked = false;

  constructor(
    private readonly socket: Socket,
    private readonly options: TransportOptions,
  ) {
    this.limiter = new RateLimiter(options.maxBandwidth ?? (() => 0), options.signal);
    socket.on('data', (d: Buffer) => {
      try {
        for (const m of this.decoder.push(d)) {
          if (m.type === ReturnPathType.SWITCHOVER_ACK) {
            this.switchoverAcked = true;
            continue;
          }
          this.inbox.push(m);
          // The destination's reason, if it gives up mid-stream: every later failure of this link
          // reports it rather than the reset that follows.
          if (m.type === ReturnPathType.ERROR)
            this.refusalError ??= new MigrationError(Errno.EIO, `the destination could not load the VM: ${m.text}`);
        }
      } catch (err) {
        socket.destroy(err as Error);
        return;
      }
      this.wake();
    });
    socket.on('close', () => {
      this.closedError ??=
        this.refusalError ?? new MigrationError(Errno.ECONNRESET, 'the destination closed the migration connection');
      this.wake();
      for (const fail of this.closeWatchers) fail();
    });
    socket.on('error', (err) => {
      this.closedError =
        this.refusalError ?? new MigrationError(Errno.ECONNRESET, `migration connection: ${err.message}`);
      this.wake();
    });
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  /**
   * Resolves once the socket has taken every piece (its write callback), so the caller may reuse the
   * memory behind them; a link that takes nothing for `stallTimeoutMs` fails the write. Calls are written
   * one after the other, in call order, each in groups of at most WRITE_GROUP bytes, up to WRITE_WINDOW
   * of them queued at once: a group's write callback is the progress a stall is measured against, with
   * public means only (a 4 MiB section queued behind others on a slow or busy link is not a dead link
   * while its groups keep going out).
   */
  async write(pieces: readonly Uint8Array[]): Promise<void> {
    if (this.refusalError) throw this.refusalError;
    if (this.closedError) throw this.closedError;
    const list = pieces.filter((p) => p.byteLength > 0);
    if (list.length === 0) return;
    let n = 0;
    for (const p of list) n += p.byteLength;
    const groups: Promise<void>[] = [];
    const queued = this.tail.then(() => this.writeGroups(list, groups));
    this.tail = queued.catch(() => {});
    await this.watch(
      queued.then(async () => {
        await Promise.all(groups);
      }),
    );
    this.bytes += n;
    await this.limiter.take(n);
  }

  /**
   * Queues `list` as corked groups of at most WRITE_GROUP bytes, each once fewer than WRITE_WINDOW are
   * unfinished; each group's completion goes into `groups`.
   */
  private async writeGroups(list: readonly Uint8Array[], groups: Promise<void>[]): Promise<void> {
    const queue = async (group: readonly Uint8Array[], size: number) => {
      while (this.unfinished.length >= WRITE_WINDOW) {
        // Its failure is the caller's, through `groups`; here it only frees a place.
        await this.unfinished[0]!.catch(() => {});
        this.unfinished.shift();
      }
      const g = this.writeGroup(group, size);
      g.catch(() => {}); // handled: awaited by its write() through `groups`
      this.unfinished.push(g);
      groups.push(g);
    };
    let group: Uint8Array[] = [];
    let size = 0;
    for (const piece of list) {
      for (let at = 0; at < piece.byteLength; ) {
        const take = Math.min(piece.byteLength - at, WRITE_GROUP - size);
        group.push(at === 0 && take === piece.byteLength ? piece : piece.subarray(at, at + take));
        size += take;
        at += take;
        if (size === WRITE_GROUP) {
          await queue(group, size);
          group = [];
          size = 0;
        }
      }
    }
    if (size > 0) await queue(group, size);
  }

  private writeGroup(group: readonly Uint8Array[], size: number): Promise<void> {
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise<void>((resolve, reject) => {
      // Corked, the pieces go out in one writev; the last one's callback says all of them were taken
      // (a failed write calls every pending callback with the error).
      this.socket.cork();
      const last = group.length - 1;
      for (let i = 0; i < last; i++) this.socket.write(group[i]!);
      this.socket.write(group[last]!, (err) => {
        if (err)
          reject(this.refusalError ?? new MigrationError(Errno.ECONNRESET, `migration connection: ${err.message}`));
        else {
          this.completed += size;
          resolve();
        }
      });
      this.socket.uncork();
    });
  }

  /** Waits for `run`; fails if the link closes, or if no group completes for `stallTimeoutMs`. */
  private async watch(run: Promise<void>): Promise<void> {
    const stall = this.options.stallTimeoutMs ?? 10_000;
    let timer: NodeJS.Timeout | undefined;
    let onClose: (() => void) | undefined;
    try {
      await Promise.race([
        run,
        new Promise<never>((_, reject) => {
          onClose = () =>
            reject(this.closedError ?? new MigrationError(Errno.ECONNRESET, 'migration connection closed'));
          if (this.socket.closed) onClose();
          else this.closeWatchers.add(onClose);
          let seen = this.completed;
          const arm = () => {
            timer = setTimeout(() => {
              if (this.completed > seen) {
                seen = this.completed;
                arm();
              } else
                reject(
                  new MigrationError(Errno.ETIMEDOUT, `the destination took no data for ${stall} ms: stalled link`),
                );
            }, stall);
          };
          arm();
        }),
      ]);
    } finally {
      clearTimeout(timer);
      if (onClose) this.closeWatchers.delete(onClose);
    }
  }

  async nextMessage(timeoutMs: number): Promise<ReturnPathMessage> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const m = this.inbox.shift();
      if (m) return m;
      if (this.closedError) throw this.closedError;
      const left = deadline - performance.now();
      if (left <= 0) throw new MigrationError(Errno.ETIMEDOUT, `no answer from the destination within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  }

  async sendMessage(m: ReturnPathMessage): Promise<void> {
    await this.write([encodeReturnPath(m)]);
  }

  refusal(): Error | null {
    return this.refusalError;
  }

  async end(): Promise<void> {
    if (this.socket.destroyed) return;
    this.socket.end();
    await once(this.socket, 'close').catch(() => {});
  }

  destroy(): void {
    this.socket.destroy();
  }
}

class FileOutgoing implements OutgoingStream {
  bytes = 0;
  private readonly limiter: RateLimiter;

  constructor(
    private readonly fh: FileHandle,
    options: TransportOptions,
  ) {
    this.limiter = new RateLimiter(options.maxBandwidth ?? (() => 0), options.signal);
  }

  /** Writes are chained: a caller may issue the next before the last resolved, and the file keeps their order. */
  private tail: Promise<void> = Promise.resolve();

  write(pieces: readonly Uint8Array[]): Promise<void> {
    const run = this.tail.then(() => this.writeNow(pieces));
    this.tail = run.catch(() => {});
    return run;
  }

  private async writeNow(pieces: readonly Uint8Array[]): Promise<void> {
    let n = 0;
    for (const p of pieces) n += p.byteLength;
    // writev may write short; keep going until every piece is out.
    let rest = pieces.filter((p) => p.byteLength > 0);
    while (rest.length > 0) {
      const { bytesWritten } = await this.fh.writev(rest as Uint8Array[]);
      let skip = bytesWritten;
      const next: Uint8Array[] = [];
      for (const p of rest) {
        if (skip >= p.byteLength) skip -= p.byteLength;
        else {
          next.push(p.subarray(skip));
          skip = 0;
        }
      }
      rest = next;
    }
    this.bytes += n;
    await this.limiter.take(n);
  }

  nextMessage(): Promise<ReturnPathMessage> {
    return Promise.reject(new MigrationError(Errno.ENOTSUP, 'a file has no return path'));
  }

  async sendMessage(): Promise<void> {
    throw new MigrationError(Errno.ENOTSUP, 'a file has no return path');
  }

  async end(): Promise<void> {
    await this.tail;
    await this.fh.sync();
    await this.fh.close();
  }

  destroy(): void {
    void this.fh.close().catch(() => {});
  }
}

/** Opens the outgoing side of a migration. */
export async function openOutgoing(uri: MigrationUri, options: TransportOptions = {}): Promise<OutgoingStream> {
  if (uri.kind === 'file') return new FileOutgoing(await open(uri.path, 'w', 0o600), options);
  const socket = connect({ host: uri.host, port: uri.port });
  socket.setNoDelay(true);
  const timeout = options.connectTimeoutMs ?? 10_000;
  let timer: NodeJS.Timeout | undefined;
  // A cancel ends the connect, and later any write or wait: the socket is destroyed with this error.
  const cancelled = () => new MigrationError(Errno.ECONNRESET, 'migration cancelled');
  const onAbort = () => socket.destroy(cancelled());
  if (options.signal?.aborted) onAbort();
  options.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    await Promise.race([
      once(socket, 'connect'),
      new Promise((_, reject) => {
        timer = setTimeout(
          () => reject(new MigrationError(Errno.ETIMEDOUT, `connecting to ${uri.host}:${uri.port} timed out`)),
          timeout,
        );
      }),
    ]);
  } catch (err) {
    options.signal?.removeEventListener('abort', onAbort);
    socket.destroy();
    const e = err as NodeJS.ErrnoException;
    throw err instanceof MigrationError
      ? err
      : new MigrationError(Errno.ECONNREFUSED, `cannot connect to ${uri.host}:${uri.port}: ${e.message}`);
  } finally {
    clearTimeout(timer);
  }
  socket.once('close', () => options.signal?.removeEventListener('abort', onAbort));
  return new TcpOutgoing(socket, options);
}
