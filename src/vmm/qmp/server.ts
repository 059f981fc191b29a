// A QMP server: QEMU's greeting, capabilities negotiation, commands with QEMU's reply and error shapes,
// and events to every negotiated client. It never crashes on input: bad JSON gets a GenericError and the
// session goes on; a message over the size limit is answered and the client dropped; a client that stops
// reading is dropped once its unsent output passes a bound, so it cannot hold the VMM back.

import { once } from 'node:events';
import { chmodSync, existsSync, lstatSync, unlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { QmpError } from './errors.ts';
import { JsonSplitter } from './json-splitter.ts';
import { type ArgsSchema, checkArgs } from './schema.ts';

export interface QmpCommand {
  args: ArgsSchema;
  run: (args: Record<string, unknown>) => unknown | Promise<unknown>;
}

export interface QmpServerOptions {
  version?: { major: number; minor: number; micro: number };
  maxMessageBytes?: number;
  maxOutputBytes?: number;
}

interface Client {
  socket: Socket;
  negotiated: boolean;
  splitter: JsonSplitter;
  queue: Promise<void>;
}

export class QmpServer {
  private readonly clients = new Set<Client>();
  private readonly commands: Record<string, QmpCommand>;

  private constructor(
    private readonly server: Server,
    readonly path: string,
    commands: Record<string, QmpCommand>,
    private readonly options: QmpServerOptions,
  ) {
    this.commands = {
      ...commands,
      'query-version': {
        args: {},
        run: () => ({ qemu: options.version ?? { major: 9, minor: 0, micro: 0 }, package: 'vfio-migrate' }),
      },
      'query-commands': {
        args: {},
        run: () =>
          Object.keys(this.commands)
            .concat('qmp_capabilities')
            .map((name) => ({ name })),
      },
    };
    server.on('connection', (s) => this.accept(s));
  }

  /** Listens on a UNIX socket created mode 0600 (a stale socket file is replaced). */
  static async listen(
    path: string,
    commands: Record<string, QmpCommand>,
    options: QmpServerOptions = {},
  ): Promise<QmpServer> {
    if (existsSync(path) && lstatSync(path).isSocket()) unlinkSync(path);
    const server = createServer();
    // The socket file takes the process umask; a tight umask for the bind leaves no window of wider access.
    const old = process.umask(0o177);
    try {
      server.listen(path);
      await once(server, 'listening');
    } finally {
      process.umask(old);
    }
    chmodSync(path, 0o600);
    return new QmpServer(server, path, commands, options);
  }

  /** Sends an event to every client that finished capabilities negotiation. */
  emitEvent(event: string, data?: Record<string, unknown>): void {
    const now = Date.now();
    const msg = {
      event,
      ...(data ? { data } : {}),
      timestamp: { seconds: Math.floor(now / 1000), microseconds: (now % 1000) * 1000 },
    };
    for (const c of this.clients) if (c.negotiated) this.send(c, msg);
  }

  async close(): Promise<void> {
    for (const c of this.clients) c.socket.destroy();
    this.server.close();
    await once(this.server, 'close').catch(() => {});
  }

  private accept(socket: Socket): void {
    const c: Client = {
      socket,
      negotiated: false,
      splitter: new JsonSplitter(this.options.maxMessageBytes ?? 1 << 20),
      queue: Promise.resolve(),
    };
    this.clients.add(c);
    socket.setEncoding('utf8');
    socket.on('close', () => this.clients.delete(c));
    socket.on('error', () => socket.destroy());
    const v = this.options.version ?? { major: 9, minor: 0, micro: 0 };
    this.send(c, { QMP: { version: { qemu: v, package: 'vfio-migrate' }, capabilities: [] } });
    socket.on('data', (text: string) => {
      let texts: string[];
      try {
        texts = c.splitter.push(text);
      } catch (err) {
        this.send(c, { error: { class: 'GenericError', desc: (err as Error).message } });
        socket.end();
        return;
      }
      for (const t of texts) c.queue = c.queue.then(() => this.handle(c, t));
    });
  }

  private send(c: Client, msg: unknown): void {
    if (c.socket.destroyed) return;
    if (c.socket.writableLength > (this.options.maxOutputBytes ?? 4 << 20)) {
      c.socket.destroy();
      return;
    }
    c.socket.write(`${JSON.stringify(msg)}\r\n`);
  }

  private async handle(c: Client, text: string): Promise<void> {
    let req: unknown;
    try {
      req = JSON.parse(text);
    } catch (err) {
      this.send(c, { error: { class: 'GenericError', desc: `JSON parse error, ${(err as Error).message}` } });
      return;
    }
    const id = typeof req === 'object' && req !== null && 'id' in req ? (req as { id: unknown }).id : undefined;
    const reply = (body: Record<string, unknown>) => this.send(c, id === undefined ? body : { ...body, id });
    try {
      if (typeof req !== 'object' || req === null || Array.isArray(req))
        throw new QmpError('GenericError', 'QMP input must be a JSON object');
      const r = req as Record<string, unknown>;
      for (const k of Object.keys(r)) {
        if (k !== 'execute' && k !== 'arguments' && k !== 'id')
          throw new QmpError('GenericError', `QMP input member '${k}' is unexpected`);
      }
      if (typeof r.execute !== 'string') throw new QmpError('GenericError', "QMP input lacks member 'execute'");
      const name = r.execute;
      if (name === 'qmp_capabilities') {
        if (c.negotiated)
          throw new QmpError('CommandNotFound', 'Capabilities negotiation is already complete, command ignored');
        checkArgs({ enable: { type: 'str', optional: true } }, r.arguments);
        c.negotiated = true;
        reply({ return: {} });
        return;
      }
      if (!c.negotiated)
        throw new QmpError('CommandNotFound', "Expecting capabilities negotiation with 'qmp_capabilities'");
      const cmd = this.commands[name];
      if (!cmd) throw new QmpError('CommandNotFound', `The command ${name} has not been found`);
      const result = await cmd.run(checkArgs(cmd.args, r.arguments));
      reply({ return: result ?? {} });
    } catch (err) {
      const e =
        err instanceof QmpError ? err : new QmpError('GenericError', err instanceof Error ? err.message : String(err));
      reply({ error: { class: e.errorClass, desc: e.desc } });
    }
  }
}
