// A QMP server on a UNIX socket: QEMU's greeting, capabilities negotiation per client, commands with
// QEMU's reply and error shapes, and events to every negotiated client.
//
// Robustness rules:
//  - Input is never trusted: a lexical or syntax error, a non-object, a bad member or bad arguments each
//    get an error reply and the session goes on; a message over maxMessageBytes gets one and the client
//    is disconnected (its stream cannot be resynchronised cheaply).
//  - Commands run one at a time across all clients (as QEMU's big lock has it), taken round-robin from
//    each client's queue (at most 8 parsed requests; further input waits unparsed, and the socket is
//    paused when that backs up too).
//  - A client that does not read is throttled first (no more of its requests are read while its unsent
//    output is over a quarter of maxOutputBytes) and dropped once its unsent output (events pile up)
//    passes maxOutputBytes. Writes never block: nobody waits for a slow client.

import { chmodSync, lstatSync, mkdtempSync, readFileSync, renameSync, rmSync, unlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { isMainThread } from 'node:worker_threads';
import {
  type CommandInfo,
  QMP_CAPABILITIES_ARGS,
  type QmpCommand,
  type QmpCommandContext,
  type QmpEventMap,
  type QmpVmmBackend,
  vmmCommands,
} from './commands.ts';
import {
  checkRequest,
  DEFAULT_MAX_MESSAGE_BYTES,
  eventMessage,
  frame,
  greetingMessage,
  JsonMessageStream,
  parseMessage,
  QmpError,
  type QmpRequest,
  QmpRequestError,
  type QValue,
  replyMessage,
  type StreamItem,
  type VersionInfo,
  type VersionTriple,
  visitArgs,
} from './protocol.ts';

export type { QmpCommand, QmpCommandContext, QmpVmmBackend } from './commands.ts';

/** The QEMU version announced: the QAPI shapes served are QEMU 8.2's. */
export const QEMU_VERSION: VersionTriple = { major: 8, minor: 2, micro: 0 };

export interface QmpServerOptions {
  /** Announced in the greeting and query-version (default QEMU_VERSION). */
  version?: VersionTriple;
  /** VersionInfo's `package` (default "vfio-migrate VERSION"). */
  package?: string;
  /** Largest incoming message, whitespace inside it included (default 1 MiB). */
  maxMessageBytes?: number;
  /** Unsent output past which a client is dropped (default 8 MiB). */
  maxOutputBytes?: number;
  /** More commands, e.g. vendor `x-` ones; they are listed by query-commands. */
  commands?: Record<string, QmpCommand>;
  /** How long close() lets clients take their last output before cutting them off (default 1000 ms). */
  closeGraceMs?: number;
  /** Told about dropped clients and internal faults. */
  log?: (line: string) => void;
}

/** Parsed requests a client may have waiting; further input stays unparsed (QEMU's queue is 8 too). */
const QUEUE_MAX = 8;
/** Unparsed input past which a client with a full queue is paused. */
const UNREAD_HIGH = 64 << 10;
/** Commands run back to back before other I/O gets a turn. */
const BATCH = 32;
/** Longest UNIX socket path (sun_path less its NUL). */
const MAX_SOCKET_PATH = 107;

interface Peer {
  readonly id: number;
  readonly socket: Socket;
  readonly stream: JsonMessageStream;
  readonly queue: StreamItem[];
  negotiated: boolean;
  /** In the server's ready list. */
  scheduled: boolean;
  /** One of its commands is running. */
  busy: boolean;
  /** Closed, dropped or being closed: nothing more is read or run. */
  gone: boolean;
  /** The client ended its side: answer what is queued, then end ours. */
  eof: boolean;
  graceTimer?: NodeJS.Timeout;
}

function isBackend(x: QmpVmmBackend | Record<string, QmpCommand>): x is QmpVmmBackend {
  const b = x as Partial<QmpVmmBackend>;
  return typeof b.queryStatus === 'function' && typeof b.queryMigrate === 'function';
}

let cachedPackage: string | undefined;
function defaultPackage(): string {
  if (cachedPackage === undefined) {
    let v = 'unknown';
    try {
      v = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')).version ?? v;
    } catch {}
    cachedPackage = `vfio-migrate ${v}`;
  }
  return cachedPackage;
}

function isThenable(x: unknown): x is PromiseLike<unknown> {
  return typeof (x as { then?: unknown } | null)?.then === 'function';
}

function errorBody(err: unknown): { class: string; desc: string } {
  if (err instanceof QmpError) return { class: err.errorClass, desc: err.desc };
  if (err instanceof Error) return { class: 'GenericError', desc: err.message };
  return { class: 'GenericError', desc: String(err) };
}

export class QmpServer {
  private readonly peers = new Set<Peer>();
  private readonly commands = new Map<string, QmpCommand>();
  private readonly ready: Peer[] = [];
  private running = false;
  private nextPeerId = 1;
  private closing: Promise<void> | undefined;
  private identity: { dev: number; ino: number } | undefined;
  private readonly versionInfo: VersionInfo;
  private readonly maxMessageBytes: number;
  private readonly maxOutputBytes: number;

  private constructor(
    private readonly server: Server,
    /** The socket path as given. */
    readonly path: string,
    target: QmpVmmBackend | Record<string, QmpCommand>,
    private readonly options: QmpServerOptions,
  ) {
    this.versionInfo = { qemu: { ...(options.version ?? QEMU_VERSION) }, package: options.package ?? defaultPackage() };
    this.maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    this.maxOutputBytes = options.maxOutputBytes ?? 8 << 20;
    const base = isBackend(target) ? vmmCommands(target) : target;
    for (const [name, cmd] of Object.entries({ ...base, ...options.commands })) this.commands.set(name, cmd);
    this.commands.set('query-version', { args: {}, run: () => this.versionInfo });
    this.commands.set('query-commands', {
      args: {},
      run: (): CommandInfo[] => ['qmp_capabilities', ...this.commands.keys()].sort().map((name) => ({ name })),
    });
    server.on('connection', (s) => this.accept(s));
    server.on('error', (err) => this.log(`QMP listener: ${err.message}`));
  }

  /**
   * Listens on a UNIX socket. `target` is the VMM backend (the standard commands are served on it), or,
   * as before the backend interface existed, a table of commands to serve as they are.
   *
   * The socket is created mode 0600 with no window of wider access: it is bound inside a fresh 0700
   * directory beside `path`, chmodded, and renamed onto `path` (replacing a stale socket there; any
   * other kind of file is refused). Where that temporary path would be too long for a socket address,
   * it is bound directly under umask 0177 instead (main thread only).
   */
  static async listen(
    path: string,
    target: QmpVmmBackend | Record<string, QmpCommand>,
    options: QmpServerOptions = {},
  ): Promise<QmpServer> {
    const server = createServer({ allowHalfOpen: true });
    const qmp = new QmpServer(server, path, target, options);
    await qmp.bind(resolve(path));
    return qmp;
  }

  /** Clients connected now (negotiated or not). */
  get clientCount(): number {
    return this.peers.size;
  }

  /** Sends an event to every client that has finished capabilities negotiation. */
  emit<K extends keyof QmpEventMap>(event: K, ...data: QmpEventMap[K] extends undefined ? [] : [QmpEventMap[K]]): void;
  emit(event: string, data?: Record<string, unknown>): void;
  emit(event: string, data?: unknown): void {
    let line: string;
    try {
      line = frame(eventMessage(event, data));
    } catch (err) {
      this.log(`QMP event ${event} could not be encoded: ${(err as Error).message}`);
      return;
    }
    for (const p of this.peers) if (p.negotiated && !p.gone) this.write(p, line);
  }

  /** emit() under its earlier name. */
  emitEvent(event: string, data?: Record<string, unknown>): void {
    this.emit(event, data);
  }

  /**
   * Stops listening, removes the socket file, and ends every client after its queued output (cut off
   * after closeGraceMs). Resolves when all connections are closed.
   */
  close(): Promise<void> {
    this.closing ??= new Promise<void>((done) => {
      this.server.close(() => done());
      this.unlinkSocket();
      for (const p of this.peers) this.endPeer(p);
    });
    return this.closing;
  }

  private log(line: string): void {
    this.options.log?.(line);
  }

  private async bind(abs: string): Promise<void> {
    let existing: ReturnType<typeof lstatSync> | undefined;
    try {
      existing = lstatSync(abs);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    if (existing && !existing.isSocket()) throw new Error(`${abs} exists and is not a socket; not replacing it`);
    const dir = mkdtempSync(join(dirname(abs), '.qmp-')); // mode 0700
    try {
      const tmp = join(dir, 's');
      if (Buffer.byteLength(tmp) <= MAX_SOCKET_PATH) {
        await this.listenOn(tmp, (listen) => listen());
        chmodSync(tmp, 0o600);
        renameSync(tmp, abs);
      } else {
        if (!isMainThread) throw new Error(`QMP socket path ${abs} is too long to bind privately from a worker`);
        if (existing) unlinkSync(abs);
        // The bind happens inside server.listen(), synchronously: the umask covers exactly that.
        await this.listenOn(abs, (listen) => {
          const old = process.umask(0o177);
          try {
            listen();
          } finally {
            process.umask(old);
          }
        });
      }
    } catch (err) {
      this.server.close();
      throw err;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    const st = lstatSync(abs);
    this.identity = { dev: st.dev, ino: st.ino };
  }

  private listenOn(path: string, around: (listen: () => void) => void): Promise<void> {
    return new Promise<void>((ok, fail) => {
      const onError = (err: Error) => fail(err);
      this.server.once('error', onError);
      around(() =>
        this.server.listen(path, () => {
          this.server.off('error', onError);
          ok();
        }),
      );
    });
  }

  /** Removes the socket file if it is still the one this server made. */
  private unlinkSocket(): void {
    if (!this.identity) return;
    try {
      const abs = resolve(this.path);
      const st = lstatSync(abs);
      if (st.dev === this.identity.dev && st.ino === this.identity.ino) unlinkSync(abs);
    } catch {}
    this.identity = undefined;
  }

  private accept(socket: Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    const p: Peer = {
      id: this.nextPeerId++,
      socket,
      stream: new JsonMessageStream(this.maxMessageBytes),
      queue: [],
      negotiated: false,
      scheduled: false,
      busy: false,
      gone: false,
      eof: false,
    };
    this.peers.add(p);
    socket.on('data', (chunk: Buffer) => {
      if (p.gone) return;
      p.stream.push(chunk);
      this.pump(p);
    });
    socket.on('end', () => {
      p.eof = true;
      p.stream.end();
      this.pump(p);
      this.finishIfDone(p);
    });
    socket.on('drain', () => this.pump(p));
    socket.on('error', () => {}); // 'close' follows
    socket.on('close', () => {
      p.gone = true;
      clearTimeout(p.graceTimer);
      this.peers.delete(p);
    });
    this.write(p, frame(greetingMessage(this.versionInfo)));
  }

  /** Moves parsed items into the client's queue and sets its flow control. */
  private pump(p: Peer): void {
    if (p.gone) return;
    const s = p.socket;
    if (s.writableLength > this.maxOutputBytes / 4) {
      s.pause(); // 'drain' pumps again
      return;
    }
    while (p.queue.length < QUEUE_MAX) {
      const item = p.stream.next();
      if (!item) break;
      p.queue.push(item);
      if (item.kind === 'overflow') break;
    }
    if (p.queue.length > 0) this.schedule(p);
    if (p.queue.length >= QUEUE_MAX && p.stream.unreadBytes > UNREAD_HIGH) s.pause();
    else if (!p.eof && s.isPaused()) s.resume();
    this.finishIfDone(p);
  }

  private schedule(p: Peer): void {
    if (!p.scheduled) {
      p.scheduled = true;
      this.ready.push(p);
    }
    if (!this.running) {
      this.running = true;
      queueMicrotask(() => void this.drain());
    }
  }

  /** Runs queued items one at a time, one per client in turn. */
  private async drain(): Promise<void> {
    let batch = 0;
    try {
      while (this.ready.length > 0) {
        const p = this.ready.shift()!;
        p.scheduled = false;
        if (p.gone) continue;
        const item = p.queue.shift();
        if (!item) continue;
        p.busy = true;
        try {
          const pending = this.process(p, item);
          if (pending) await pending;
        } catch (err) {
          this.log(`QMP internal fault: ${(err as Error).stack ?? err}`);
        } finally {
          p.busy = false;
        }
        this.pump(p);
        if (++batch >= BATCH) {
          batch = 0;
          await new Promise<void>((r) => setImmediate(r));
        }
      }
    } finally {
      this.running = false;
    }
  }

  private finishIfDone(p: Peer): void {
    if (p.eof && !p.gone && !p.busy && p.queue.length === 0 && p.stream.finished) p.socket.end();
  }

  private process(p: Peer, item: StreamItem): Promise<void> | undefined {
    if (item.kind === 'error') {
      this.reply(p, false, null, { error: { class: 'GenericError', desc: item.desc } });
      return undefined;
    }
    if (item.kind === 'overflow') {
      this.reply(p, false, null, { error: { class: 'GenericError', desc: item.desc } });
      this.log(`QMP client ${p.id}: message over ${this.maxMessageBytes} bytes; disconnecting it`);
      this.endPeer(p);
      return undefined;
    }
    let req: QmpRequest;
    try {
      req = checkRequest(parseMessage(item));
    } catch (err) {
      const r = err instanceof QmpRequestError ? err : undefined;
      this.reply(p, r?.hasId ?? false, r?.id ?? null, { error: errorBody(err) });
      return undefined;
    }
    return this.dispatch(p, req);
  }

  private dispatch(p: Peer, req: QmpRequest): Promise<void> | undefined {
    const fail = (err: unknown) => this.reply(p, req.hasId, req.id, { error: errorBody(err) });
    try {
      if (req.execute === 'qmp_capabilities') {
        const a = visitArgs(QMP_CAPABILITIES_ARGS, req.arguments);
        if (p.negotiated) {
          throw new QmpError('CommandNotFound', 'Capabilities negotiation is already complete, command ignored');
        }
        const enable = (a.enable as string[] | undefined) ?? [];
        // No capability is offered (out-of-band execution is not implemented).
        if (enable.length > 0) throw new QmpError('GenericError', `Capability '${enable[0]}' not available`);
        p.negotiated = true;
        this.reply(p, req.hasId, req.id, { return: {} });
        return undefined;
      }
      if (!p.negotiated) {
        throw new QmpError('CommandNotFound', "Expecting capabilities negotiation with 'qmp_capabilities'");
      }
      const cmd = this.commands.get(req.execute);
      if (!cmd) throw new QmpError('CommandNotFound', `The command ${req.execute} has not been found`);
      const args = visitArgs(cmd.args, req.arguments);
      const after: (() => void)[] = [];
      const ctx: QmpCommandContext = {
        afterReply: (fn) => void after.push(fn),
        emit: (event, data) => this.emit(event, data),
      };
      const done = (result: unknown) => {
        this.reply(p, req.hasId, req.id, { return: result ?? {} }, after.length ? () => this.runAll(after) : undefined);
      };
      const r = cmd.run(args, ctx);
      if (isThenable(r)) return Promise.resolve(r).then(done, fail);
      done(r);
    } catch (err) {
      fail(err);
    }
    return undefined;
  }

  private runAll(fns: (() => void)[]): void {
    for (const fn of fns) {
      try {
        fn();
      } catch (err) {
        this.log(`QMP after-reply hook failed: ${(err as Error).message}`);
      }
    }
  }

  /** Sends a reply; `flushed` runs once it is written out (or cannot be). */
  private reply(
    p: Peer,
    hasId: boolean,
    id: QValue,
    body: { return: unknown } | { error: { class: string; desc: string } },
    flushed?: () => void,
  ): void {
    let line: string;
    try {
      line = frame(replyMessage(body, hasId, id));
    } catch (err) {
      const desc = `the command's result could not be encoded: ${(err as Error).message}`;
      line = frame(replyMessage({ error: { class: 'GenericError', desc } }, hasId, id));
    }
    this.write(p, line, flushed);
  }

  private write(p: Peer, line: string, flushed?: () => void): void {
    const s = p.socket;
    if (p.gone || !s.writable) {
      if (flushed) setImmediate(flushed);
      return;
    }
    if (s.writableLength > this.maxOutputBytes) {
      this.log(`QMP client ${p.id}: ${s.writableLength} bytes unread; dropping it`);
      this.drop(p);
      if (flushed) setImmediate(flushed);
      return;
    }
    if (flushed) s.write(line, () => flushed());
    else s.write(line);
  }

  private drop(p: Peer): void {
    p.gone = true;
    p.queue.length = 0;
    p.socket.destroy();
    this.peers.delete(p);
  }

  /** Ends the connection after its queued output; cuts it off if that takes too long. */
  private endPeer(p: Peer): void {
    if (p.gone) return;
    // Input after this is read and ignored, so the client's hang-up is seen and the connection closes.
    p.gone = true;
    p.queue.length = 0;
    p.socket.resume();
    p.socket.end();
    p.graceTimer = setTimeout(() => p.socket.destroy(), this.options.closeGraceMs ?? 1000);
    p.graceTimer.unref();
  }
}
