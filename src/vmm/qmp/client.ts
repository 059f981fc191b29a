// A QMP client: reads the greeting, negotiates capabilities, runs commands (replies matched by id),
// and delivers events. Works against this project's server and against QEMU.

import { EventEmitter } from 'node:events';
import { connect, type Socket } from 'node:net';
import {
  encodeJson,
  JsonMessageStream,
  parseMessage,
  QmpError,
  type QmpErrorClass,
  type QmpEvent,
  type QmpGreeting,
  type StreamItem,
  toJs,
  type VersionInfo,
} from './protocol.ts';

export type { QmpEvent, QmpGreeting };

/** A connect, command or event wait that did not finish in time. */
export class QmpTimeoutError extends Error {
  override readonly name = 'QmpTimeoutError';
}

export interface QmpClientOptions {
  /** Deadline for connecting, the greeting and negotiation; also the default for commands and event waits (10 s). */
  timeoutMs?: number;
  /** Default deadline for one command (default timeoutMs). */
  commandTimeoutMs?: number;
  /** Largest message taken from the server (default 64 MiB, QEMU's own input limit). */
  maxMessageBytes?: number;
  /** Events kept for waitForEvent until one takes them (default 1024; the oldest are let go first). */
  eventBacklog?: number;
}

interface Pending {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

interface Waiter {
  name: string;
  predicate: (e: QmpEvent) => boolean;
  resolve: (e: QmpEvent) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class QmpClient extends EventEmitter<{ event: [QmpEvent]; close: [Error | undefined] }> {
  /** The server's greeting. */
  greeting!: QmpGreeting;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  /** Ids sent and not yet answered, in order (timed-out ones too: an id-less reply answers the oldest). */
  private readonly unanswered: number[] = [];
  private readonly backlog: QmpEvent[] = [];
  private readonly waiters: Waiter[] = [];
  private readonly stream: JsonMessageStream;
  private closeReason: Error | undefined;
  private isClosed = false;
  private onGreeting: ((g: QmpGreeting) => void) | undefined;
  private readonly greeted: Promise<QmpGreeting>;
  private readonly timeoutMs: number;
  private readonly commandTimeoutMs: number;
  private readonly eventBacklog: number;

  private constructor(
    private readonly socket: Socket,
    options: QmpClientOptions,
  ) {
    super();
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.commandTimeoutMs = options.commandTimeoutMs ?? this.timeoutMs;
    this.eventBacklog = options.eventBacklog ?? 1024;
    this.stream = new JsonMessageStream(options.maxMessageBytes ?? 64 << 20);
    this.greeted = new Promise<QmpGreeting>((resolve, reject) => {
      this.onGreeting = resolve;
      this.once('close', (err) => reject(err ?? new Error('QMP connection closed before the greeting')));
    });
    this.greeted.catch(() => {});
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => {
      this.closeReason ??= err;
    });
    socket.on('close', () => this.shutdown(this.closeReason ?? new Error('QMP connection closed by the server')));
  }

  /** Connects to a QMP socket, reads the greeting and negotiates (no capabilities are asked for). */
  static async connect(path: string, options: QmpClientOptions = {}): Promise<QmpClient> {
    const client = new QmpClient(connect(path), options);
    try {
      await withTimeout(
        (async () => {
          client.greeting = await client.greeted;
          await client.execute('qmp_capabilities', undefined, { timeoutMs: Number.MAX_SAFE_INTEGER });
        })(),
        client.timeoutMs,
        `QMP connect to ${path}: no greeting and negotiation within ${client.timeoutMs} ms`,
      );
    } catch (err) {
      client.shutdown(err as Error);
      throw err;
    }
    return client;
  }

  /** The server's version, from its greeting. */
  get version(): VersionInfo {
    return this.greeting.QMP.version;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /**
   * Runs a command; resolves with its `return` member, rejects with QmpError (class and desc as sent),
   * QmpTimeoutError, or an Error when the connection closes first. A reply that comes after the
   * timeout is dropped.
   */
  execute<T = unknown>(
    command: string,
    args?: Record<string, unknown>,
    options: { timeoutMs?: number } = {},
  ): Promise<T> {
    if (this.isClosed) return Promise.reject(new Error(`QMP ${command}: connection closed`));
    const id = this.nextId++;
    let line: string;
    try {
      line = `${encodeJson({ execute: command, ...(args !== undefined ? { arguments: args } : {}), id })}\n`;
    } catch (err) {
      return Promise.reject(err);
    }
    const ms = options.timeoutMs ?? this.commandTimeoutMs;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(
        () => {
          this.pending.delete(id);
          reject(new QmpTimeoutError(`QMP ${command}: no reply within ${ms} ms`));
        },
        Math.min(ms, 2 ** 31 - 1),
      );
      timer.unref();
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.unanswered.push(id);
      this.socket.write(line);
    });
  }

  /**
   * Resolves with the oldest event named `name` that satisfies `predicate` and that no earlier
   * waitForEvent took: events are kept from the moment of connecting (up to eventBacklog), so an event
   * sent before its command's reply (STOP before stop's return) is not missed, and each event satisfies
   * one wait only.
   */
  waitForEvent(
    name: string,
    predicate: (e: QmpEvent) => boolean = () => true,
    timeoutMs: number = this.timeoutMs,
  ): Promise<QmpEvent> {
    const i = this.backlog.findIndex((e) => e.event === name && predicate(e));
    if (i >= 0) return Promise.resolve(this.backlog.splice(i, 1)[0]!);
    if (this.isClosed) return Promise.reject(new Error(`QMP event ${name}: connection closed`));
    return new Promise<QmpEvent>((resolve, reject) => {
      const w: Waiter = {
        name,
        predicate,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters.splice(this.waiters.indexOf(w), 1);
          reject(new QmpTimeoutError(`QMP event ${name}: none within ${timeoutMs} ms`));
        }, timeoutMs),
      };
      w.timer.unref();
      this.waiters.push(w);
    });
  }

  /** Closes the connection; commands and waits in progress reject. */
  close(): void {
    this.shutdown(undefined);
  }

  private onData(chunk: Buffer): void {
    if (this.isClosed) return;
    this.stream.push(chunk);
    for (let item = this.stream.next(); item && !this.isClosed; item = this.stream.next()) this.onItem(item);
  }

  private onItem(item: StreamItem): void {
    if (item.kind !== 'message') {
      this.shutdown(new Error(`QMP server sent bad input: ${item.desc}`));
      return;
    }
    let msg: Record<string, unknown>;
    try {
      const v = toJs(parseMessage(item));
      if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('a message is not a JSON object');
      msg = v as Record<string, unknown>;
    } catch (err) {
      this.shutdown(new Error(`QMP server sent bad input: ${(err as Error).message}`));
      return;
    }
    if ('QMP' in msg) this.onGreeting?.(msg as unknown as QmpGreeting);
    else if ('event' in msg) this.onEvent(msg as unknown as QmpEvent);
    else if ('return' in msg || 'error' in msg) this.onReply(msg);
  }

  private onReply(msg: Record<string, unknown>): void {
    let id: number | undefined;
    if ('id' in msg) {
      id = msg.id as number;
      const at = this.unanswered.indexOf(id);
      if (at < 0) return; // not ours
      this.unanswered.splice(at, 1);
    } else {
      // QEMU answers a request it could not read as a request (bad JSON, no object) without an id; this
      // client sends one request per message, so such a reply is the oldest one's.
      id = this.unanswered.shift();
      if (id === undefined) return;
    }
    const p = this.pending.get(id);
    if (!p) return; // timed out
    this.pending.delete(id);
    clearTimeout(p.timer);
    if ('error' in msg) {
      const e = (msg.error ?? {}) as { class?: unknown; desc?: unknown };
      p.reject(new QmpError(String(e.class ?? 'GenericError') as QmpErrorClass, String(e.desc ?? '')));
    } else {
      p.resolve(msg.return);
    }
  }

  private onEvent(e: QmpEvent): void {
    this.emit('event', e);
    for (let i = 0; i < this.waiters.length; i++) {
      const w = this.waiters[i]!;
      if (w.name !== e.event) continue;
      let match: boolean;
      try {
        match = w.predicate(e);
      } catch (err) {
        this.waiters.splice(i--, 1);
        clearTimeout(w.timer);
        w.reject(err as Error);
        continue;
      }
      if (match) {
        this.waiters.splice(i, 1);
        clearTimeout(w.timer);
        w.resolve(e);
        return;
      }
    }
    this.backlog.push(e);
    if (this.backlog.length > this.eventBacklog) this.backlog.shift();
  }

  private shutdown(reason: Error | undefined): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.socket.destroy();
    const err = reason ?? new Error('QMP connection closed');
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new Error(`QMP ${p.command}: ${err.message}`));
    }
    this.pending.clear();
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(new Error(`QMP event ${w.name}: ${err.message}`));
    }
    this.emit('close', reason);
  }
}

async function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new QmpTimeoutError(message)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
