// Helpers for the client tests: a scripted vfio-user server on a real listening socket (FdServer + our
// codecs, the test decides every reply), and `vfio-migrate serve` as a separate process.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from '../../src/abi/vfio-user/commands.ts';
import { HEADER_SIZE } from '../../src/abi/vfio-user/limits.ts';
import {
  decodeVersionRequest,
  encodeVersionReply,
  negotiateVersion,
  type ServerOffer,
} from '../../src/abi/vfio-user/version.ts';
import { VfioError } from '../../src/errors.ts';
import { FdServer, type FdSocket, MAX_FDS_PER_MESSAGE } from '../../src/native/fd-socket.ts';
import { Connection, closeFds } from '../../src/vfio-user/connection.ts';
import type { ReceivedMessage } from '../../src/vfio-user/framing.ts';

export const BIN = new URL('../../bin/vfio-migrate.js', import.meta.url).pathname;

export function tempDir(): { dir: string; remove(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-client-test-'));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A received message as the scripted server saw it (payload copied; fds left to the handler). */
export interface Seen {
  cmd: number;
  msgId: number;
  payload: Uint8Array;
  fds: number;
}

export type ScriptHandler = (m: ReceivedMessage, conn: Connection, srv: ScriptedServer) => void | Promise<void>;

export interface ScriptOptions {
  /** What the default VERSION handler offers (libvfio-user's values unless overridden). */
  offer?: Partial<ServerOffer>;
  /** Handlers by command; VERSION has a default (negotiateVersion), anything unhandled gets EINVAL. */
  handlers?: Partial<Record<number, ScriptHandler>>;
  /** Called for each raw accepted socket before any framing (to script non-vfio-user behaviour). */
  raw?: (socket: FdSocket) => void;
}

export const DEFAULT_OFFER: ServerOffer = {
  major: 0,
  minor: 2,
  maxMsgFds: 8,
  maxDataXferSize: 1 << 20,
  migrationPgsize: 4096,
  twinSocket: false,
};

export class ScriptedServer {
  readonly listener = new FdServer();
  readonly conns: Connection[] = [];
  readonly seen: Seen[] = [];
  readonly offer: ServerOffer;
  handlers: Partial<Record<number, ScriptHandler>>;
  private readonly tmp = tempDir();
  readonly path = join(this.tmp.dir, 'scripted.sock');

  constructor(private readonly options: ScriptOptions = {}) {
    this.offer = { ...DEFAULT_OFFER, ...options.offer };
    this.handlers = options.handlers ?? {};
    this.listener.on('connection', (socket) => this.accept(socket));
    this.listener.listen(this.path);
  }

  /** The most recent connection (tests use one client at a time). */
  get conn(): Connection {
    const c = this.conns[this.conns.length - 1];
    if (!c) throw new Error('no client connected yet');
    return c;
  }

  seenOf(cmd: number): Seen[] {
    return this.seen.filter((s) => s.cmd === cmd);
  }

  private accept(socket: FdSocket): void {
    if (this.options.raw) {
      this.options.raw(socket);
      return;
    }
    const conn = new Connection(socket, {
      maxMsgSize: 64 * 1024 * 1024 + 4 * HEADER_SIZE,
      maxFds: MAX_FDS_PER_MESSAGE,
      requestTimeoutMs: 5000,
    });
    this.conns.push(conn);
    conn.on('command', (m) => {
      this.seen.push({ cmd: m.header.cmd, msgId: m.header.msgId, payload: m.payload.slice(), fds: m.fds.length });
      const handler = this.handlers[m.header.cmd] ?? (m.header.cmd === Command.VERSION ? defaultVersion : undefined);
      if (!handler) {
        closeFds(m.fds);
        conn.replyError(m, 22);
        return;
      }
      Promise.resolve()
        .then(() => handler(m, conn, this))
        .catch((err: unknown) => {
          if (!conn.isClosed) conn.replyError(m, err instanceof VfioError ? err.errno : 5);
        })
        .finally(() => closeFds(m.fds));
    });
  }

  close(): void {
    for (const c of this.conns) c.close();
    this.listener.close();
    this.tmp.remove();
  }
}

const defaultVersion: ScriptHandler = (m, conn, srv) => {
  const n = negotiateVersion(decodeVersionRequest(m.payload), srv.offer);
  conn.reply(m, encodeVersionReply(n.reply));
};

export type { ServerProcess as ServeProcess } from '../support/server-process.ts';
/** `vfio-migrate serve --socket <tmp> ...args`, resolved once it prints that it is serving. */
export { startServer as startServe } from '../support/server-process.ts';

/** Runs the CLI to completion: exit code, stdout, stderr. */
export function runCli(args: string[], timeoutMs = 30_000): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    proc.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d;
    });
    proc.stderr.setEncoding('utf8').on('data', (d: string) => {
      err += d;
    });
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`vfio-migrate ${args.join(' ')} did not finish in ${timeoutMs} ms`));
    }, timeoutMs);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
}
