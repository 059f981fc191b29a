// libvfio-user's own sample client (samples/client.c, each era) against our `serve --device lvu-sample`
// in that era's flavor, and device state moving between their sample server and ours both ways.
//
// The client drives a source server through negotiation, region and IRQ info (BAR1's sparse areas and fd),
// config IDs, reset, DMA maps, dirty logging, the BAR0 timer (its INTx and DMA: direct and by messages),
// and a migration (pre-copy while a thread of it writes BAR1, stop-and-copy); it then forks, execs
// `dirname(argv[0])/server -v SOCKET_migrated` in its *parent* and goes on in the child: it resumes the saved
// data there, checks BAR1's CRC against the source's, and waits for the timer it armed 10 s ahead on the
// source to fire on the destination (BAR0 migrated), serving its DMA. Its checks are asserts and err():
// only its exit status says it passed. As it is the forked child of the process we start, that status
// reaches us through a child subreaper (support/subreaper.c, built here with cc as the peers are).
//
// Per era and direction: ours → ours, theirs (C) → ours, ours → theirs. The client is run from a wrapper
// directory holding a link to it and a `server`: a script starting the C sample server when that is the
// destination (placeWhenListening says why), else a script that only holds the forked process, our
// destination server having been started beforehand on SOCKET_migrated (the client waits for that path
// to exist; starting it up front keeps our server's start-up out of the client's 10-second timer lead). After the client: our servers are
// read through our own vfio-user client: BAR1 equal on both sides where both are ours, BAR0 (read as now -
// BAR0) within the run's span, which a destination that did not receive BAR0 (0: decades) cannot be.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { VfioUserClient } from '../../src/vfio-user/client.ts';
import { buildPeers, ERAS, type Era } from '../support/libvfio-user-peers.ts';
import { until } from '../support/until.ts';
import { BAR1_SIZE } from './support/lvu-vm.ts';
import { listening } from './support/unix-listening.mjs';

const BIN = new URL('../../bin/vfio-migrate.js', import.meta.url).pathname;
const SUBREAPER_C = new URL('./support/subreaper.c', import.meta.url).pathname;
/** Safety nets (never what is tested): the client's own run takes about 12 s (1 s + 10 s timers). */
const START_MS = 60_000;
const RUN_MS = 180_000;

const work = mkdtempSync(join(tmpdir(), 'lvu-'));
after(() => rmSync(work, { recursive: true, force: true }));

function buildSubreaper(): { path?: string; skip?: string } {
  const out = join(work, 'subreaper');
  const r = spawnSync('cc', ['-O', '-o', out, SUBREAPER_C], { encoding: 'utf8' });
  if (r.status !== 0) return { skip: `cannot build the subreaper with cc: ${(r.stderr || r.error?.message) ?? ''}` };
  return { path: out };
}

const peers = buildPeers();
const subreaper = peers.skip ? {} : buildSubreaper();
const skip = peers.skip ?? subreaper.skip;

interface Proc {
  proc: ChildProcess;
  out: string[];
  err: string[];
  exited: Promise<number | null>;
}

function start(cmd: string, args: string[]): Proc {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const out: string[] = [];
  const err: string[] = [];
  proc.stdout!.setEncoding('utf8').on('data', (d: string) => out.push(...d.split('\n').filter(Boolean)));
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => err.push(...d.split('\n').filter(Boolean)));
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  return { proc, out, err, exited };
}

/** Our server on `socket`, up once it says "serving". */
async function ourServer(era: Era, socket: string): Promise<Proc> {
  const p = start(process.execPath, [BIN, 'serve', '--device', 'lvu-sample', '--flavor', era, '--socket', socket]);
  await until(() => p.out.some((l) => l.includes('serving')) || p.proc.exitCode !== null, 'serving line', {
    ms: START_MS,
    context: () => p.err.join('\n'),
  });
  assert.equal(p.proc.exitCode, null, `our server exited: ${p.err.join('\n')}`);
  return p;
}

/** Their sample server on `socket`, up once it listens there. */
async function theirServer(era: Era, socket: string): Promise<Proc> {
  const p = start(peers.servers[era]!, ['-v', socket]);
  await until(() => listening(socket) || p.proc.exitCode !== null, 'socket', {
    ms: START_MS,
    context: () => p.err.join('\n'),
  });
  return p;
}

/**
 * When theirs is the destination: the client waits for SOCKET_migrated to exist and connects at once,
 * which their server's bind-then-listen can refuse (it did, on a loaded machine). So the `server` it
 * execs binds another path, and this moves the socket into place once it listens (renaming a socket
 * keeps it the same socket). The test does it, not a script beside the server: a shell holding their
 * server would reap the client's exit status with its own children's.
 */
async function placeWhenListening(pending: string, socket: string, client: Proc, context: () => string): Promise<void> {
  await until(() => listening(pending) || client.proc.exitCode !== null, 'destination listening', {
    ms: START_MS,
    context,
  });
  if (listening(pending)) renameSync(pending, socket);
}

async function stop(p: Proc): Promise<void> {
  if (p.proc.exitCode === null && p.proc.signalCode === null) p.proc.kill('SIGTERM');
  await p.exited;
}

/** BAR0 (as now - BAR0, seconds) and BAR1 of one of our servers, read through our client. */
async function readBars(socket: string): Promise<{ bar0: bigint; bar1: Buffer }> {
  const c = await VfioUserClient.connect(socket, { timeoutMs: 30_000 });
  try {
    const b0 = await c.regionRead(0, 0, 8);
    const bar1 = Buffer.from(await c.regionRead(1, 0, BAR1_SIZE));
    return { bar0: Buffer.from(b0).readBigInt64LE(0), bar1 };
  } finally {
    c.close();
  }
}

type Side = 'ours' | 'theirs';

describe("interop: libvfio-user's sample client and lvu-sample", { skip }, () => {
  for (const era of ERAS) {
    for (const [from, to] of [
      ['ours', 'ours'],
      ['theirs', 'ours'],
      ['ours', 'theirs'],
    ] as [Side, Side][]) {
      test(`${era}: the sample client runs to completion, migrating ${from} → ${to}`, async () => {
        const client = peers.clients[era];
        const server = peers.servers[era];
        assert.ok(client && server, `the build printed no ${era} client and server`);
        const dir = mkdtempSync(join(work, `${era}-`));
        symlinkSync(client, join(dir, 'client'));
        const socket = join(dir, 's');
        const dstSocket = `${socket}_migrated`;
        if (to === 'theirs')
          writeFileSync(
            join(dir, 'server'),
            `#!/bin/sh\n# their sample server, on a path the test moves into place; see placeWhenListening\nexec '${server}' "$1" "$2.pending"\n`,
            { mode: 0o755 },
          );
        else
          writeFileSync(
            join(dir, 'server'),
            '#!/bin/sh\n# holds the process the client forks; see the test\nexec sleep 600\n',
            { mode: 0o755 },
          );

        const began = BigInt(Math.floor(Date.now() / 1000));
        const src = from === 'ours' ? await ourServer(era, socket) : await theirServer(era, socket);
        const dst = to === 'ours' ? await ourServer(era, dstSocket) : null;
        const run = start(subreaper.path!, [join(dir, 'client'), socket]);
        const context = () =>
          [`client:`, ...run.out.slice(-25), ...run.err.slice(-10), 'source:', ...src.err.slice(-10)]
            .concat(dst ? ['destination:', ...dst.err.slice(-10)] : [])
            .join('\n');
        try {
          // The client is done once its destination saw it leave (ours logs it; theirs exits).
          if (dst) {
            await until(() => dst.err.some((l) => l.includes('client disconnected')), 'client leaving', {
              ms: RUN_MS,
              context,
            });
          } else {
            await placeWhenListening(`${dstSocket}.pending`, dstSocket, run, context);
            await until(() => run.out.filter((l) => l.startsWith('exit ')).length >= 1, 'exits', {
              ms: RUN_MS,
              context,
            });
          }
          const ended = BigInt(Math.floor(Date.now() / 1000));
          // Our destination, read after the client: it holds the migrated state.
          const dstBars = dst ? await readBars(dstSocket) : null;
          // The process the client forked from (our holder or their destination server) ends; the subreaper
          // then reaps the client and says how it ended.
          const holder = Number(run.out.find((l) => l.startsWith('start '))?.split(' ')[1]);
          assert.ok(holder > 0, context());
          if (to === 'ours') process.kill(holder, 'SIGTERM');
          assert.equal(await Promise.race([run.exited, new Promise((r) => setTimeout(r, RUN_MS))]), 0, context());
          const reaped = run.out.filter((l) => /^(exit|signal) /.test(l) && !l.startsWith(`exit ${holder} `));
          const clientEnd = reaped.filter((l) => !l.startsWith(`signal ${holder} `));
          assert.deepEqual(
            clientEnd.map((l) => l.replace(/^(\w+) \d+/, '$1')),
            ['exit 0'],
            `client:\n${context()}`,
          );
          // Our source, once the client's socket to it is closed (the forked holder inherited it too).
          let srcBars: { bar0: bigint; bar1: Buffer } | null = null;
          if (from === 'ours') {
            await until(() => src.err.some((l) => l.includes('client disconnected')), 'source released', {
              ms: RUN_MS,
              context,
            });
            srcBars = await readBars(socket);
          }

          // What the client itself shows: both timers fired and were served (source, then destination).
          assert.equal(run.out.filter((l) => l.includes('INTx triggered!')).length, 2, context());
          assert.ok(run.out.some((l) => l.includes('starting destination server')));
          for (const ours of [from === 'ours' ? src : null, dst]) {
            if (!ours) continue;
            assert.ok(
              ours.err.some((l) => l.includes('do_dma_io: DIRECT success')),
              context(),
            );
            assert.ok(
              ours.err.some((l) => l.includes('do_dma_io: MESSAGE success')),
              context(),
            );
          }
          // BAR0 moved: now - BAR0 lies within the run (the client armed it 10 s ahead), not decades away.
          for (const bars of [dstBars, srcBars]) {
            if (!bars) continue;
            const armedAt = -bars.bar0 + ended; // BAR0 itself, give or take the second
            assert.ok(armedAt >= began && armedAt <= ended + 12n, `BAR0 ${armedAt} outside [${began}, ${ended + 12n}]`);
          }
          if (dstBars)
            assert.ok(
              dstBars.bar1.some((b) => b !== 0),
              "BAR1 holds the client's random bytes",
            );
          if (dstBars && srcBars) {
            assert.ok(dstBars.bar1.equals(srcBars.bar1), 'BAR1 equal on source and destination');
            assert.ok(dstBars.bar0 - srcBars.bar0 <= 1n && srcBars.bar0 - dstBars.bar0 <= 1n, 'BAR0 equal');
          }
        } finally {
          if (run.proc.exitCode === null) {
            const holder = Number(run.out.find((l) => l.startsWith('start '))?.split(' ')[1]);
            if (holder > 0) {
              try {
                process.kill(holder, 'SIGKILL');
              } catch {}
            }
            run.proc.kill('SIGKILL');
          }
          await stop(src);
          if (dst) await stop(dst);
        }
      });
    }
  }
});
