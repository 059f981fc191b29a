// The QMP client against the real server (with a real backend object) and against scripted servers
// that misbehave on purpose: reply order, id-less errors, silence, garbage, hang-ups, timeouts.
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { QmpClient, QmpTimeoutError } from '../../src/vmm/qmp/client.ts';
import { QmpError } from '../../src/vmm/qmp/protocol.ts';
import { QmpServer } from '../../src/vmm/qmp/server.ts';
import { TestBackend, tempDir } from './support.ts';

async function withVmm(fn: (c: { path: string; server: QmpServer; backend: TestBackend }) => Promise<void>) {
  const { dir, cleanup } = tempDir();
  const backend = new TestBackend();
  const path = join(dir, 'vm.qmp');
  const server = await QmpServer.listen(path, backend);
  backend.server = server;
  try {
    await fn({ path, server, backend });
  } finally {
    await server.close();
    cleanup();
  }
}

const GREETING =
  '{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 8}, "package": ""}, "capabilities": ["oob"]}}\r\n';

/** A scripted server: `onLine` gets each request line (parsed) and the socket to answer on. */
async function withScript(
  script: { greet?: boolean; onRequest?: (req: Record<string, unknown>, s: Socket) => void },
  fn: (path: string) => Promise<void>,
): Promise<void> {
  const { dir, cleanup } = tempDir();
  const path = join(dir, 'fake.qmp');
  const sockets = new Set<Socket>();
  const server: Server = createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
    if (script.greet !== false) s.write(GREETING);
    let buf = '';
    s.setEncoding('utf8');
    s.on('data', (t: string) => {
      buf += t;
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const req = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
        buf = buf.slice(nl + 1);
        if (req.execute === 'qmp_capabilities' && script.greet !== false) {
          s.write(`{"return": {}, "id": ${JSON.stringify(req.id)}}\r\n`);
          continue;
        }
        script.onRequest?.(req, s);
      }
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  try {
    await fn(path);
  } finally {
    for (const s of sockets) s.destroy();
    await new Promise((r) => server.close(r));
    cleanup();
  }
}

describe('QmpClient against the server', () => {
  test('connect negotiates; execute returns results and rejects with the QMP error class and desc', () =>
    withVmm(async ({ path, backend }) => {
      const c = await QmpClient.connect(path);
      assert.deepEqual(c.version.qemu, { major: 8, minor: 2, micro: 0 });
      assert.deepEqual(c.greeting.QMP.capabilities, []);
      assert.deepEqual(await c.execute('query-status'), { running: true, singlestep: false, status: 'running' });
      await c.execute('migrate-set-parameters', { 'downtime-limit': 50, 'max-bandwidth': 2n ** 20n });
      assert.equal(backend.params['downtime-limit'], 50);
      assert.equal(backend.params['max-bandwidth'], 1 << 20);
      const err = await c.execute('migrate', { uri: 'gopher:x' }).catch((e: unknown) => e);
      assert.ok(err instanceof QmpError);
      assert.equal(err.class, 'GenericError');
      assert.equal(err.errorClass, 'GenericError');
      assert.equal(err.desc, 'unknown migration protocol: gopher:x');
      await assert.rejects(c.execute('nope'), (e: QmpError) => e.class === 'CommandNotFound');
      // Concurrent commands each get their own reply.
      const [a, b, v] = await Promise.all([
        c.execute('query-migrate'),
        c.execute('query-migrate-parameters'),
        c.execute<{ package: string }>('query-version'),
      ]);
      assert.deepEqual(a, {});
      assert.equal((b as Record<string, number>)['downtime-limit'], 50);
      assert.match(v.package, /^vfio-migrate/);
      c.close();
      assert.equal(c.closed, true);
      await assert.rejects(c.execute('query-status'), /connection closed/);
    }));

  test('waitForEvent: an event sent before the reply is not missed, and each event satisfies one wait', () =>
    withVmm(async ({ path, server }) => {
      const c = await QmpClient.connect(path);
      const seen: string[] = [];
      c.on('event', (e) => seen.push(e.event));
      await c.execute('stop'); // STOP arrives before stop's reply
      const stop = await c.waitForEvent('STOP');
      assert.equal(stop.event, 'STOP');
      assert.equal(typeof stop.timestamp.seconds, 'number');
      await assert.rejects(c.waitForEvent('STOP', undefined, 100), QmpTimeoutError);
      server.emit('MIGRATION', { status: 'setup' });
      server.emit('MIGRATION', { status: 'active' });
      server.emit('MIGRATION', { status: 'completed' });
      const done = await c.waitForEvent('MIGRATION', (e) => e.data?.status === 'completed');
      assert.deepEqual(done.data, { status: 'completed' });
      assert.deepEqual((await c.waitForEvent('MIGRATION')).data, { status: 'setup' });
      const later = c.waitForEvent('MIGRATION_PASS', (e) => e.data?.pass === 2, 2000);
      server.emit('MIGRATION_PASS', { pass: 1 });
      server.emit('MIGRATION_PASS', { pass: 2 });
      assert.deepEqual((await later).data, { pass: 2 });
      assert.deepEqual(seen, ['STOP', 'MIGRATION', 'MIGRATION', 'MIGRATION', 'MIGRATION_PASS', 'MIGRATION_PASS']);
      c.close();
    }));

  test('a server that goes away: pending commands and event waits reject, close is emitted', () =>
    withVmm(async ({ path, server, backend }) => {
      const c = await QmpClient.connect(path);
      backend.stopGate = new Promise(() => {}); // stop never finishes
      const stuck = c.execute('stop');
      const waiting = c.waitForEvent('RESUME');
      const closed = new Promise<Error | undefined>((r) => c.once('close', r));
      await new Promise((r) => setTimeout(r, 20));
      void server.close();
      await assert.rejects(stuck, /QMP stop: /);
      await assert.rejects(waiting, /QMP event RESUME: /);
      assert.ok((await closed) instanceof Error);
    }));

  test('connecting to nothing fails with the socket error', async () => {
    const { dir, cleanup } = tempDir();
    try {
      await assert.rejects(QmpClient.connect(join(dir, 'absent.qmp')), /ENOENT/);
    } finally {
      cleanup();
    }
  });
});

describe('QmpClient against scripted servers', () => {
  test('replies are matched by id whatever their order; an id-less error answers the oldest request', () =>
    withScript(
      {
        onRequest: (() => {
          const held: Record<string, unknown>[] = [];
          return (req, s) => {
            if (req.execute === 'first' || req.execute === 'second') {
              held.push(req);
              if (held.length === 2) {
                s.write(`{"return": "second", "id": ${held[1]!.id}}\r\n`);
                s.write(`{"return": "first", "id": ${held[0]!.id}}\r\n`);
              }
            } else if (req.execute === 'unreadable') {
              s.write('{"return": "not mine", "id": "someone else"}\r\n');
              s.write('{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'@\'"}}\r\n');
            }
          };
        })(),
      },
      async (path) => {
        const c = await QmpClient.connect(path);
        assert.deepEqual(c.greeting.QMP.capabilities, ['oob']);
        const [a, b] = await Promise.all([c.execute('first'), c.execute('second')]);
        assert.deepEqual([a, b], ['first', 'second']);
        await assert.rejects(c.execute('unreadable'), (e: QmpError) => e.desc === "JSON parse error, stray '@'");
        c.close();
      },
    ));

  test('a command without a reply times out; its late reply is dropped and the next command works', () =>
    withScript(
      {
        onRequest: (req, s) => {
          if (req.execute === 'slow') setTimeout(() => s.write(`{"return": "late", "id": ${req.id}}\r\n`), 150);
          else s.write(`{"return": "${req.execute}", "id": ${req.id}}\r\n`);
        },
      },
      async (path) => {
        const c = await QmpClient.connect(path, { commandTimeoutMs: 50 });
        // The error names the 50 ms it waited (how long the wall clock took is up to the machine).
        await assert.rejects(
          c.execute('slow'),
          (e: Error) => e instanceof QmpTimeoutError && /QMP slow: no reply within 50 ms/.test(e.message),
        );
        await new Promise((r) => setTimeout(r, 200));
        assert.equal(await c.execute('quick', undefined, { timeoutMs: 1000 }), 'quick');
        c.close();
      },
    ));

  test('a server that never greets, or never finishes negotiation, times connect out', async () => {
    await withScript({ greet: false }, async (path) => {
      await assert.rejects(QmpClient.connect(path, { timeoutMs: 100 }), QmpTimeoutError);
    });
    const { dir, cleanup } = tempDir();
    const path = join(dir, 'mute.qmp');
    const sockets: Socket[] = [];
    const mute = createServer((s) => {
      sockets.push(s);
      s.write(GREETING);
    });
    await new Promise<void>((r) => mute.listen(path, r));
    try {
      await assert.rejects(QmpClient.connect(path, { timeoutMs: 100 }), /no greeting and negotiation within 100 ms/);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise((r) => mute.close(r));
      cleanup();
    }
  });

  test('garbage from the server closes the connection with an error', () =>
    withScript(
      {
        onRequest: (_req, s) => s.write('{"return": tru}\r\n'),
      },
      async (path) => {
        const c = await QmpClient.connect(path);
        const closed = new Promise<Error | undefined>((r) => c.once('close', r));
        await assert.rejects(c.execute('anything'), /bad input: JSON parse error, invalid keyword 'tru'/);
        assert.match((await closed)?.message ?? '', /bad input/);
        assert.equal(c.closed, true);
      },
    ));
});
