// A QMP client: reads the greeting, negotiates capabilities, runs commands (matched to replies by id),
// and collects events. Used by the demo, the CLI and tests; any QMP client written for QEMU works too.

import { EventEmitter, once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { QmpError, type QmpErrorClass } from './errors.ts';
import { JsonSplitter } from './json-splitter.ts';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

export class QmpClient extends EventEmitter<{ event: [QmpEvent]; close: [] }> {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  readonly events: QmpEvent[] = [];
  greeting: unknown;

  private constructor(
    private readonly socket: Socket,
    private readonly timeoutMs: number,
  ) {
    super();
  }

  static async connect(path: string, options: { timeoutMs?: number } = {}): Promise<QmpClient> {
    const socket = connect(path);
    const client = new QmpClient(socket, options.timeoutMs ?? 10_000);
    const splitter = new JsonSplitter(16 << 20);
    let greeted: (v: unknown) => void = () => {};
    const greeting = new Promise((r) => {
      greeted = r;
    });
    socket.setEncoding('utf8');
    socket.on('data', (text: string) => {
      for (const t of splitter.push(text)) {
        const msg = JSON.parse(t) as Record<string, unknown>;
        if ('QMP' in msg) greeted(msg);
        else if ('event' in msg) {
          client.events.push(msg as unknown as QmpEvent);
          client.emit('event', msg as unknown as QmpEvent);
        } else {
          const p = client.pending.get(msg.id as number);
          if (!p) continue;
          client.pending.delete(msg.id as number);
          if ('error' in msg) {
            const e = msg.error as { class: QmpErrorClass; desc: string };
            p.reject(new QmpError(e.class, e.desc));
          } else p.resolve(msg.return);
        }
      }
    });
    socket.on('close', () => {
      for (const p of client.pending.values()) p.reject(new Error('QMP connection closed'));
      client.pending.clear();
      client.emit('close');
    });
    socket.on('error', () => {});
    await Promise.race([once(socket, 'connect'), once(socket, 'error').then(([e]) => Promise.reject(e))]);
    client.greeting = await withTimeout(greeting, client.timeoutMs, 'QMP greeting');
    await client.execute('qmp_capabilities');
    return client;
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    const id = this.nextId++;
    const p = new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
    });
    this.socket.write(`${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id })}\n`);
    return withTimeout(p, this.timeoutMs, `QMP ${command}`);
  }

  /** Waits for an event (already received ones count) matching `pred`. */
  waitForEvent(
    name: string,
    pred: (e: QmpEvent) => boolean = () => true,
    timeoutMs = this.timeoutMs,
  ): Promise<QmpEvent> {
    const seen = this.events.find((e) => e.event === name && pred(e));
    if (seen) return Promise.resolve(seen);
    return withTimeout(
      new Promise<QmpEvent>((resolve) => {
        const on = (e: QmpEvent) => {
          if (e.event === name && pred(e)) {
            this.off('event', on);
            resolve(e);
          }
        };
        this.on('event', on);
      }),
      timeoutMs,
      `QMP event ${name}`,
    );
  }

  close(): void {
    this.socket.destroy();
  }
}

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>(
        (_, reject) => (t = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms)),
      ),
    ]);
  } finally {
    clearTimeout(t);
  }
}
