// The QMP server over real UNIX sockets, with a real backend object: greeting and negotiation, each
// command's checks and error shapes, events, QEMU's stream rules, limits, fuzzing, the socket file, and
// clients that stop reading.
import assert from 'node:assert/strict';
import { linkSync, lstatSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { QmpError } from '../../src/vmm/qmp/protocol.ts';
import { type QmpCommand, QmpServer, type QmpServerOptions } from '../../src/vmm/qmp/server.ts';
import { type Msg, RawPeer, TestBackend, tempDir } from './support.ts';

interface Ctx {
  path: string;
  dir: string;
  server: QmpServer;
  backend: TestBackend;
}

async function withServer(fn: (c: Ctx) => Promise<void>, options: QmpServerOptions = {}): Promise<void> {
  const { dir, cleanup } = tempDir();
  const backend = new TestBackend();
  const path = join(dir, 'vm.qmp');
  const server = await QmpServer.listen(path, backend, options);
  backend.server = server;
  try {
    await fn({ path, dir, server, backend });
  } finally {
    await server.close();
    cleanup();
  }
}

const err = (cls: string, desc: string, id?: unknown): Msg =>
  id === undefined ? { error: { class: cls, desc } } : { error: { class: cls, desc }, id };
const generic = (desc: string, id?: unknown) => err('GenericError', desc, id);

describe('greeting and capabilities negotiation', () => {
  test("the greeting is QEMU's, CRLF-terminated, before anything is sent", () =>
    withServer(async ({ path }) => {
      const s = connect(path);
      const text = await new Promise<string>((r) => s.once('data', (b) => r(b.toString('latin1'))));
      s.destroy();
      assert.ok(text.endsWith('\r\n'));
      const g = JSON.parse(text);
      assert.deepEqual(Object.keys(g.QMP), ['version', 'capabilities']);
      assert.deepEqual(g.QMP.version.qemu, { micro: 0, minor: 2, major: 8 });
      assert.match(g.QMP.version.package, /^vfio-migrate \d+\.\d+\.\d+/);
      assert.deepEqual(g.QMP.capabilities, []);
    }));

  test('before qmp_capabilities every command is refused with CommandNotFound; request errors stay what they are', () =>
    withServer(async ({ path, backend }) => {
      const p = await RawPeer.connect(path);
      const expecting = "Expecting capabilities negotiation with 'qmp_capabilities'";
      assert.deepEqual(await p.request('{"execute": "query-status", "id": 1}'), err('CommandNotFound', expecting, 1));
      assert.deepEqual(await p.request('{"execute": "stop"}'), err('CommandNotFound', expecting));
      assert.deepEqual(await p.request('{"execute": "no-such-thing"}'), err('CommandNotFound', expecting));
      assert.deepEqual(
        await p.request('{"execute": "stop", "arguments": 1}'),
        generic("QMP input member 'arguments' must be an object"),
      );
      assert.deepEqual(backend.calls, []);
      p.close();
    }));

  test('qmp_capabilities: its arguments, no capability offered, once only', () =>
    withServer(async ({ path }) => {
      const p = await RawPeer.connect(path);
      assert.deepEqual(
        await p.request('{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}, "id": "a"}'),
        generic("Capability 'oob' not available", 'a'),
      );
      assert.deepEqual(
        await p.request('{"execute": "qmp_capabilities", "arguments": {"enable": ["fast"]}}'),
        generic("Parameter 'null' does not accept value 'fast'"),
      );
      assert.deepEqual(
        await p.request('{"execute": "qmp_capabilities", "arguments": {"enable": "oob"}}'),
        generic("Invalid parameter type for 'enable', expected: array"),
      );
      assert.deepEqual(
        await p.request('{"execute": "qmp_capabilities", "arguments": {"x": 1}}'),
        generic("Parameter 'x' is unexpected"),
      );
      // Still negotiating after the failures:
      assert.equal((await p.request('{"execute": "query-status"}')).error?.class, 'CommandNotFound');
      assert.deepEqual(await p.request('{"execute": "qmp_capabilities", "arguments": {"enable": []}, "id": 2}'), {
        return: {},
        id: 2,
      });
      assert.deepEqual(
        await p.request('{"execute": "qmp_capabilities", "id": 3}'),
        err('CommandNotFound', 'Capabilities negotiation is already complete, command ignored', 3),
      );
      assert.deepEqual((await p.request('{"execute": "query-status"}')).return, {
        running: true,
        singlestep: false,
        status: 'running',
      });
      p.close();
    }));

  test('each client negotiates for itself', () =>
    withServer(async ({ path }) => {
      const a = await RawPeer.connect(path, { negotiate: true });
      const b = await RawPeer.connect(path);
      assert.ok('return' in (await a.request('{"execute": "query-status"}')));
      assert.equal((await b.request('{"execute": "query-status"}')).error?.class, 'CommandNotFound');
      a.close();
      b.close();
    }));
});

describe('commands', () => {
  test('query-version and query-commands', () =>
    withServer(
      async ({ path }) => {
        const p = await RawPeer.connect(path, { negotiate: true });
        const v = (await p.request('{"execute": "query-version"}')).return as Record<string, unknown>;
        assert.deepEqual(v.qemu, { major: 8, minor: 2, micro: 0 });
        assert.match(v.package as string, /^vfio-migrate /);
        const names = ((await p.request('{"execute": "query-commands"}')).return as { name: string }[]).map(
          (c) => c.name,
        );
        assert.deepEqual(names, [
          'cont',
          'migrate',
          'migrate-incoming',
          'migrate-set-capabilities',
          'migrate-set-parameters',
          'migrate_cancel',
          'qmp_capabilities',
          'query-commands',
          'query-migrate',
          'query-migrate-capabilities',
          'query-migrate-parameters',
          'query-status',
          'query-version',
          'quit',
          'stop',
          'x-echo',
        ]);
        assert.deepEqual(await p.request('{"execute": "x-echo", "arguments": {"v": [1, "é"]}, "id": 1}'), {
          return: [1, 'é'],
          id: 1,
        });
        p.close();
      },
      { commands: { 'x-echo': { args: { v: { type: 'any' } }, run: (a) => a.v } } },
    ));

  test('an unknown command, and arguments to a command that takes none', () =>
    withServer(async ({ path }) => {
      const p = await RawPeer.connect(path, { negotiate: true });
      assert.deepEqual(
        await p.request('{"execute": "human-monitor-command", "id": 9}'),
        err('CommandNotFound', 'The command human-monitor-command has not been found', 9),
      );
      assert.deepEqual(
        await p.request('{"execute": "query-status", "arguments": {"verbose": true}}'),
        generic("Parameter 'verbose' is unexpected"),
      );
      assert.ok('return' in (await p.request('{"execute": "query-status", "arguments": {}}')));
      p.close();
    }));

  test('migrate: arguments, URI checks, resume, the backend call, its refusal, the MIGRATION event', () =>
    withServer(async ({ path, backend }) => {
      const p = await RawPeer.connect(path, { negotiate: true });
      const migrate = (args: string) => p.request(`{"execute": "migrate", "arguments": ${args}}`);
      assert.deepEqual(await migrate('{}'), generic("Parameter 'uri' is missing"));
      assert.deepEqual(await migrate('{"uri": 5}'), generic("Invalid parameter type for 'uri', expected: string"));
      assert.deepEqual(
        await migrate('{"uri": "tcp:h:1", "detach": 1}'),
        generic("Invalid parameter type for 'detach', expected: boolean"),
      );
      assert.deepEqual(
        await migrate('{"uri": "tcp:h:1", "channels": []}'),
        generic("Parameter 'channels' is unexpected"),
      );
      const uriCases: [string, string][] = [
        ['ftp://x', 'unknown migration protocol: ftp://x'],
        ['', 'unknown migration protocol: '],
        ['unix:/run/x', "migration protocol 'unix:' is not supported here; use tcp:HOST:PORT or file:PATH"],
        ['exec:cat > /dev/null', "migration protocol 'exec:' is not supported here; use tcp:HOST:PORT or file:PATH"],
        ['tcp:host', "error parsing address 'host'"],
        ['tcp:[::1', "error parsing address '[::1'"],
        [
          'tcp::4444',
          "migration URI 'tcp::4444' has no host; give one (tcp:0.0.0.0:PORT listens on every IPv4 address)",
        ],
        ['tcp:h:0', "migration URI 'tcp:h:0': port '0' is not a number from 1 to 65535"],
        ['tcp:h:65536', "migration URI 'tcp:h:65536': port '65536' is not a number from 1 to 65535"],
        ['tcp:h:http', "migration URI 'tcp:h:http': port 'http' is not a number from 1 to 65535"],
        ['tcp:h:1,to=5', "migration URI options are not supported: ',to=5'"],
        ['file:', "migration URI 'file:' has no path"],
      ];
      for (const [uri, desc] of uriCases) {
        assert.deepEqual(await migrate(JSON.stringify({ uri })), generic(desc), uri);
      }
      assert.deepEqual(
        await migrate('{"uri": "tcp:h:1", "resume": true}'),
        generic('Cannot resume if there is no paused migration'),
      );
      assert.deepEqual(backend.calls, []);
      p.send('{"execute": "migrate", "arguments": {"uri": "tcp:[::1]:4444", "detach": true}, "id": 1}');
      const ev = await p.next();
      assert.equal(ev.event, 'MIGRATION');
      assert.deepEqual(ev.data, { status: 'active' });
      assert.deepEqual(await p.next(), { return: {}, id: 1 });
      assert.deepEqual(backend.lastTarget, { transport: 'tcp', host: '::1', port: 4444 });
      assert.deepEqual(await migrate('{"uri": "file:/tmp/x y"}'), generic("There's a migration process in progress"));
      assert.deepEqual(backend.calls, ['migrate tcp:[::1]:4444', 'migrate file:/tmp/x y']);
      p.close();
    }));

  test('migrate-incoming takes port 0; file: URIs keep their path', () =>
    withServer(async ({ path, backend }) => {
      const p = await RawPeer.connect(path, { negotiate: true });
      assert.deepEqual(await p.request('{"execute": "migrate-incoming", "arguments": {"uri": "tcp:0.0.0.0:0"}}'), {
        return: {},
      });
      assert.deepEqual(backend.lastTarget, { transport: 'tcp', host: '0.0.0.0', port: 0 });
      assert.deepEqual(await p.request('{"execute": "migrate-incoming", "arguments": {"uri": "file:a:b"}}'), {
        return: {},
      });
      assert.deepEqual(backend.lastTarget, { transport: 'file', path: 'a:b' });
      assert.deepEqual(
        await p.request('{"execute": "migrate-incoming", "arguments": {}}'),
        generic("Parameter 'uri' is missing"),
      );
      p.close();
    }));

  test("migrate-set-parameters: QEMU's types and ranges, all checked before anything is set", () =>
    withServer(async ({ path, backend }) => {
      const p = await RawPeer.connect(path, { negotiate: true });
      const set = (args: string) => p.request(`{"execute": "migrate-set-parameters", "arguments": ${args}}`);
      const downtimeRange = "Parameter 'downtime_limit' expects an integer in the range of 0 to 2000000 ms";
      const bwRange = (n: string) =>
        `Parameter '${n}' expects an integer in the range of 0 to ${Number.MAX_SAFE_INTEGER} bytes/second`;
      const cases: [string, string][] = [
        ['{"downtime-limit": 1.5}', "Parameter 'downtime-limit' expects uint64"],
        ['{"downtime-limit": 100.0}', "Parameter 'downtime-limit' expects uint64"],
        ['{"downtime-limit": "100"}', "Parameter 'downtime-limit' expects uint64"],
        ['{"downtime-limit": null}', "Parameter 'downtime-limit' expects uint64"],
        ['{"downtime-limit": 2000001}', downtimeRange],
        ['{"downtime-limit": -1}', downtimeRange],
        ['{"downtime-limit": 18446744073709551615}', downtimeRange],
        ['{"max-bandwidth": true}', "Parameter 'max-bandwidth' expects uint64"],
        ['{"max-bandwidth": 9007199254740992}', bwRange('max_bandwidth')],
        ['{"avail-switchover-bandwidth": 18446744073709551615}', bwRange('avail_switchover_bandwidth')],
        ['{"multifd-channels": 0}', "Parameter 'multifd_channels' expects a value between 1 and 255"],
        ['{"multifd-channels": 256}', "Parameter 'multifd_channels' expects a value between 1 and 255"],
        ['{"multifd-channels": "4"}', "Invalid parameter type for 'multifd-channels', expected: integer"],
        ['{"x-multifd-channels": 4}', "Parameter 'x-multifd-channels' is unexpected"],
        ['{"x-multifd-io": "fast"}', "Parameter 'x-multifd-io' does not accept value 'fast'"],
        ['{"x-multifd-io": 2}', "Invalid parameter type for 'x-multifd-io', expected: string"],
        ['{"downtime-limit": 10, "max-bandwidth": -5}', bwRange('max_bandwidth')],
      ];
      for (const [args, desc] of cases) assert.deepEqual(await set(args), generic(desc), args);
      assert.deepEqual(backend.calls, []);
      assert.deepEqual(await set('{}'), { return: {} });
      assert.deepEqual(backend.calls, []);
      assert.deepEqual(await set('{"downtime-limit": 2000000, "max-bandwidth": 125000000}'), { return: {} });
      assert.deepEqual(backend.calls, ['set {"max-bandwidth":125000000,"downtime-limit":2000000}']);
      assert.deepEqual(await set('{"x-multifd-io": "direct"}'), { return: {} });
      assert.deepEqual(await p.request('{"execute": "query-migrate-parameters"}'), {
        return: {
          'max-bandwidth': 125000000,
          'avail-switchover-bandwidth': 0,
          'downtime-limit': 2000000,
          'multifd-channels': 2,
          'x-multifd-io': 'direct',
        },
      });
      p.close();
    }));

  test('migrate-set-capabilities / query-migrate-capabilities: multifd, checked elements, refused while migrating', () =>
    withServer(async ({ path, backend }) => {
      const p = await RawPeer.connect(path, { negotiate: true });
      const set = (caps: string) =>
        p.request(`{"execute": "migrate-set-capabilities", "arguments": {"capabilities": ${caps}}}`);
      const query = () => p.request('{"execute": "query-migrate-capabilities"}');
      assert.deepEqual(await query(), { return: [{ capability: 'multifd', state: false }] });
      const cases: [string, string][] = [
        ['[{"capability": "xbzrle", "state": true}]', "Parameter 'capability' does not accept value 'xbzrle'"],
        ['[{"capability": "multifd"}]', "Parameter 'capabilities[0].state' is missing"],
        [
          '[{"capability": "multifd", "state": 1}]',
          "Invalid parameter type for 'capabilities[0].state', expected: boolean",
        ],
        ['[{"state": true}]', "Parameter 'capabilities[0].capability' is missing"],
        ['[{"capability": "multifd", "state": true, "x": 1}]', "Parameter 'capabilities[0].x' is unexpected"],
        ['[3]', "Invalid parameter type for 'capabilities[0]', expected: object"],
      ];
      for (const [caps, desc] of cases) assert.deepEqual(await set(caps), generic(desc), caps);
      assert.deepEqual(backend.calls, []);
      assert.deepEqual(await set('[{"capability": "multifd", "state": true}]'), { return: {} });
      assert.deepEqual(await query(), { return: [{ capability: 'multifd', state: true }] });
      backend.migration = { status: 'active' };
      assert.deepEqual(
        await set('[{"capability": "multifd", "state": false}]'),
        generic("There's a migration process in progress"),
      );
      assert.deepEqual(await query(), { return: [{ capability: 'multifd', state: true }] });
      p.close();
    }));

  test("query-migrate: {} before any migration; MigrationInfo in QAPI order with QAPI's integers", () =>
    withServer(async ({ path, backend }) => {
      const p = await RawPeer.connect(path, { negotiate: true });
      assert.deepEqual(await p.request('{"execute": "query-migrate"}'), { return: {} });
      backend.migration = {
        'x-vendor': 1,
        'total-time': 1234.6,
        ram: {
          mbps: 812.5,
          transferred: 10,
          remaining: 20,
          total: 30,
          duplicate: 1,
          normal: 2,
          'normal-bytes': 8192,
          'dirty-pages-rate': 99.7,
          'dirty-sync-count': 3,
          'page-size': 4096,
          'pages-per-second': 1000,
          'precopy-bytes': 10,
          'downtime-bytes': 0,
        },
        vfio: { transferred: 7 },
        status: 'active',
        'expected-downtime': 12,
        'setup-time': 3,
      } as never;
      const r = (await p.request('{"execute": "query-migrate"}')).return as Record<string, unknown>;
      assert.deepEqual(Object.keys(r), [
        'status',
        'ram',
        'vfio',
        'total-time',
        'expected-downtime',
        'setup-time',
        'x-vendor',
      ]);
      assert.equal(r['total-time'], 1235);
      assert.deepEqual(r.ram, {
        transferred: 10,
        remaining: 20,
        total: 30,
        duplicate: 1,
        normal: 2,
        'normal-bytes': 8192,
        'dirty-pages-rate': 100,
        mbps: 812.5,
        'dirty-sync-count': 3,
        'postcopy-requests': 0,
        'page-size': 4096,
        'multifd-bytes': 0,
        'pages-per-second': 1000,
        'precopy-bytes': 10,
        'downtime-bytes': 0,
        'postcopy-bytes': 0,
        'dirty-sync-missed-zero-copy': 0,
      });
      assert.deepEqual(Object.keys(r.ram as object)[7], 'mbps');
      p.close();
    }));

  test('stop, cont, migrate_cancel round trip through the backend, with its events and errors', () =>
    withServer(async ({ path, backend }) => {
      const p = await RawPeer.connect(path, { negotiate: true });
      assert.deepEqual(await p.request('{"execute": "stop", "id": "s"}'), { return: {}, id: 's' });
      assert.deepEqual(p.messages.length, 0);
      assert.deepEqual(await p.request('{"execute": "query-status"}'), {
        return: { running: false, singlestep: false, status: 'paused' },
      });
      assert.deepEqual(await p.request('{"execute": "cont"}'), { return: {} });
      assert.deepEqual(await p.request('{"execute": "migrate_cancel"}'), { return: {} });
      backend.status = 'inmigrate';
      assert.deepEqual(await p.request('{"execute": "cont", "id": 4}'), generic('Migration is not finalized yet', 4));
      // Events came before the replies they belong to (as QEMU sends STOP before stop's return):
      const p2 = await RawPeer.connect(path, { negotiate: true });
      backend.status = 'running';
      p2.send('{"execute": "stop"}');
      const first = await p2.next();
      const second = await p2.next();
      assert.equal(first.event, 'STOP');
      assert.equal('data' in first, false);
      assert.deepEqual(second, { return: {} });
      assert.deepEqual(backend.calls, ['stop', 'cont', 'migrate_cancel', 'cont', 'stop']);
      p.close();
      p2.close();
    }));

  test('backend throws: QmpError keeps its class, any other error is a GenericError with its message', () =>
    withServer(async ({ path, backend }) => {
      const p = await RawPeer.connect(path, { negotiate: true });
      backend.stop = async () => {
        throw new QmpError('DeviceNotActive', 'No device is active');
      };
      assert.deepEqual(
        await p.request('{"execute": "stop", "id": 1}'),
        err('DeviceNotActive', 'No device is active', 1),
      );
      backend.stop = async () => {
        throw new RangeError('vCPU 3 did not stop');
      };
      assert.deepEqual(await p.request('{"execute": "stop"}'), generic('vCPU 3 did not stop'));
      backend.queryStatus = () => {
        throw 'a string';
      };
      assert.deepEqual(await p.request('{"execute": "query-status"}'), generic('a string'));
      backend.queryMigrate = () => {
        const cyclic: Record<string, unknown> = { status: 'active' };
        cyclic.ram = cyclic;
        return cyclic as never;
      };
      const r = await p.request('{"execute": "query-migrate", "id": 2}');
      assert.equal(r.error?.class, 'GenericError');
      assert.match(r.error?.desc ?? '', /could not be encoded/);
      assert.equal(r.id, 2);
      assert.ok('return' in (await p.request('{"execute": "query-version"}')));
      p.close();
    }));

  test('quit: the reply, then a SHUTDOWN event, then the backend quits', () =>
    withServer(async ({ path, backend }) => {
      const p = await RawPeer.connect(path, { negotiate: true });
      const other = await RawPeer.connect(path, { negotiate: true });
      p.send('{"execute": "quit", "id": "q"}');
      assert.deepEqual(await p.next(), { return: {}, id: 'q' });
      const shutdown = await p.next();
      assert.equal(shutdown.event, 'SHUTDOWN');
      assert.deepEqual(shutdown.data, { guest: false, reason: 'host-qmp-quit' });
      assert.equal((await other.next()).event, 'SHUTDOWN');
      assert.equal(backend.quits, 1);
      p.close();
      other.close();
    }));

  test('ids of any JSON type come back as sent; requests without one get replies without one', () =>
    withServer(async ({ path }) => {
      const p = await RawPeer.connect(path, { negotiate: true });
      for (const id of ['"s"', '0', 'null', 'false', '[1, {"a": "b"}]', '1.5']) {
        p.send(`{"id": ${id}, "execute": "query-status"}`);
        assert.deepEqual((await p.reply()).id, JSON.parse(id), id);
      }
      const raw = await new Promise<string>((resolve) => {
        p.socket.removeAllListeners('data');
        p.socket.on('data', (t: string) => resolve(t));
        p.send('{"execute": "query-status", "id": 18446744073709551615}');
      });
      assert.match(raw, /"id": 18446744073709551615\}\r\n$/);
      p.close();
    }));

  test('a table of commands, as the VMM passed before the backend interface, is served as it is', async () => {
    const { dir, cleanup } = tempDir();
    const table: Record<string, QmpCommand> = {
      double: { args: { n: { type: 'int', min: 0, max: 100 } }, run: (a) => (a.n as number) * 2 },
    };
    const server = await QmpServer.listen(join(dir, 'legacy.qmp'), table);
    try {
      const p = await RawPeer.connect(join(dir, 'legacy.qmp'), { negotiate: true });
      assert.deepEqual(await p.request('{"execute": "double", "arguments": {"n": 21}}'), { return: 42 });
      assert.deepEqual(
        await p.request('{"execute": "double", "arguments": {"n": 101}}'),
        generic("Parameter 'n' expects a value between 0 and 100"),
      );
      assert.equal((await p.request('{"execute": "migrate"}')).error?.class, 'CommandNotFound');
      p.close();
    } finally {
      await server.close();
      cleanup();
    }
  });
});

describe('events', () => {
  test('every negotiated client gets each event, in QEMU shape; clients still negotiating get none', () =>
    withServer(async ({ path, server }) => {
      const a = await RawPeer.connect(path, { negotiate: true });
      const b = await RawPeer.connect(path, { negotiate: true });
      const pending = await RawPeer.connect(path);
      const before = Date.now();
      server.emit('MIGRATION', { status: 'setup' });
      server.emit('MIGRATION_PASS', { pass: 1 });
      server.emit('RESUME');
      server.emitEvent('X_VENDOR', { n: 1 });
      for (const peer of [a, b]) {
        const got = [await peer.next(), await peer.next(), await peer.next(), await peer.next()];
        assert.deepEqual(
          got.map((m) => [m.event, m.data]),
          [
            ['MIGRATION', { status: 'setup' }],
            ['MIGRATION_PASS', { pass: 1 }],
            ['RESUME', undefined],
            ['X_VENDOR', { n: 1 }],
          ],
        );
        const ts = got[0]!.timestamp as { seconds: number; microseconds: number };
        assert.ok(Number.isInteger(ts.seconds) && Number.isInteger(ts.microseconds));
        assert.ok(ts.microseconds >= 0 && ts.microseconds < 1e6);
        const ms = ts.seconds * 1000 + ts.microseconds / 1000;
        assert.ok(Math.abs(ms - before) < 5000, `timestamp ${ms} near ${before}`);
        assert.deepEqual(Object.keys(got[0]!), ['timestamp', 'event', 'data']);
      }
      assert.equal(await pending.quiet(100), true);
      pending.send('{"execute": "qmp_capabilities"}');
      assert.deepEqual(await pending.next(), { return: {} });
      server.emit('STOP');
      assert.equal((await pending.next()).event, 'STOP');
      for (const peer of [a, b, pending]) peer.close();
    }));
});

describe('input handling', () => {
  test('a request split into single bytes, and many requests in one write, answered in order', () =>
    withServer(async ({ path }) => {
      const p = await RawPeer.connect(path, { negotiate: true });
      const req = Buffer.from('{"execute": "query-status", "id": "split"}');
      for (const byte of req) p.send(Uint8Array.of(byte));
      assert.equal((await p.reply()).id, 'split');
      p.send(Array.from({ length: 200 }, (_, i) => `{"execute": "query-status", "id": ${i}}`).join(' '));
      for (let i = 0; i < 200; i++) assert.equal((await p.reply()).id, i);
      p.close();
    }));

  test('bad JSON is answered and the session goes on', () =>
    withServer(async ({ path }) => {
      const p = await RawPeer.connect(path, { negotiate: true });
      p.send('{"execute": "query-status", "id": @1}\n{"execute": "query-status", "id": "next"}');
      const errors: Msg[] = [];
      for (;;) {
        const m = await p.reply();
        if (m.id === 'next') break;
        errors.push(m);
      }
      assert.ok(errors.length >= 1);
      assert.deepEqual(errors[0], generic("JSON parse error, stray '@'"));
      for (const e of errors) assert.equal(e.error?.class, 'GenericError');
      // An unbalanced object is cut off by a 0xFF byte; the next request works.
      p.send(
        Buffer.concat([
          Buffer.from('{"execute": ["'),
          Buffer.from([0xff]),
          Buffer.from('{"execute": "stop", "id": 2}'),
        ]),
      );
      assert.equal((await p.reply()).error?.desc, "JSON parse error, stray '\"\uFFFD'");
      assert.deepEqual(await p.reply(), { return: {}, id: 2 });
      assert.deepEqual(await p.request('"just a string"'), generic('QMP input must be a JSON object'));
      assert.deepEqual(await p.request('{"a": 1, "a": 2}'), generic('JSON parse error, duplicate key'));
      p.close();
    }));

  test('a message over the size limit is answered, then the client is disconnected; others are not', () =>
    withServer(
      async ({ path, server }) => {
        const bystander = await RawPeer.connect(path, { negotiate: true });
        const p = await RawPeer.connect(path, { negotiate: true });
        const fits = `{"execute": "query-status", "id": "${'x'.repeat(4096 - 40)}"}`;
        assert.ok(fits.length <= 4096);
        assert.ok('return' in (await p.request(fits)));
        p.send(`{"execute": "query-status", "id": "${'y'.repeat(5000)}"}`);
        assert.deepEqual(await p.reply(), generic('JSON token size limit exceeded'));
        await p.whenClosed;
        assert.ok('return' in (await bystander.request('{"execute": "query-status"}')));
        assert.equal(server.clientCount, 1);
        bystander.close();
      },
      { maxMessageBytes: 4096 },
    ));

  test('the default limit is 1 MiB', () =>
    withServer(async ({ path }) => {
      const p = await RawPeer.connect(path, { negotiate: true });
      const big = (n: number) => `{"execute": "query-status", "id": "${'z'.repeat(n)}"}`;
      const overhead = big(0).length;
      assert.ok('return' in (await p.request(big((1 << 20) - overhead))));
      p.send(big((1 << 20) - overhead + 1));
      assert.deepEqual(await p.reply(), generic('JSON token size limit exceeded'));
      await p.whenClosed;
    }));

  test('a client that half-closes after its requests still gets every reply', () =>
    withServer(async ({ path }) => {
      const p = await RawPeer.connect(path);
      p.socket.end('{"execute": "qmp_capabilities"}{"execute": "stop", "id": 1}{"execute": "query-status", "id": 2} 7');
      await p.whenClosed;
      assert.deepEqual(
        p.messages.filter((m) => !m.event),
        [
          { return: {} },
          { return: {}, id: 1 },
          { return: { running: false, singlestep: false, status: 'paused' }, id: 2 },
          generic('QMP input must be a JSON object'),
        ],
      );
    }));

  test('fuzz: random text and JSON never crash the server, and each input draws an error reply', () =>
    withServer(async ({ path, server }) => {
      const p = await RawPeer.connect(path, { negotiate: true });
      let n = 0;
      const garbage = fc.oneof(
        fc.string({ maxLength: 60 }),
        fc.string({ unit: 'binary', maxLength: 60 }),
        fc.json({ maxDepth: 3 }),
        fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify({ execute: 'query-status', arguments: v })),
        fc.dictionary(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 2 })).map((d) => JSON.stringify(d)),
        fc
          .jsonValue({ maxDepth: 2 })
          .map((v) => JSON.stringify({ execute: 'migrate-set-parameters', arguments: { 'downtime-limit': v } })),
        fc.jsonValue({ maxDepth: 2 }).map((v) => JSON.stringify({ execute: 'migrate', arguments: { uri: v } })),
        fc.uint8Array({ maxLength: 60 }).map((b) => Buffer.from(b).toString('latin1')),
      );
      await fc.assert(
        fc.asyncProperty(garbage, async (text) => {
          const sentinel = `s${n++}`;
          // 0xFF then a newline force QEMU's parser (and ours) back to a known state.
          p.send(Buffer.concat([Buffer.from(text, 'utf8'), Buffer.from([0xff, 0x0a])]));
          p.send(`{"execute": "query-status", "id": "${sentinel}"}`);
          const before: Msg[] = [];
          for (;;) {
            const m = await p.reply();
            if (m.id === sentinel) {
              assert.ok('return' in m);
              break;
            }
            before.push(m);
          }
          assert.ok(before.length >= 1);
          for (const m of before) {
            // A random request may be valid after all (query-status with {} arguments, a good URI, ...).
            if ('return' in m) continue;
            assert.ok(['GenericError', 'CommandNotFound'].includes(m.error?.class ?? ''), JSON.stringify(m));
            assert.equal(typeof m.error?.desc, 'string');
          }
        }),
        { numRuns: 300 },
      );
      assert.equal(server.clientCount, 1);
      p.close();
      const fresh = await RawPeer.connect(path, { negotiate: true });
      assert.ok('return' in (await fresh.request('{"execute": "query-status"}')));
      fresh.close();
    }));
});

describe('the socket file', () => {
  test('is created 0600 under umask 0, with no temporary directory left behind, and removed on close', async () => {
    const { dir, cleanup } = tempDir();
    const old = process.umask(0);
    let server: QmpServer | undefined;
    try {
      const path = join(dir, 'vm.qmp');
      server = await QmpServer.listen(path, new TestBackend());
      const st = lstatSync(path);
      assert.ok(st.isSocket());
      assert.equal(st.mode & 0o777, 0o600);
      assert.deepEqual(readdirSync(dir), ['vm.qmp']);
      const p = await RawPeer.connect(path, { negotiate: true });
      p.close();
      await server.close();
      assert.deepEqual(readdirSync(dir), []);
    } finally {
      process.umask(old);
      await server?.close();
      cleanup();
    }
  });

  test('a path too long for the private directory is bound under umask 0177 instead, still 0600', async () => {
    const { dir, cleanup } = tempDir();
    const old = process.umask(0);
    let server: QmpServer | undefined;
    try {
      // The temporary name is longer than a short final one: a deep directory and a short name overflow it.
      const deep = join(dir, 'd'.repeat(100 - dir.length));
      mkdirSync(deep);
      const path = join(deep, 'v.qmp');
      assert.ok(path.length <= 107 && join(deep, '.qmp-XXXXXX', 's').length > 107);
      server = await QmpServer.listen(path, new TestBackend());
      assert.equal(lstatSync(path).mode & 0o777, 0o600);
      assert.equal(process.umask(0), 0, 'the umask is restored');
      const p = await RawPeer.connect(path, { negotiate: true });
      p.close();
    } finally {
      process.umask(old);
      await server?.close();
      cleanup();
    }
  });

  test('a stale socket is replaced; anything else at the path is refused', async () => {
    const { dir, cleanup } = tempDir();
    try {
      const path = join(dir, 'vm.qmp');
      // A stale socket file: a second name for a socket whose listener is gone.
      const gone = createServer();
      await new Promise<void>((r) => gone.listen(join(dir, 'old.sock'), r));
      linkSync(join(dir, 'old.sock'), path);
      await new Promise((r) => gone.close(r));
      assert.ok(lstatSync(path).isSocket());
      const first = await QmpServer.listen(path, new TestBackend());
      assert.ok('return' in (await (await RawPeer.connect(path, { negotiate: true })).request('{"execute": "stop"}')));
      // A second server on the same path takes it over (as QEMU does); the first one's close leaves it be.
      const second = await QmpServer.listen(path, new TestBackend());
      await first.close();
      assert.ok(lstatSync(path).isSocket());
      const p = await RawPeer.connect(path, { negotiate: true });
      assert.deepEqual((await p.request('{"execute": "query-status"}')).return, {
        running: true,
        singlestep: false,
        status: 'running',
      });
      p.close();
      await second.close();
      assert.deepEqual(readdirSync(dir), []);
      const file = join(dir, 'file');
      writeFileSync(file, 'keep me');
      await assert.rejects(QmpServer.listen(file, new TestBackend()), /exists and is not a socket/);
      assert.deepEqual(readdirSync(dir), ['file']);
    } finally {
      cleanup();
    }
  });
});

describe('slow, dead and busy clients', () => {
  test('a client that stops reading is dropped once its unsent events pass the bound; others get every event', () =>
    withServer(
      async ({ path, server }) => {
        const slow = await RawPeer.connect(path, { negotiate: true });
        const fast = await RawPeer.connect(path, { negotiate: true });
        slow.socket.pause();
        const filler = 'f'.repeat(1024);
        const total = 4000;
        let received = 0;
        let progress: () => void = () => {};
        fast.socket.on('data', () => {
          while (fast.messages.length) {
            fast.messages.shift();
            received++;
          }
          progress();
        });
        // Events come as fast as a reader that keeps reading takes them; the slow client takes none.
        for (let i = 0; i < total; i += 50) {
          for (let k = i; k < i + 50; k++) server.emit('X_FILLER', { i: k, filler });
          while (received < i + 50) await new Promise<void>((r) => (progress = r));
        }
        assert.equal(received, total);
        assert.equal(server.clientCount, 1, 'the slow client was dropped');
        slow.socket.resume();
        await slow.whenClosed;
        assert.ok(slow.messages.length < total);
        fast.close();
      },
      { maxOutputBytes: 256 << 10 },
    ));

  test('a client that pipelines requests and never reads does not hold others up', () =>
    withServer(
      async ({ path }) => {
        const hog = await RawPeer.connect(path, { negotiate: true });
        hog.socket.pause();
        const other = await RawPeer.connect(path, { negotiate: true });
        const line = '{"execute": "query-commands"}';
        for (let i = 0; i < 20; i++) hog.send(Array.from({ length: 500 }, () => line).join(''));
        // Answered at all: a server blocked on the hog would never reply (the wait's deadline is a safety net).
        for (let i = 0; i < 20; i++) assert.ok('return' in (await other.request('{"execute": "query-status"}')));
        hog.close();
        other.close();
      },
      { maxOutputBytes: 1 << 20 },
    ));

  test('a client that sends half a message and goes quiet does not hold others up', () =>
    withServer(async ({ path }) => {
      const dead = await RawPeer.connect(path, { negotiate: true });
      dead.send('{"execute": "query-st');
      const other = await RawPeer.connect(path, { negotiate: true });
      assert.ok('return' in (await other.request('{"execute": "query-status"}')));
      dead.close();
      other.close();
    }));

  test('commands run one at a time, taken from each client in turn', () =>
    withServer(async ({ path, backend }) => {
      const a = await RawPeer.connect(path, { negotiate: true });
      const b = await RawPeer.connect(path, { negotiate: true });
      let open: () => void = () => {};
      backend.stopGate = new Promise<void>((r) => {
        open = r;
      });
      a.send('{"execute": "stop", "id": "stop"}');
      // b's request goes only once a's stop is running (held at the gate), not after a hopeful sleep.
      for (const end = Date.now() + 60_000; !backend.calls.includes('stop'); ) {
        assert.ok(Date.now() < end, 'the stop command never reached the backend');
        await new Promise((r) => setTimeout(r, 2));
      }
      b.send('{"execute": "query-status", "id": "q"}');
      assert.equal(await b.quiet(100), true, 'waits for the running command');
      open();
      assert.deepEqual(await b.reply(), { return: { running: false, singlestep: false, status: 'paused' }, id: 'q' });
      // Round robin: b's one request is not queued behind a's 300.
      backend.stopGate = undefined;
      a.send(Array.from({ length: 3000 }, (_, i) => `{"execute": "query-version", "id": ${i}}`).join(''));
      await new Promise((r) => setImmediate(r));
      b.send('{"execute": "query-version", "id": "b"}');
      for (;;) {
        const m = await b.reply();
        if (m.id === 'b') break;
      }
      let aReplies = 0;
      while (a.messages.length) if (!a.messages.shift()!.event) aReplies++;
      assert.ok(aReplies < 3000, `b answered after ${aReplies} of a's replies`);
      a.close();
      b.close();
    }));
});
