// The VMM process under hostile input on its two doors: the QMP socket (bad JSON, wrong types, unknown
// commands, oversize messages) and the migration listener of a destination (streams that are random,
// damaged, truncated, or carry hostile payloads under valid checksums). The VMM answers every QMP input
// with a reply or a QMP error class and message, keeps its fd count and memory flat, refuses every bad
// stream with a reason, never starts a VM from one, and keeps serving QMP afterwards. Sockets are 0600.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { lstatSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { waitForMigration } from '../../src/harness/local-hosts.ts';
import { concat } from '../../src/stream/bytes.ts';
import { type DecodedSection, StreamDecoder } from '../../src/stream/decoder.ts';
import { StreamEncoder } from '../../src/stream/encoder.ts';
import { encodeReturnPath, ReturnPathType } from '../../src/stream/return-path.ts';
import { QmpClient } from '../../src/vmm/qmp/client.ts';
import { type Msg, RawPeer } from '../qmp/support.ts';
import { FUZZ_SEED, FuzzTally, fdCount, fuzzParams, fuzzRounds, LONG_FUZZ, statusKib } from '../support/fuzz.ts';
import { type ServerProcess, startServer } from '../support/server-process.ts';

const BIN = new URL('../../bin/vfio-migrate.js', import.meta.url).pathname;
const MEM = '32M';

interface VmmProcess {
  proc: ChildProcess;
  qmpPath: string;
  /** The incoming port, for a destination. */
  port?: number;
  log: string[];
  stop(): Promise<void>;
}

/** Starts `vfio-migrate vmm` on one device server; `incoming` makes it a destination listening on TCP. */
async function startVmm(dir: string, name: string, devicePath: string, incoming?: string): Promise<VmmProcess> {
  const qmpPath = join(dir, `${name}.qmp`);
  const args = ['vmm', '--device-socket', devicePath, '--qmp', qmpPath, '--mem', MEM, '--dirty-rate', '0'];
  if (incoming) args.push('--incoming', incoming);
  const proc = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const log: string[] = [];
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => log.push(...d.split('\n').filter(Boolean)));
  const ready = incoming?.startsWith('tcp:') ? /listening on port (\d+)/ : /vmm ready/;
  const m = await new Promise<RegExpExecArray>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`vmm did not start: ${log.join('\n')}`)), 30_000);
    proc.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const hit = ready.exec(out);
      if (hit) {
        clearTimeout(timer);
        resolve(hit);
      }
    });
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`vmm exited with ${code}: ${log.join('\n')}`));
    });
  });
  return {
    proc,
    qmpPath,
    port: m[1] ? Number(m[1]) : undefined,
    log,
    stop: async () => {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    },
  };
}

function isAlive(p: ChildProcess): boolean {
  return p.exitCode === null && p.signalCode === null;
}

describe('VMM under hostile input', () => {
  let device: ServerProcess;
  let dir: string;
  const qmpFigures = new FuzzTally('qmp-vmm');
  const streamFigures = new FuzzTally('migration-stream-destination');
  before(async () => {
    device = await startServer(['--device', 'register-file']);
    dir = device.path.slice(0, device.path.lastIndexOf('/'));
    qmpFigures.watch(device.proc, 'device server');
    streamFigures.watch(device.proc, 'device server');
  });
  after(async () => {
    if (process.env.H4_DEBUG) console.log(device.log.slice(-20).join('\n'));
    for (const f of [qmpFigures, streamFigures]) {
      f.flush();
      f.expectExit(device.proc);
    }
    await device.stop();
  });

  test('QMP: bad JSON, wrong types, unknown commands and oversize messages draw QMP errors; fds and RSS stay flat; sockets are 0600', async () => {
    const vmm = await startVmm(dir, 'qmp-fuzz', device.path);
    qmpFigures.watch(vmm.proc, 'vmm');
    try {
      const pid = vmm.proc.pid!;
      assert.equal(lstatSync(device.path).mode & 0o777, 0o600, 'the device socket is 0600');
      assert.equal(lstatSync(vmm.qmpPath).mode & 0o777, 0o600, 'the QMP socket is 0600');
      let p = await RawPeer.connect(vmm.qmpPath, { negotiate: true });
      const commands = ((await p.request('{"execute": "query-commands"}')).return as { name: string }[])
        .map((c) => c.name)
        // quit ends the VMM (tested elsewhere); migrate with a file: URI would write where a fuzzer says.
        .filter((n) => n !== 'quit');
      const notFile = (v: unknown) => (typeof v === 'string' && v.startsWith('file:') ? `x${v}` : v);
      const garbage = fc.oneof(
        fc.string({ maxLength: 60 }),
        fc.uint8Array({ maxLength: 60 }).map((b) => Buffer.from(b).toString('latin1')),
        fc.json({ maxDepth: 3 }),
        fc.dictionary(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 2 })).map((d) => JSON.stringify(d)),
        fc.string({ maxLength: 20 }).map((name) => JSON.stringify({ execute: name })),
        // Every real command, with arguments of random shape and type.
        fc
          .tuple(fc.constantFrom(...commands), fc.jsonValue({ maxDepth: 2 }))
          .map(([execute, args]) => JSON.stringify({ execute, arguments: args })),
        fc
          .tuple(
            fc.constantFrom(...commands),
            fc.constantFrom('uri', 'downtime-limit', 'max-bandwidth', 'avail-switchover-bandwidth', 'pages', 'detach'),
            fc.jsonValue({ maxDepth: 1 }),
          )
          .map(([execute, k, v]) => JSON.stringify({ execute, arguments: { [k]: k === 'uri' ? notFile(v) : v } })),
        fc.constantFrom(
          '{"execute": "migrate", "arguments": {"uri": "tcp:127.0.0.1:1"}}', // refused at once
          '{"execute": "migrate", "arguments": {"uri": "unix:/tmp/x"}}',
          '{"execute": "migrate", "arguments": {"uri": "file:"}}',
          '{"execute": "migrate", "arguments": {"uri": 7}}',
          '{"execute": "cont", "arguments": {"x": 1}}',
          '{"execute": "migrate-set-parameters", "arguments": {"downtime-limit": -1}}',
          '{"execute": "x-query-digests", "arguments": {"pages": "yes"}}',
          '{"execute": "query-status", "id": {"nested": [1, 2, {"deep": null}]}}',
        ),
      );
      let sentinel = 0;
      const errorClasses = new Map<string, number>();
      const one = async (text: string) => {
        qmpFigures.inputs++;
        const id = `s${sentinel++}`;
        // 0xFF then a newline put QEMU's parser (and ours) back in a known state.
        p.send(Buffer.concat([Buffer.from(text, 'utf8'), Buffer.from([0xff, 0x0a])]));
        p.send(`{"execute": "query-status", "id": "${id}"}`);
        for (;;) {
          const m: Msg = await p.reply(10_000);
          if (m.id === id) {
            assert.ok('return' in m, 'the VMM still answers');
            break;
          }
          if ('return' in m) continue; // a random input may be a valid command after all
          assert.ok(
            ['GenericError', 'CommandNotFound', 'DeviceNotActive'].includes(m.error?.class ?? ''),
            JSON.stringify(m),
          );
          assert.ok(typeof m.error?.desc === 'string' && m.error.desc.length > 0);
          errorClasses.set(m.error!.class, (errorClasses.get(m.error!.class) ?? 0) + 1);
        }
      };
      // The property run; it is also the warm-up (stop and cont start the vCPU threads, with their fds).
      await fc.assert(fc.asyncProperty(garbage, one), fuzzParams('QMP on a VMM', 300));
      // Oversize: answered, then that client (only) is disconnected.
      const bystander = await RawPeer.connect(vmm.qmpPath, { negotiate: true });
      p.send(`{"execute": "query-status", "id": "${'z'.repeat(1 << 20)}"}`);
      const over = await p.reply(10_000);
      assert.equal(over.error?.class, 'GenericError');
      assert.match(over.error?.desc ?? '', /size limit/);
      await p.whenClosed;
      assert.ok('return' in (await bystander.request('{"execute": "query-status"}')));
      bystander.close();
      // Many rounds of bad input, checked for growth.
      p = await RawPeer.connect(vmm.qmpPath, { negotiate: true });
      const rounds = fuzzRounds(12);
      const batch = fc.sample(garbage, { seed: FUZZ_SEED + 1, numRuns: 50 });
      for (const s of batch) await one(s); // one round more of warm-up
      const fd0 = fdCount(pid);
      const rss0 = statusKib(pid, 'VmRSS');
      const perRound: string[] = [];
      for (let r = 0; r < rounds; r++) {
        for (const s of batch) await one(s);
        perRound.push(`${fdCount(pid) - fd0}/${statusKib(pid, 'VmRSS') - rss0}`);
      }
      console.log(`QMP rounds, fd/RSS KiB growth after each: ${perRound.join(' ')}`);
      const fdDelta = fdCount(pid) - fd0;
      const rssDelta = statusKib(pid, 'VmRSS') - rss0;
      qmpFigures.printAndCheck({ fdDelta, rssDeltaKib: rssDelta });
      console.log(`QMP error classes: ${JSON.stringify(Object.fromEntries(errorClasses))}`);
      assert.ok(isAlive(vmm.proc));
      assert.ok(fdDelta <= 2, `VMM fd count grew by ${fdDelta} over ${rounds} rounds of bad input`);
      // ~1000 inputs after the warm-up; a leak of buffers, clients or timers per input would show. The bound
      // is GC and allocator slack.
      assert.ok(rssDelta < 32 * 1024, `VMM RSS grew by ${rssDelta} KiB over ${rounds} rounds of bad input`);
      const status = (await p.request('{"execute": "query-status"}')).return as { status: string };
      assert.ok(['running', 'paused'].includes(status.status));
      p.close();
    } finally {
      qmpFigures.expectExit(vmm.proc);
      await vmm.stop();
    }
  });

  test('found by fuzzing: a destination still waiting for its migration quits on QMP quit and on SIGTERM', async () => {
    // QMP quit takes the same way out (quit, then Vmm.close); one is enough in npm test.
    for (const how of LONG_FUZZ ? (['quit', 'SIGTERM'] as const) : (['SIGTERM'] as const)) {
      const dst = await startVmm(dir, 'waiting', device.path, 'tcp:127.0.0.1:0');
      const exited = new Promise<[number | null, string | null]>((r) => dst.proc.once('exit', (c, s) => r([c, s])));
      if (how === 'quit') {
        const q = await QmpClient.connect(dst.qmpPath);
        await q.execute('quit');
        q.close();
      } else {
        dst.proc.kill('SIGTERM');
      }
      // Its listener used to keep the process alive for ever; stop() kills it after 5 s if it still does.
      const killer = setTimeout(() => dst.proc.kill('SIGKILL'), 10_000);
      const [code, signal] = await exited;
      clearTimeout(killer);
      assert.deepEqual([code, signal], [0, null], `${how}: the VMM exits by itself, cleanly`);
    }
  });

  test('hostile streams on a destination VMM: refused with a reason, the VM never starts, QMP keeps serving', async () => {
    // A real stream to damage: a source VMM saves its VM to a file.
    const src = await startVmm(dir, 'src', device.path);
    streamFigures.watch(src.proc, 'source vmm');
    const file = join(dir, 'saved.vm');
    try {
      const q = await QmpClient.connect(src.qmpPath);
      await q.execute('migrate', { uri: `file:${file}` });
      const info = await waitForMigration(q);
      assert.equal(info.status, 'completed', String(info['error-desc'] ?? ''));
      q.close();
    } finally {
      streamFigures.expectExit(src.proc);
      await src.stop();
    }
    const valid = new Uint8Array(readFileSync(file));
    const sections: DecodedSection[] = new StreamDecoder().push(valid);
    assert.ok(sections.length >= 4);
    /** The stream re-encoded, section `at`'s payload replaced: valid CRCs around a hostile payload. */
    const withPayload = (at: number, payload: Uint8Array) => {
      const e = new StreamEncoder();
      const parts: Uint8Array[] = [...e.header()];
      sections.forEach((s, i) => {
        const p = i === at ? payload : s.payload;
        const h = { sectionId: s.sectionId, idstr: s.idstr, instanceId: s.instanceId, versionId: s.versionId };
        const enc = { start: e.start, part: e.part, end: e.end, full: e.full }[s.type];
        parts.push(
          ...(s.type === 'start' || s.type === 'full'
            ? enc.call(e, h as never, [p])
            : enc.call(e, s.sectionId as never, [p])),
        );
      });
      parts.push(...e.eof());
      return concat(parts);
    };
    const flip = (at: number) => {
      const b = valid.slice();
      b[at % b.byteLength]! ^= 0x40;
      return b;
    };
    const named: [string, Uint8Array][] = [
      [
        'hostile RAM payload, valid CRC',
        withPayload(
          sections.findIndex((s) => s.idstr === 'ram' && s.type !== 'start'),
          Uint8Array.of(
            0,
            0,
            0,
            0,
            0x7f,
            0xff,
            0xf0,
            0x08,
            6,
            0x70,
            0x63,
            0x2e,
            0x72,
            0x61,
            0x6d,
            ...new Uint8Array(4096),
          ),
        ),
      ],
      [
        'hostile device payload, valid CRC',
        withPayload(
          sections.findIndex((s) => s.idstr.endsWith('/vfio') && s.type === 'end'),
          concat([
            Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xef, 0x10, 0, 4, 0, 0, 0, 0, 0, 0, 0, 64),
            new Uint8Array(64).fill(0xee),
            Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xef, 0x10, 0, 1),
          ]),
        ),
      ],
    ];
    // Longer runs add damage the in-process stream fuzzing covers at length, and random damage.
    if (LONG_FUZZ) {
      named.push([
        'random bytes',
        new Uint8Array(
          Buffer.from(
            fc.sample(fc.uint8Array({ minLength: 4096, maxLength: 4096 }), { seed: FUZZ_SEED, numRuns: 1 })[0]!,
          ),
        ),
      ]);
      named.push(['one flipped byte', flip(Math.floor(valid.byteLength / 2))]);
      named.push(['truncated', valid.subarray(0, Math.floor(valid.byteLength * 0.7))]);
    }
    const extra = LONG_FUZZ ? Math.min(fuzzRounds(1), 20) : 0; // each costs a VMM process
    for (const [i, [at, mask]] of fc
      .sample(fc.tuple(fc.nat(valid.byteLength - 1), fc.integer({ min: 1, max: 255 })), {
        seed: FUZZ_SEED,
        numRuns: extra,
      })
      .entries()) {
      const b = valid.slice();
      b[at]! ^= mask;
      named.push([`random damage ${i}`, b]);
    }
    // The control: the undamaged stream, with GO, loads and starts the VM (so the inputs reach a real load).
    const cases: [string, Uint8Array, boolean][] = [
      ['the valid stream', valid, true],
      ...named.map(([n, b]) => [n, b, false] as [string, Uint8Array, boolean]),
    ];
    for (const [name, bytes, good] of cases) {
      const dst = await startVmm(dir, 'dst', device.path, 'tcp:127.0.0.1:0');
      streamFigures.watch(dst.proc, `destination vmm (${name})`);
      try {
        const sock = connect(dst.port!, '127.0.0.1');
        sock.on('error', () => {}); // the destination may close first
        await new Promise<void>((r) => sock.once('connect', () => r()));
        sock.write(bytes);
        if (good) {
          // READY comes back; answer GO.
          await new Promise<void>((r) => sock.once('data', () => r()));
          sock.write(encodeReturnPath({ type: ReturnPathType.GO, text: '' }));
        } else {
          sock.end();
        }
        const q = await QmpClient.connect(dst.qmpPath);
        const info = await waitForMigration(q, { timeoutMs: 30_000 });
        const status = await q.execute<{ status: string; running: boolean }>('query-status');
        if (good) {
          assert.equal(info.status, 'completed', `${name}: ${String(info['error-desc'] ?? '')}`);
          assert.equal(status.running, true);
          streamFigures.valid++;
        } else {
          streamFigures.inputs++;
          assert.equal(info.status, 'failed', `${name} must be refused`);
          assert.ok(typeof info['error-desc'] === 'string' && (info['error-desc'] as string).length > 0);
          console.log(`stream "${name}": ${info['error-desc']}`);
          assert.equal(status.running, false, `${name}: the VM must not start`);
          assert.equal(status.status, 'inmigrate');
          // The listener is gone: a second stream cannot try again.
          await assert.rejects(
            new Promise<void>((ok, fail) => {
              const s2 = connect(dst.port!, '127.0.0.1');
              s2.once('connect', () => {
                s2.destroy();
                ok();
              });
              s2.once('error', fail);
            }),
          );
        }
        assert.ok(isAlive(dst.proc), `${name}: the VMM is alive`);
        streamFigures.expectExit(dst.proc);
        await q.execute('quit');
        q.close();
        const code = await new Promise((r) =>
          dst.proc.exitCode !== null ? r(dst.proc.exitCode) : dst.proc.once('exit', r),
        );
        assert.equal(code, 0, `${name}: the VMM quits cleanly`);
        sock.destroy();
      } finally {
        streamFigures.expectExit(dst.proc);
        await dst.stop();
      }
    }
    streamFigures.printAndCheck();
  });
});
