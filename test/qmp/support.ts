// Test support for the QMP tests: a raw socket peer that reads QMP lines, a small VMM backend object,
// and temporary directories.
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type {
  MigrateSetParameters,
  MigrationInfo,
  MigrationParameters,
  MigrationUri,
  QmpVmmBackend,
  RunState,
} from '../../src/vmm/qmp/commands.ts';
import { QmpError } from '../../src/vmm/qmp/protocol.ts';
import type { QmpServer } from '../../src/vmm/qmp/server.ts';

/** query-migrate-capabilities' elements and migrate-set-capabilities' `capabilities` elements. */
type CapabilityStatus = { capability: string; state: boolean };

export function tempDir(): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'qmp-test-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export type Msg = Record<string, unknown> & {
  return?: unknown;
  error?: { class: string; desc: string };
  id?: unknown;
  event?: string;
  data?: Record<string, unknown>;
  QMP?: unknown;
};

/** A QMP peer with no client logic: writes what it is given, parses each CRLF-terminated line it gets. */
export class RawPeer {
  readonly messages: Msg[] = [];
  private buf = '';
  private waiting: (() => void) | undefined;
  closed = false;
  readonly whenClosed: Promise<void>;

  private constructor(readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (text: string) => {
      this.buf += text;
      for (let nl = this.buf.indexOf('\r\n'); nl >= 0; nl = this.buf.indexOf('\r\n')) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 2);
        this.messages.push(JSON.parse(line) as Msg);
      }
      this.waiting?.();
    });
    socket.on('error', () => {});
    this.whenClosed = new Promise((r) =>
      socket.on('close', () => {
        this.closed = true;
        this.waiting?.();
        r();
      }),
    );
  }

  static async connect(path: string, options: { negotiate?: boolean } = {}): Promise<RawPeer> {
    const socket = connect(path);
    await new Promise<void>((ok, fail) => {
      socket.once('connect', ok);
      socket.once('error', fail);
    });
    const peer = new RawPeer(socket);
    const greeting = await peer.next();
    if (!greeting.QMP) throw new Error(`expected a greeting, got ${JSON.stringify(greeting)}`);
    if (options.negotiate) {
      peer.send('{"execute": "qmp_capabilities"}');
      const r = await peer.next();
      if (!('return' in r)) throw new Error(`negotiation failed: ${JSON.stringify(r)}`);
    }
    return peer;
  }

  send(data: string | Uint8Array): void {
    this.socket.write(data);
  }

  /** The next message (events included), waiting up to timeoutMs (a safety net against a hang). */
  async next(timeoutMs = 60_000): Promise<Msg> {
    const deadline = Date.now() + timeoutMs;
    while (this.messages.length === 0) {
      if (this.closed) throw new Error('connection closed');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no message within ${timeoutMs} ms`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiting = () => {
          clearTimeout(t);
          r();
        };
      });
      this.waiting = undefined;
    }
    return this.messages.shift()!;
  }

  /** The next reply (return or error), skipping events. */
  async reply(timeoutMs = 60_000): Promise<Msg> {
    for (;;) {
      const m = await this.next(timeoutMs);
      if (!('event' in m)) return m;
    }
  }

  /** Sends one request and returns its reply. */
  async request(text: string): Promise<Msg> {
    this.send(text);
    return this.reply();
  }

  /** Resolves false if a message arrives within ms, true if none does. */
  async quiet(ms: number): Promise<boolean> {
    if (this.messages.length > 0) return false;
    await new Promise((r) => setTimeout(r, ms));
    return this.messages.length === 0;
  }

  close(): void {
    this.socket.destroy();
  }
}

/** A VMM stand-in that keeps its state in plain fields and logs every call. */
export class TestBackend implements QmpVmmBackend {
  calls: string[] = [];
  status: RunState = 'running';
  migration: MigrationInfo = {};
  params: MigrationParameters = {
    'downtime-limit': 300,
    'max-bandwidth': 0,
    'avail-switchover-bandwidth': 0,
    'multifd-channels': 2,
    'x-multifd-io': 'auto',
  };
  readonly capabilityNames = ['multifd'] as const;
  caps: CapabilityStatus[] = [{ capability: 'multifd', state: false }];
  lastTarget: MigrationUri | undefined;
  quits = 0;
  /** Set to make stop() wait for this promise. */
  stopGate: Promise<void> | undefined;
  server: QmpServer | undefined;

  migrate(uri: string, target: MigrationUri): void {
    this.calls.push(`migrate ${uri}`);
    if (this.migration.status === 'active')
      throw new QmpError('GenericError', "There's a migration process in progress");
    this.lastTarget = target;
    this.migration = { status: 'active', 'total-time': 0.4 };
    this.server?.emit('MIGRATION', { status: 'active' });
  }

  migrateIncoming(uri: string, source: MigrationUri): void {
    this.calls.push(`migrate-incoming ${uri}`);
    this.lastTarget = source;
  }

  queryMigrate(): MigrationInfo {
    return this.migration;
  }

  migrateCancel(): void {
    this.calls.push('migrate_cancel');
    if (this.migration.status === 'active') {
      this.migration = { status: 'cancelled' };
      this.server?.emit('MIGRATION', { status: 'cancelled' });
    }
  }

  setMigrationParameters(p: MigrateSetParameters): void {
    this.calls.push(`set ${JSON.stringify(p)}`);
    Object.assign(this.params, p);
  }

  queryMigrationParameters(): MigrationParameters {
    return { ...this.params };
  }

  setMigrationCapabilities(caps: readonly CapabilityStatus[]): void {
    this.calls.push(`caps ${JSON.stringify(caps)}`);
    if (this.migration.status === 'active')
      throw new QmpError('GenericError', "There's a migration process in progress");
    for (const c of caps) this.caps.find((x) => x.capability === c.capability)!.state = c.state;
  }

  queryMigrationCapabilities(): CapabilityStatus[] {
    return this.caps.map((c) => ({ ...c }));
  }

  queryStatus(): { running: boolean; status: RunState } {
    return { running: this.status === 'running', status: this.status };
  }

  async stop(): Promise<void> {
    this.calls.push('stop');
    await this.stopGate;
    if (this.status === 'running') {
      this.status = 'paused';
      this.server?.emit('STOP');
    }
  }

  async cont(): Promise<void> {
    this.calls.push('cont');
    if (this.status === 'inmigrate') throw new QmpError('GenericError', 'Migration is not finalized yet');
    if (this.status !== 'running') {
      this.status = 'running';
      this.server?.emit('RESUME');
    }
  }

  quit(): void {
    this.calls.push('quit');
    this.quits++;
  }
}
