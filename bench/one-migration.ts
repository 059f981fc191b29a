// One migration, checked, between two VMM processes of ours or two of QEMU's (qemu-system-x86_64, when
// installed): the round every RAM, zero-page and multifd figure and the profile part are made of. Each is
// verified (ours: page digests of both sides equal; both: the pages went as the guest's contents say), so
// a broken run cannot pass for a fast one.

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { once } from 'node:events';
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { guestRamAllocatedKib } from '../src/harness/guest-ram-usage.ts';
import { type MultifdSetting, startLocalPair, waitForMigration } from '../src/harness/local-hosts.ts';
import type { MultifdIoCounts } from '../src/vmm/migration/multifd-channel.ts';
import { QmpClient } from '../src/vmm/qmp/client.ts';
import type { Rate } from './figures.ts';

type RamInfo = { transferred: number; normal: number; duplicate: number };
type Digests = { ram: string };

/** Guest contents for a RAM figure: random bytes (every page goes with data) or zeroes (zero pages). */
export type GuestFill = 'random' | 'zero';

/** Checks the pages went as the fill says (a run that sent zero pages of a random guest is void). */
function checkPages(who: string, ram: RamInfo, memMiB: number, fill: GuestFill): void {
  const pages = memMiB * 256;
  if (fill === 'random' && ram.normal < pages * 0.99) throw new Error(`${who} sent only ${ram.normal} pages with data`);
  if (fill === 'zero' && ram.duplicate < pages * 0.99) throw new Error(`${who} sent only ${ram.duplicate} zero pages`);
}

/** Called around one migration (after the guest is up, after both sides completed), e.g. to sample CPU. */
export interface MigrationObserver {
  before(pids: { source: number; destination: number }): Promise<void> | void;
  after(): Promise<void> | void;
}

/** One migration of ours: the rate, the downtime, and where multifd was on, how its channels moved pages. */
export type OursRate = Rate & {
  downtime: number;
  dstRamMiB?: number;
  io?: { source: MultifdIoCounts; destination: MultifdIoCounts };
};

/**
 * One migration of a `memMiB` guest (random bytes, or all zeroes) between two VMM processes. `dstRamMiB`
 * (a fresh destination only): guest RAM the destination holds afterwards (its guest memfd's allocated
 * pages, guestRamAllocatedKib), read before the digests touch it all. A prefaulted destination holds it all
 * already: no figure there.
 */
export async function oursOnce(
  memMiB: number,
  warm: boolean,
  wrap: string[] = [],
  fill: GuestFill = 'random',
  multifd?: number | MultifdSetting,
  observe?: MigrationObserver,
  /** More arguments for both VMMs (`--no-huge-pages`). */
  vmmArgs: readonly string[] = [],
): Promise<OursRate> {
  const pair = await startLocalPair({
    multifd: typeof multifd === 'number' ? { channels: multifd } : multifd,
    sourceWrap: wrap,
    destinationWrap: wrap,
    memSize: `${memMiB}M`,
    paused: true,
    startTimeoutMs: 300_000,
    // No device on either side: QEMU's guest here (`-machine none`) has none, and a device's set-up and
    // stop-and-copy would count as RAM time in a migration of a few hundred ms (devices have their own
    // part). A zero guest's source is prefaulted, as QEMU's (prealloc=on) is: else the figure is the
    // kernel allocating the source's pages on the scan's first read, not the migration.
    source: { vmmArgs: ['--dirty-rate', '0', '--fill', fill, ...(fill === 'zero' ? ['--prefault'] : []), ...vmmArgs] },
    destination: { vmmArgs: ['--dirty-rate', '0', ...(warm ? ['--prefault'] : []), ...vmmArgs] },
  });
  try {
    const dstPid = pair.procs.dstVmm.child.pid!;
    const ramBefore = guestRamAllocatedKib(dstPid);
    await observe?.before({ source: pair.procs.srcVmm.child.pid!, destination: dstPid });
    await pair.src.execute('migrate', { uri: pair.uri });
    // The source reports its own total-time: the poll interval only delays noticing the end.
    const info = await waitForMigration(pair.src, { intervalMs: 100, timeoutMs: 600_000 });
    if (info.status !== 'completed') throw new Error(`migration ${info.status}: ${info['error-desc'] ?? ''}`);
    const dstInfo = await waitForMigration(pair.dst, { timeoutMs: 60_000 });
    await observe?.after();
    const dstRamMiB = warm ? undefined : (guestRamAllocatedKib(dstPid) - ramBefore) / 1024;
    const [a, b] = await Promise.all([
      // Digests of a large guest take seconds on a busy machine: more than the default 10 s reply time.
      pair.src.execute<Digests>('x-query-digests', undefined, { timeoutMs: 300_000 }),
      pair.dst.execute<Digests>('x-query-digests', undefined, { timeoutMs: 300_000 }),
    ]);
    if (a.ram !== b.ram) throw new Error('guest RAM differs at the destination: the benchmark run is void');
    const ram = info.ram as RamInfo;
    checkPages('our VMM', ram, memMiB, fill);
    const io = info['x-multifd-io'] as MultifdIoCounts | undefined;
    return {
      bytes: ram.transferred,
      ms: info['total-time'] as number,
      downtime: info.downtime as number,
      dstRamMiB,
      ...(io ? { io: { source: io, destination: dstInfo['x-multifd-io'] as MultifdIoCounts } } : {}),
    };
  } finally {
    await pair.stop();
  }
}

/** Why QEMU cannot be measured here, or null when it can. */
export function qemuMissing(): string | null {
  const r = spawnSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' });
  if (r.error) return `qemu-system-x86_64 is not on PATH (${(r.error as NodeJS.ErrnoException).code})`;
  if (r.status !== 0) return `qemu-system-x86_64 --version failed: ${r.stderr.trim()}`;
  return null;
}

export function qemuVersion(): string {
  return spawnSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' }).stdout.split('\n')[0]!.trim();
}

function startQemu(args: string[]): { child: ChildProcess; stderr: () => string } {
  const child = spawn('qemu-system-x86_64', ['-nodefaults', '-display', 'none', ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    err += d;
  });
  return { child, stderr: () => err };
}

async function qmpConnect(path: string, proc: { stderr: () => string }): Promise<QmpClient> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      return await QmpClient.connect(path, { timeoutMs: 5_000 });
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`QEMU's QMP socket never answered: ${proc.stderr()} ${err}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

async function freePort(): Promise<number> {
  const s = createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as { port: number }).port;
  s.close();
  await once(s, 'close');
  return port;
}

/**
 * QEMU's own precopy of a `memMiB` guest: the source's RAM is a file in /dev/shm filled with random bytes
 * (prealloc=on, so the source has its memory mapped as ours has), the destination a memfd backend,
 * prefaulted (`warm`, prealloc=on) or not. `-machine none`: RAM and nothing else, no CPU running.
 */
export async function qemuOnce(
  memMiB: number,
  warm: boolean,
  fill: GuestFill = 'random',
  multifd?: number,
  observe?: MigrationObserver,
): Promise<Rate & { downtime: number }> {
  const dir = mkdtempSync('/dev/shm/vfio-migrate-bench-');
  const file = join(dir, 'ram');
  const procs: ReturnType<typeof startQemu>[] = [];
  const clients: QmpClient[] = [];
  try {
    const fd = openSync(file, 'w');
    if (fill === 'random') {
      const buf = Buffer.allocUnsafe(1 << 20);
      for (let i = 0; i < memMiB; i++) writeSync(fd, randomFillSync(buf));
    } else {
      ftruncateSync(fd, memMiB * (1 << 20)); // zeroes; prealloc=on below maps them in, as ours reads them
    }
    closeSync(fd);
    const port = await freePort();
    const mem = `${memMiB}M`;
    const dst = startQemu([
      '-machine',
      'none,memory-backend=mem',
      '-m',
      mem,
      '-object',
      `memory-backend-memfd,id=mem,size=${mem}${warm ? ',prealloc=on' : ''}`,
      '-qmp',
      `unix:${dir}/dst.qmp,server=on,wait=off`,
      '-incoming',
      multifd ? 'defer' : `tcp:127.0.0.1:${port}`,
    ]);
    procs.push(dst);
    const src = startQemu([
      '-S',
      '-machine',
      'none,memory-backend=mem',
      '-m',
      mem,
      '-object',
      `memory-backend-file,id=mem,size=${mem},mem-path=${file},share=on,prealloc=on`,
      '-qmp',
      `unix:${dir}/src.qmp,server=on,wait=off`,
    ]);
    procs.push(src);
    const [qs, qd] = await Promise.all([qmpConnect(`${dir}/src.qmp`, src), qmpConnect(`${dir}/dst.qmp`, dst)]);
    clients.push(qs, qd);
    // QEMU limits migration to 128 MiB/s by default: lift it, as our side has no limit by default.
    await qs.execute('migrate-set-parameters', { 'max-bandwidth': 1e12 });
    if (multifd) {
      // Both sides, the destination before migrate-incoming (it was started with -incoming defer).
      for (const q of [qs, qd]) {
        await q.execute('migrate-set-capabilities', { capabilities: [{ capability: 'multifd', state: true }] });
        await q.execute('migrate-set-parameters', { 'multifd-channels': multifd });
      }
      await qd.execute('migrate-incoming', { uri: `tcp:127.0.0.1:${port}` });
    }
    await observe?.before({ source: src.child.pid!, destination: dst.child.pid! });
    await qs.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
    let info = await waitForMigration(qs, { intervalMs: 100, timeoutMs: 600_000 });
    if (info.status !== 'completed') throw new Error(`QEMU migration ${info.status}: ${info['error-desc'] ?? ''}`);
    if (observe) {
      // The destination may still be loading the last pages: its CPU until it has counts too, as ours'.
      const loaded = await waitForMigration(qd, { intervalMs: 10, timeoutMs: 60_000 });
      if (loaded.status !== 'completed') throw new Error(`QEMU's destination ended ${loaded.status}`);
      await observe.after();
    }
    // QEMU reports completed (migration_completion) before it computes total-time and downtime
    // (migration_calculate_complete, after the iteration loop): a query in between reads 0 for both.
    for (let polls = 0; !((info['total-time'] as number) > 0); polls++) {
      if (polls === 500) throw new Error('QEMU completed the migration but never reported its total-time');
      await new Promise((r) => setTimeout(r, 20));
      info = await qs.execute<Record<string, unknown>>('query-migrate');
    }
    const ram = info.ram as RamInfo;
    checkPages('QEMU', ram, memMiB, fill);
    return { bytes: ram.transferred, ms: info['total-time'] as number, downtime: info.downtime as number };
  } finally {
    for (const c of clients) c.close();
    for (const p of procs) {
      if (p.child.exitCode === null && p.child.signalCode === null) {
        const exited = once(p.child, 'exit');
        p.child.kill('SIGKILL');
        await exited;
      }
    }
    rmSync(dir, { recursive: true, force: true });
  }
}
