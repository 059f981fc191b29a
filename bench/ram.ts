// RAM migration throughput (part of `npm run bench`): a non-zero guest (random contents, idle, no
// device) migrated between two VMM processes over loopback TCP through the real path (source VMM -> TCP ->
// destination VMM, QMP `migrate`), against raw Node loopback TCP between two processes measured in the same run, and
// against QEMU's own RAM migration of a guest of the same size when qemu-system-x86_64 is installed.
//
//   raw-tcp       a child process writes into a TCP socket on 127.0.0.1, this process reads into one reused
//                 buffer (`onread`) and counts: the link as Node can use it
//   raw-tcp-data  the same read through 'data' events (a fresh 64 KiB chunk per read): Node's default
//   raw-tcp-checked  the writer stages each 4 MiB of a 1 GiB random buffer with copy+CRC in one pass, the
//                 reader checksums what it reads: the link minus the least a checksummed stream must do
//   raw-tcp-guest the writer sends straight from a 1 GiB random buffer, the reader reads straight into
//                 a 1 GiB buffer (faulted in beforehand): the kernel copying between the socket and memory
//                 not in the caches, as a stream that writes from and reads into guest RAM has it
//   raw-tcp-landed  the same writer, the reader reading into one reused buffer and copying each read into
//                 a 1 GiB buffer: guest memory into guest memory the cheapest way found here
//   raw-tcp-checked-fresh  the raw-tcp-checked writer and reader, each read then written into a fresh
//                 1 GiB memfd (pwrite: shmem allocates the pages without zeroing them): the least a
//                 checksummed stream into a fresh destination does; its rounds alternate with ours-cold's
//   ours-warm     destination memory faulted in before the migration (`vmm --prefault`, QEMU's
//                 -mem-prealloc): the DESIGN.md aim is >= 80% of raw-tcp
//   ours-cold     a fresh destination (pages never written land through the guest memfd, nothing prefaulted)
//   qemu-warm/-cold  QEMU 7+ `-machine none` guests: source RAM a prefilled file in /dev/shm (prealloc),
//                 destination a memfd backend with or without prealloc, `-incoming tcp:`, QMP migrate
//   ours-zero, qemu-zero  (zeroBench) a mostly-zero guest, 4 GiB by default: all zero pages, so the
//                 figure is guest bytes per second of total-time (the zero scan and the record stream),
//                 with the destination's mapped guest RAM afterwards (ours; it should stay near 0)
//   ours-multifd-K, qemu-multifd-K  (multifdBench) a 1 GiB random guest over K channels; the same for
//                 K above 1 at a larger guest (multifdLargeBench, 4 GiB by default)
//
// Throughput = RAM bytes transferred / the source's total-time (QMP query-migrate, both for us and QEMU).
// Each migration is verified (ours: page digests of both sides equal) so a broken run cannot pass for a
// fast one.

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { once } from 'node:events';
import { closeSync, ftruncateSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { connect, createServer, type NetConnectOpts } from 'node:net';
import { cpus, freemem } from 'node:os';
import { join } from 'node:path';
import { bytes } from '../src/cli/format.ts';
import { guestRamAllocatedKib } from '../src/harness/guest-ram-usage.ts';
import { type MultifdSetting, startLocalPair, waitForMigration } from '../src/harness/local-hosts.ts';
import { defaultAddonPath, native } from '../src/native/addon.ts';
import { crc32c } from '../src/stream/crc32c.ts';
import type { MultifdIoCounts } from '../src/vmm/migration/multifd-channel.ts';
import { QmpClient } from '../src/vmm/qmp/client.ts';
import { processCpuMs, processStatCpuMs, selfCpuMs } from './cpu-time.ts';
import {
  type Figure,
  figure,
  formatFigure,
  measure,
  measureInTurn,
  measurePair,
  measureWith,
  type Round,
  ratio,
  say,
} from './figures.ts';
import type { BenchRun } from './results.ts';

export interface Rate {
  bytes: number;
  ms: number;
  /** rawStream only: CPU both ends used meanwhile (ms on-CPU, every thread of both processes). */
  cpuMs?: number;
}

/** MB/s (10^6 bytes per second). */
export function mbps(r: Rate): number {
  return r.bytes / r.ms / 1000;
}

/**
 * How the raw baseline reads: into one reused 1 MiB buffer (`onread`), or Node's default 'data' events;
 * `checked` reads as `onread` and checksums every byte read, while its writer copies each 4 MiB of a
 * memory-sized random buffer into a staging ring and checksums it in the same pass (crc32cCopy) before
 * sending: the least work any stream that checksums exactly the bytes it sends must add to the link.
 * `staged` has the same writer (a device producing its state: each block copied and checksummed out of
 * its memory) and a reader that copies every read into a buffer the size of the stream, touched
 * beforehand (a VMM keeping what it read): the least work a device's trapped stop-and-copy must do.
 * `landed` has the `guest` writer (straight from a memory-sized buffer, as QEMU sends guest pages) and
 * the `staged` reader (each read into a reused buffer, then copied into a memory-sized one): the
 * cheapest way found here to move memory into memory, with no checksum and no framing. `fresh` is
 * `checked` with each read then written into a fresh memfd the size of the stream (pwrite: shmem
 * allocates a page a write fills whole without zeroing it, as our fresh destination lands pages): the
 * least work a checksummed stream into memory nobody has touched yet must do.
 */
export type RawReader = 'onread' | 'data' | 'checked' | 'guest' | 'staged' | 'landed' | 'fresh';

/**
 * The raw writers (a child process's script): plain 1 MiB writes of one buffer; of successive 1 MiB of a
 * memory-sized random buffer ('guest', 'landed'); or staged and checksummed ('checked', 'staged', 'fresh').
 */
function rawWriter(total: number, reader: RawReader): string {
  // 'staged' asks for the 4 MiB send buffer our vfio-user connections ask for (docs/vfio-user.md): with
  // Linux's default the writer waits for the reader every few hundred KiB, and a ceiling must not be
  // held down by a setting we do not use. Node's socket has no public fd (its handle's is used: bench only).
  const sendBuffer = reader === 'staged' ? 'n.setSendBuffer(s._handle.fd,4<<20);' : '';
  if (reader === 'guest' || reader === 'landed')
    return `const G=Buffer.alloc(${total});require('crypto').randomFillSync(G);
      function serve(s){let off=0;function go(){while(off<${total}){const b=G.subarray(off,Math.min(off+(1<<20),${total}));off+=b.length;if(!s.write(b)){s.once('drain',go);return}}s.end()}go()}`;
  if (reader !== 'checked' && reader !== 'staged' && reader !== 'fresh')
    return `const b=Buffer.alloc(1<<20,7);
      function serve(s){let left=${total};function go(){while(left>0){left-=b.length;if(!s.write(b)){s.once('drain',go);return}}s.end()}go()}`;
  const addon = JSON.stringify(defaultAddonPath);
  // The ring is written once before the stream starts (Buffer.alloc with a fill): a device server's and
  // a VMM's buffers are warm by the measured rounds, and on this kind of host the ring's 4096 first-touch
  // faults cost tens of ms, a large part of a 256 MiB round.
  return `const n=require(${addon});const G=Buffer.alloc(${total});require('crypto').randomFillSync(G);
    const S=4<<20,ring=[0,1,2,3].map(()=>Buffer.alloc(S,1)),busy=[null,null,null,null];
    async function serve(s){${sendBuffer}let k=0;for(let off=0;off<${total};off+=S,k=(k+1)%4){if(busy[k])await busy[k];
      const src=G.subarray(off,Math.min(off+S,${total}));n.crc32cCopy(ring[k],0,0,src,0);
      busy[k]=new Promise((r)=>s.write(ring[k].subarray(0,src.length),r));
      if(s.writableNeedDrain)await new Promise((r)=>s.once('drain',r))}s.end()}`;
}

/**
 * A child process listens on `target` (a loopback TCP port or a UNIX socket path) and writes `total` bytes
 * to whoever connects; we connect, read and count. The baseline every transport figure is a ratio to.
 * `onread` (the default) reads into one reused buffer, as close to the link as Node gets; 'data'
 * allocates a fresh 64 KiB chunk per read, what a plain Node reader pays; 'checked' see RawReader.
 */
export async function rawStream(
  total: number,
  target: { port: number } | { path: string },
  reader: RawReader = 'onread',
): Promise<Rate> {
  const at = 'port' in target ? `${target.port},'127.0.0.1'` : JSON.stringify(target.path);
  const writer = `const net=require('net');${rawWriter(total, reader)}
    const srv=net.createServer((s)=>{srv.close();serve(s)});
    srv.listen(${at},()=>process.stdout.write(JSON.stringify(srv.address())+'\\n'))`;
  const child = spawn(process.execPath, ['-e', writer], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = once(child, 'exit');
  let fresh = -1;
  try {
    const [line] = (await once(child.stdout!, 'data')) as [Buffer];
    const address = JSON.parse(line.toString()) as { port: number } | string;
    const where: NetConnectOpts =
      typeof address === 'string' ? { path: address } : { port: address.port, host: '127.0.0.1' };
    let got = 0;
    let crc = 0;
    const buffer = Buffer.allocUnsafe(1 << 20);
    // 'guest': each read lands where the last one ended, in a buffer the size of the stream.
    const into = reader === 'guest' ? Buffer.alloc(total, 1) : null;
    // 'staged', 'landed': each read is copied there instead.
    const kept = reader === 'staged' || reader === 'landed' ? Buffer.alloc(total, 1) : null;
    // 'fresh': each read is written there, in memory nobody has touched (closed with the round: freed).
    fresh = reader === 'fresh' ? native().memfdCreate('raw-tcp-fresh', total) : -1;
    const count = (n: number) => {
      if (reader === 'checked' || reader === 'fresh') crc = crc32c(buffer.subarray(0, n), crc);
      if (kept) kept.set(buffer.subarray(0, n), got);
      if (fresh >= 0) writeSync(fresh, buffer, 0, n, got);
      got += n;
      return true;
    };
    const sock =
      reader === 'data'
        ? connect(where).on('data', (d: Buffer) => count(d.byteLength))
        : connect({
            ...where,
            onread: {
              buffer: into
                ? () => (got < total ? into.subarray(got, Math.min(got + (1 << 20), total)) : buffer)
                : buffer,
              callback: count,
            },
          });
    await once(sock, 'connect');
    const cpu = () => selfCpuMs() + processCpuMs(child.pid!);
    const cpu0 = cpu();
    const t0 = performance.now();
    await once(sock, 'end');
    const ms = performance.now() - t0;
    const cpuMs = cpu() - cpu0;
    sock.destroy();
    // A writer that died early (say, an addon built before crc32cCopy) must not pass for a fast link.
    if (got !== total) throw new Error(`raw ${reader} writer sent ${got} of ${total} bytes: the run is void`);
    // What 'fresh' landed is what it read (read back after the timed span).
    if (fresh >= 0 && crcOfFile(fresh, total, buffer) !== crc)
      throw new Error(`raw ${reader} reader landed other bytes than it read: the run is void`);
    return { bytes: got, ms, cpuMs };
  } finally {
    if (fresh >= 0) closeSync(fresh);
    child.kill();
    await exited;
  }
}

/** CRC-32C of the first `total` bytes of a file, read through `scratch`. */
function crcOfFile(fd: number, total: number, scratch: Uint8Array): number {
  let crc = 0;
  for (let at = 0; at < total; ) {
    const n = readSync(fd, scratch, 0, Math.min(scratch.byteLength, total - at), at);
    if (n === 0) break;
    crc = crc32c(scratch.subarray(0, n), crc);
    at += n;
  }
  return crc;
}

/** Raw Node loopback TCP between two processes. */
export function rawTcp(total: number, reader: RawReader = 'onread'): Promise<Rate> {
  return rawStream(total, { port: 0 }, reader);
}

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

/**
 * One migration of a `memMiB` guest (random bytes, or all zeroes) between two VMM processes. `dstRamMiB`
 * (a fresh destination only): guest RAM the destination holds afterwards (its guest memfd's allocated
 * pages, guestRamAllocatedKib), read before the digests touch it all. A prefaulted destination holds it all
 * already: no figure there.
 */
/** One migration of ours: the rate, the downtime, and where multifd was on, how its channels moved pages. */
type OursRate = Rate & {
  downtime: number;
  dstRamMiB?: number;
  io?: { source: MultifdIoCounts; destination: MultifdIoCounts };
};

export async function oursOnce(
  memMiB: number,
  warm: boolean,
  wrap: string[] = [],
  fill: GuestFill = 'random',
  multifd?: number | MultifdSetting,
  observe?: MigrationObserver,
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
    source: { vmmArgs: ['--dirty-rate', '0', '--fill', fill, ...(fill === 'zero' ? ['--prefault'] : [])] },
    destination: { vmmArgs: ['--dirty-rate', '0', ...(warm ? ['--prefault'] : [])] },
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

/** The RAM part of `npm run bench`: every figure `rounds` times. */
export async function ramBench(memMiB: number, rounds: number, run: BenchRun): Promise<void> {
  const total = memMiB * (1 << 20);
  say(`RAM migration: a ${bytes(total)} guest of random bytes, idle, between two VMM processes over loopback TCP`);
  const rate = (x: Rate & { downtime?: number }) => ({
    value: mbps(x),
    per: `${bytes(x.bytes)} in ${x.ms.toFixed(0)} ms`,
    note: x.downtime !== undefined ? `downtime ${x.downtime} ms` : undefined,
  });
  const asRate = async (r: Promise<Rate>) => rate(await r);
  const raw = await measure('raw-tcp', 'MB/s', rounds, () => asRate(rawTcp(total)));
  const rawData = await measure('raw-tcp-data', 'MB/s', rounds, () => asRate(rawTcp(total, 'data')));
  const rawChecked = await measure('raw-tcp-checked', 'MB/s', rounds, () => asRate(rawTcp(total, 'checked')));
  const rawGuest = await measure('raw-tcp-guest', 'MB/s', rounds, () => asRate(rawTcp(total, 'guest')));
  const rawLanded = await measure('raw-tcp-landed', 'MB/s', rounds, () => asRate(rawTcp(total, 'landed')));
  const missing = qemuMissing();
  if (missing) {
    say(`qemu       skipped: ${missing} (apt-get install qemu-system-x86 to compare)`);
    run.skipped.push({ name: 'qemu', why: missing });
  } else say(`qemu       ${qemuVersion()} (its rounds alternate with ours)`);
  // Ours against QEMU's with the destination prefaulted (warm) and fresh (cold), each round's CPU counted:
  // a fresh destination's rate swings with how fast the host hands out new pages, its CPU per GiB shows it.
  const tally = new CpuTally(memMiB / 1024);
  const round = (who: Who, warmDest: boolean, kind: string) => () =>
    tally.count(
      `${who}-${kind} cpu`,
      who,
      (use) =>
        who === 'ours'
          ? oursOnce(memMiB, warmDest, [], 'random', undefined, use)
          : qemuOnce(memMiB, warmDest, 'random', undefined, use),
      rate,
    );
  // Ours and QEMU's in turn; the cold rounds also with the least a checksummed stream into fresh memory
  // does, since how fast the host hands out new pages moves all three alike.
  const inTurn = async (warmDest: boolean, kind: string, extra: { name: string; fn: Round }[] = []) => {
    const entries = [{ name: `ours-${kind}`, fn: round('ours', warmDest, kind) }, ...extra];
    if (!missing) entries.push({ name: `qemu-${kind}`, fn: round('qemu', warmDest, kind) });
    const figs = await measureInTurn('MB/s', rounds, entries);
    return [figs[0]!, figs.slice(1, 1 + extra.length), missing ? null : figs.at(-1)!] as const;
  };
  const [warm, , qemuWarm] = await inTurn(true, 'warm');
  const freshRound = () => asRate(rawTcp(total, 'fresh'));
  const [cold, [rawFresh], qemuCold] = await inTurn(false, 'cold', [{ name: 'raw-tcp-checked-fresh', fn: freshRound }]);
  const cpu = ['ours-warm cpu', 'ours-cold cpu'].map((name) => tally.figure(name, 'ours'));
  run.figures.push(raw, rawData, rawChecked, rawGuest, rawLanded, warm, cold, rawFresh!, ...cpu);
  const qemuCpu = qemuWarm && qemuCold ? ['qemu-warm cpu', 'qemu-cold cpu'].map((n) => tally.figure(n, 'qemu')) : [];
  if (qemuWarm && qemuCold) run.figures.push(qemuWarm, qemuCold, ...qemuCpu);
  say();
  run.ratios.push(
    ratio('ours-warm / raw-tcp', warm, raw, '>= 0.80'),
    ratio('ours-cold / raw-tcp', cold, raw),
    // The ceiling a checksummed stream has here, and how near ours comes to it (docs/performance.md).
    ratio('raw-tcp-checked / raw-tcp', rawChecked, raw),
    ratio('ours-warm / raw-tcp-checked', warm, rawChecked),
    // What the kernel's copies between a socket and memory not in the caches cost here: where this is
    // far below 1, sending from and reading into guest RAM directly is slower than staging through a
    // small reused buffer (native/src/chanthread.c; docs/performance.md).
    ratio('raw-tcp-guest / raw-tcp', rawGuest, raw),
    // Memory moved into memory the cheapest way found here, no checksum, no framing: where this and
    // raw-tcp-guest are both below 0.8, so is a stream that lands guest pages either way (docs/performance.md).
    ratio('raw-tcp-landed / raw-tcp', rawLanded, raw),
    ratio('ours-warm / raw-tcp-landed', warm, rawLanded),
    // How much of the least a checksummed stream into fresh memory does ours reaches (same rounds' load).
    ratio('ours-cold / raw-tcp-checked-fresh', cold, rawFresh!),
  );
  if (qemuWarm && qemuCold) {
    run.ratios.push(
      ratio('ours-warm / qemu-warm', warm, qemuWarm, '>= 1.5'),
      // What any stream that checksums every byte could reach against QEMU's unchecked one, here; and
      // what the link itself carries (one connection, read by Node): below 1.5, no single stream reaches
      // that aim here, checked or not.
      ratio('raw-tcp-checked / qemu-warm', rawChecked, qemuWarm),
      ratio('raw-tcp / qemu-warm', raw, qemuWarm),
      ratio('ours-cold / qemu-cold', cold, qemuCold, '>= 1.5'),
      // What any stream that checksums every byte into fresh memory could reach against QEMU's cold one.
      ratio('raw-tcp-checked-fresh / qemu-cold', rawFresh!, qemuCold),
      // The same work's CPU (above 1: ours spent less per GiB).
      ratio('qemu-warm cpu / ours-warm cpu', qemuCpu[0]!, cpu[0]!),
      ratio('qemu-cold cpu / ours-cold cpu', qemuCpu[1]!, cpu[1]!),
    );
  } else {
    say('ours / qemu                      skipped (no QEMU here)');
  }
}

/** Guest MB/s: the guest's size over the migration's total-time (what a zero-page guest costs to move). */
function guestRate(memMiB: number, r: OursRate) {
  const guest = memMiB * (1 << 20);
  const held = r.dstRamMiB !== undefined ? `; destination holds ${r.dstRamMiB.toFixed(1)} MiB of it` : '';
  // Which way the multifd channel threads chose (x-multifd-io auto): a host-dependent choice, so the
  // trend shows it next to each figure.
  const direct = (c: MultifdIoCounts) => `${Math.round((100 * c.direct) / Math.max(1, c.staged + c.direct))}%`;
  const io = r.io ? `; packets direct ${direct(r.io.source)} sent, ${direct(r.io.destination)} received` : '';
  return {
    value: guest / r.ms / 1000,
    per: `${bytes(guest)} guest, ${bytes(r.bytes)} sent in ${r.ms.toFixed(0)} ms`,
    note: `downtime ${r.downtime} ms${held}${io}`,
  };
}

/** The zero-page part of `npm run bench`: a mostly-zero guest, ours and (when installed) QEMU's. */
export async function zeroBench(memMiB: number, rounds: number, run: BenchRun): Promise<void> {
  say(`zero pages: a ${bytes(memMiB * (1 << 20))} guest of zero pages, idle, over loopback TCP (guest MB/s)`);
  const missing = qemuMissing();
  const [oursZero, qemu] = await measureWith(
    'MB/s',
    rounds,
    { name: 'ours-zero', fn: async () => guestRate(memMiB, await oursOnce(memMiB, false, [], 'zero')) },
    missing ? null : { name: 'qemu-zero', fn: async () => guestRate(memMiB, await qemuOnce(memMiB, false, 'zero')) },
  );
  run.figures.push(oursZero);
  if (!qemu) {
    say(`qemu-zero  skipped: ${missing}`);
    run.skipped.push({ name: 'qemu-zero', why: missing! });
    return;
  }
  run.figures.push(qemu);
  say();
  run.ratios.push(ratio('ours-zero / qemu-zero', oursZero, qemu, '>= 1.0'));
}

/**
 * Observes a migration for the CPU both VMM processes spent from just before `migrate` until the end was
 * seen (user and system time, /proc/PID/stat). Divided by the migration's own total-time, not by the
 * observer's window: that runs on until the next poll of query-migrate sees the end (up to 100 ms of
 * both VMMs idle) and made the cores look less busy than they were.
 */
function cpuUsed(): MigrationObserver & { ms(): number } {
  let pids: { source: number; destination: number } | undefined;
  let cpu0 = 0;
  let result = Number.NaN;
  const cpu = () => processStatCpuMs(pids!.source) + processStatCpuMs(pids!.destination);
  return {
    before(p) {
      pids = p;
      cpu0 = cpu();
    },
    after() {
      result = cpu() - cpu0;
    },
    ms: () => result,
  };
}

/**
 * Both processes' CPU per GiB moved, per figure, over the rounds run through `count`: what each program
 * spends on the same work, whether or not it kept the cores busy (a CPU figure moves less with a busy
 * machine than a rate, and says whether a gap is CPU or waiting).
 */
class CpuTally {
  private readonly perGiB = new Map<string, number[]>();
  private readonly cores = cpus().length;

  constructor(private readonly gib: number) {}

  /**
   * Runs one migration with both processes' CPU counted under `name`; the rate's note then says how many
   * of the machine's cores they kept busy (their CPU over the migration's own total-time).
   */
  async count<M extends { ms: number }>(
    name: string,
    who: Who,
    migrate: (observe: MigrationObserver) => Promise<M>,
    rate: (measured: M) => { value: number; per: string; note?: string },
  ): Promise<{ value: number; per: string; note: string; busyCores: number }> {
    const use = cpuUsed();
    const measured = await migrate(use);
    this.perGiB.set(name, [...(this.perGiB.get(name) ?? []), use.ms() / this.gib]);
    const r = rate(measured);
    const busyCores = use.ms() / measured.ms;
    const busy = `both ${PROCESSES[who]} on CPU ${busyCores.toFixed(2)} of ${this.cores} cores`;
    return { ...r, note: r.note ? `${r.note}; ${busy}` : busy, busyCores };
  }

  /** The figure of `name`'s rounds: CPU ms of both processes per GiB moved. */
  figure(name: string, who: Who): Figure {
    const f = figure(name, 'ms', this.perGiB.get(name)!, { per: `CPU ms of both ${PROCESSES[who]} per GiB moved` });
    say(formatFigure(f));
    return f;
  }
}

type Who = 'ours' | 'qemu';
const PROCESSES: Record<Who, string> = { ours: 'VMMs', qemu: 'QEMUs' };

/**
 * The channel counts measured for `channels` (N) on a machine of `cores` cores: 1, then doubling up to
 * the cores (the aim asks for growth up to them), and N itself (QEMU's comparison), in order.
 */
export function multifdCounts(channels: number, cores: number): number[] {
  const counts = new Set([1, channels]);
  for (let k = 2; k <= cores; k *= 2) counts.add(k);
  return [...counts].sort((a, b) => a - b);
}

/**
 * The multifd part of `npm run bench`: a random guest over each count of channels (multifdCounts) with
 * multifd on, each count against the one before it, and against QEMU's multifd with the same channels
 * when installed.
 */
export async function multifdBench(memMiB: number, channels: number, rounds: number, run: BenchRun): Promise<void> {
  say(`multifd: a ${bytes(memMiB * (1 << 20))} guest of random bytes, idle, over loopback TCP (guest MB/s)`);
  const cores = cpus().length;
  const counts = multifdCounts(channels, cores);
  // How much of the machine both VMMs used meanwhile, and so each round's CPU ceiling: the rate at which
  // every core, spending what this round spent per byte, would move the guest. More channels can fill
  // idle cores; comparing the N-channel ceiling with one channel's says whether they also pay more or
  // less CPU per byte (more threads, but fewer idle waits between packets).
  const ceilings = new Map<number, number[]>();
  const tally = new CpuTally(memMiB / 1024);
  const busy = async (k: number, who: Who) => {
    const r = await tally.count(
      `${who}-multifd-${k} cpu`,
      who,
      (use) =>
        who === 'ours' ? oursOnce(memMiB, true, [], 'random', k, use) : qemuOnce(memMiB, true, 'random', k, use),
      (measured) => guestRate(memMiB, measured),
    );
    if (who === 'ours') ceilings.set(k, [...(ceilings.get(k) ?? []), (r.value * cores) / r.busyCores]);
    return r;
  };
  // QEMU's multifd with each count above one (when installed), its rounds alternating with ours.
  const missing = qemuMissing();
  const ours = new Map<number, Figure>();
  const qemu = new Map<number, Figure>();
  for (const k of counts) {
    const [o, q] = await measureWith(
      'MB/s',
      rounds,
      { name: `ours-multifd-${k}`, fn: () => busy(k, 'ours') },
      k === 1 || missing ? null : { name: `qemu-multifd-${k}`, fn: () => busy(k, 'qemu') },
    );
    ours.set(k, o);
    if (q) qemu.set(k, q);
  }
  const ceiling = (k: number) => {
    const f = figure(`multifd-${k} cpu ceiling`, 'MB/s', ceilings.get(k)!, {
      per: `${cores} cores / (both VMMs' CPU per byte with ${k} channel${k === 1 ? '' : 's'})`,
    });
    say(formatFigure(f));
    return f;
  };
  const [one, n] = [ours.get(1)!, ours.get(channels)!];
  const ceilingOne = ceiling(1);
  run.figures.push(...ours.values(), ceilingOne, ...counts.slice(1).map(ceiling));
  // The same guest over one channel against the link, when the ram part ran too: pages moved by a
  // native thread through its staging buffer, with no per-section checksum (docs/performance.md).
  const raw = run.figures.find((f) => f.name === 'raw-tcp');
  if (raw) run.ratios.push(ratio('ours-multifd-1 / raw-tcp', one, raw));
  // Growth with the channels, each count against the one before it. A channel has a thread moving its bytes
  // in each VMM, and both VMMs share this machine: up to half the cores more channels should move more
  // (the aim); beyond, their threads share the cores, and the ratio is shown without an aim.
  for (let i = 1; i < counts.length; i++) {
    const [k, prev] = [counts[i]!, counts[i - 1]!];
    const name = `multifd ${k} channels / ${prev} channel${prev === 1 ? '' : 's'}`;
    run.ratios.push(ratio(name, ours.get(k)!, ours.get(prev)!, 2 * k <= cores ? '> 1' : undefined));
  }
  if (channels > 1 && channels !== counts[1])
    run.ratios.push(ratio(`multifd ${channels} channels / 1 channel`, n, one));
  run.ratios.push(
    ratio('multifd-1 cpu ceiling / ours-multifd-1', ceilingOne, one),
    ratio(`ours-multifd-${channels} / multifd-1 cpu ceiling`, n, ceilingOne),
  );
  if (missing) {
    say(`qemu-multifd  skipped: ${missing}`);
    run.skipped.push({ name: 'qemu-multifd', why: missing });
    return;
  }
  // Ours against QEMU's with the same channels: the rate, and the CPU both processes spent per GiB (QEMU's
  // over ours: above 1, ours spent less on the same work).
  for (const [k, q] of qemu) {
    run.figures.push(q);
    run.ratios.push(ratio(`ours-multifd-${k} / qemu-multifd-${k}`, ours.get(k)!, q, '>= 1'));
    const [oc, qc] = [tally.figure(`ours-multifd-${k} cpu`, 'ours'), tally.figure(`qemu-multifd-${k} cpu`, 'qemu')];
    run.figures.push(oc, qc);
    run.ratios.push(ratio(`qemu-multifd-${k} cpu / ours-multifd-${k} cpu`, qc, oc));
  }
  say();
}

/**
 * Multifd against QEMU's at a larger guest (`--multifd-large-mem`), for each channel count above one:
 * what a migration costs once (setting up, the end, and in a fresh VMM process compiling its code as it
 * first runs) weighs less than at multifdBench's guest, so the two comparisons side by side tell costs
 * per migration from costs per byte. Skipped without QEMU, or without the memory for two guests at once.
 */
export async function multifdLargeBench(
  memMiB: number,
  channels: number,
  rounds: number,
  run: BenchRun,
): Promise<void> {
  const size = bytes(memMiB * (1 << 20));
  say(`multifd at a ${size} guest of random bytes, against QEMU's with the same channels (guest MB/s)`);
  // Both VMMs hold the guest at once (ours: source and destination; QEMU's: its file and the destination).
  const needMiB = 2.5 * memMiB;
  const missing =
    qemuMissing() ??
    (freemem() < needMiB * (1 << 20)
      ? `${(freemem() / (1 << 30)).toFixed(1)} GiB of memory available, ${(needMiB / 1024).toFixed(1)} GiB needed`
      : null);
  if (missing) {
    say(`multifd ${size}  skipped: ${missing}`);
    run.skipped.push({ name: `multifd ${size}`, why: missing });
    return;
  }
  for (const k of multifdCounts(channels, cpus().length).filter((c) => c > 1)) {
    const [ours, qemu] = await measurePair(
      'MB/s',
      rounds,
      {
        name: `ours-multifd-${k} ${size}`,
        fn: async () => guestRate(memMiB, await oursOnce(memMiB, true, [], 'random', k)),
      },
      {
        name: `qemu-multifd-${k} ${size}`,
        fn: async () => guestRate(memMiB, await qemuOnce(memMiB, true, 'random', k)),
      },
    );
    run.figures.push(ours, qemu);
    run.ratios.push(ratio(`ours-multifd-${k} / qemu-multifd-${k} (${size} guest)`, ours, qemu, '>= 1'));
  }
  say();
}
