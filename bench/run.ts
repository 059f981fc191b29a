// npm run bench: a command's start-up (bench/startup.ts), RAM migration between two VMM processes
// (bench/ram.ts), a mostly-zero guest (bench/ram.ts zeroBench), multifd over 1, 2, 4... channels and
// against QEMU's with the same channels (multifdBench; again at a 4 GiB guest, `--multifd-large-mem`, 0:
// not), the dirty-log sync inside a real run
// (bench/dirty-log.ts), where a RAM migration's CPU goes (bench/profile.ts: per-thread CPU of both VMMs,
// perf samples by kind of work), then the throughput of device migration data through the migration
// region over vfio-user, each as a ratio to a baseline measured in the same run (these machines are noisy, so only
// ratios within one run mean anything). Every figure is measured the same number of rounds (--rounds,
// default 3) and reported as its median with the spread; `--json` prints the run as JSON, and every run is
// appended to bench/results/history.jsonl with the machine and the commit (`--no-history`: not appended,
// for a smoke run). `npm run bench -- --doc` runs nothing: it regenerates docs/performance.md's tables
// from the history (bench/perf-doc.ts).
//
//   raw-unix      a child process writes into a UNIX stream socket, this process reads and counts
//   raw-unix-staged  the same socket, the writer producing each 4 MiB as a device does (copied and
//                 checksummed out of a state-sized buffer), the reader copying every read into a kept
//                 buffer: the least work of a trapped stop-and-copy, with no protocol in between
//   memcpy        copying the same bytes from one buffer into another in-process: memory's own ceiling
//   device        the sample device producing its state in-process (no transport): the device's own ceiling
//   trapped       stop-and-copy of the device through the region, data read with REGION_READ messages
//   mmapped       the same, data read through the mmapped data section (zero copies on the VMM side)
//   v2            the same device behind the v2 interface: stop-copy data read with MIG_DATA_READ messages
// The trapped, mmapped and v2 rounds keep what they read and resume it into a second device server
// afterwards (not timed): its state digest must equal the source's, or the run is void.

import { randomFillSync } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { DeviceState } from '../src/abi/migration.ts';
import { bytes } from '../src/cli/format.ts';
import { LargeMemoryDevice, LargeMemoryRegs } from '../src/device/samples/large-memory.ts';
import { VfioUserClient } from '../src/vfio-user/client.ts';
import { findMigrationRegion, openRegionPort, type VfioRegionPort } from '../src/vfio-user/region-port.ts';
import { MAX_MULTIFD_CHANNELS } from '../src/vmm/qmp/commands.ts';
import { SeedRegionClient } from '../src/vmm/vfio/seed-region-client.ts';
import { V2MigrationDriver } from '../src/vmm/vfio/v2-driver.ts';
import { type ServerProcess, startServer } from '../test/support/server-process.ts';
import { threadCpuMs } from './cpu-time.ts';
import { dirtySyncInRun } from './dirty-log.ts';
import { figure, formatFigure, measure, ratio, say, sayTo } from './figures.ts';
import { writePerfDoc } from './perf-doc.ts';
import { profileBench } from './profile.ts';
import { multifdBench, multifdLargeBench, ramBench, zeroBench } from './ram.ts';
import { rawStream } from './raw-streams.ts';
import { HISTORY, newRun, saveRun } from './results.ts';
import { buildPackage, startupBench } from './startup.ts';

const { values } = parseArgs({
  options: {
    'device-mem': { type: 'string', default: '256' },
    rounds: { type: 'string', default: '3' },
    'ram-mem': { type: 'string', default: '1024' },
    'zero-mem': { type: 'string', default: '4096' },
    'sync-mem': { type: 'string', default: '4096' },
    'multifd-mem': { type: 'string', default: '1024' },
    'multifd-large-mem': { type: 'string', default: '4096' },
    'multifd-channels': { type: 'string', default: '4' },
    only: { type: 'string' },
    json: { type: 'boolean', default: false },
    'no-history': { type: 'boolean', default: false },
    doc: { type: 'boolean', default: false },
    sources: { type: 'boolean', default: false },
  },
});
if (values.doc) {
  say(`${writePerfDoc()} regenerated from ${HISTORY}`);
  process.exit(0);
}
const PARTS = ['startup', 'ram', 'zero', 'multifd', 'dirty-log', 'device', 'profile'] as const;
if (values.only && !PARTS.includes(values.only as (typeof PARTS)[number]))
  throw new Error(`--only takes ${PARTS.join(', ')}`);
const want = (part: (typeof PARTS)[number]) => !values.only || values.only === part;
const MEM = Number(values['device-mem']) << 20;
const ROUNDS = Number(values.rounds);
if (!(ROUNDS >= 1)) throw new Error('--rounds must be at least 1');
const CHANNELS = Number(values['multifd-channels']);
if (!Number.isInteger(CHANNELS) || CHANNELS < 1 || CHANNELS > MAX_MULTIFD_CHANNELS)
  throw new Error(`--multifd-channels must be an integer from 1 to ${MAX_MULTIFD_CHANNELS} (QEMU's range)`);
if (values.json) sayTo((line) => process.stderr.write(`${line}\n`));
const run = newRun(ROUNDS, values.only);

/**
 * CPU per round of the device part's baselines (ms on-CPU for MEM bytes), in the order measured: what
 * moving a byte through a UNIX socket (both processes), copying it and producing it cost on this machine,
 * the parts of the trapped path's least CPU per byte (the ceiling ratios below).
 */
const cpuOf = {
  'raw-unix': { ms: [] as number[], note: 'every thread of the writer and the reader' },
  memcpy: { ms: [] as number[], note: 'the copying thread (to a scheduler tick)' },
  device: { ms: [] as number[], note: 'the producing thread (to a scheduler tick)' },
};

/**
 * On-CPU ms of this process's main thread: memcpy's and device's work, without what V8's helper threads
 * do meanwhile (the least CPU the work takes).
 */
const mainThreadCpuMs = () => threadCpuMs(process.pid, process.pid);

/** CPU per round of raw-unix-staged (both processes): beside the parts above, not in their sum. */
const stagedCpuMs: number[] = [];

/** A UNIX stream between two processes: plain (`onread`), or `staged` (bench/raw-streams.ts RawReader). */
async function rawUnix(total: number, reader: 'onread' | 'staged' = 'onread'): Promise<{ value: number; per: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-migrate-bench-'));
  try {
    const r = await rawStream(total, { path: join(dir, 'raw.sock') }, reader);
    (reader === 'staged' ? stagedCpuMs : cpuOf['raw-unix'].ms).push(r.cpuMs!);
    return { value: r.bytes / r.ms / 1000, per: bytes(r.bytes) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** One copy of MEM bytes between two buffers, 1 MiB at a time (the chunk size of the region paths). */
function memcpyRound(src: Uint8Array, dst: Uint8Array): { value: number; per: string } {
  const c0 = mainThreadCpuMs();
  const t0 = performance.now();
  for (let at = 0; at < src.byteLength; at += 1 << 20) dst.set(src.subarray(at, at + (1 << 20)), at);
  const ms = performance.now() - t0;
  cpuOf.memcpy.ms.push(mainThreadCpuMs() - c0);
  return { value: src.byteLength / ms / 1000, per: bytes(src.byteLength) };
}

/**
 * The device producing its whole state, each round a save of the same device (as trapped and mmapped
 * rounds save the same device servers' devices): its memory is warm after the first, as theirs is.
 */
function deviceProduce(): () => Promise<{ value: number; per: string }> {
  const dev = new LargeMemoryDevice({ memSize: MEM, workRate: 0, fill: 'random' });
  cleanup.push(async () => dev.close());
  const out = new Uint8Array(1 << 20);
  return async () => {
    dev.transition(DeviceState.RUNNING, DeviceState.SAVING);
    let n = 0;
    const c0 = mainThreadCpuMs();
    const t0 = performance.now();
    for (let k = dev.produce(out); k > 0; k = dev.produce(out)) n += k;
    const ms = performance.now() - t0;
    cpuOf.device.ms.push(mainThreadCpuMs() - c0);
    dev.transition(DeviceState.SAVING, DeviceState.RUNNING);
    return { value: n / ms / 1000, per: bytes(n) };
  };
}

interface Attached {
  server: ServerProcess;
  client: VfioUserClient;
  port: VfioRegionPort;
  region: SeedRegionClient;
}

async function attach(args: string[]): Promise<Attached> {
  const server = await startServer(['--device', 'large-memory', '--device-mem', `${MEM >> 20}M`, '--quiet', ...args]);
  const client = await VfioUserClient.connect(server.path);
  const found = await findMigrationRegion(client);
  if (!found) throw new Error('no migration region');
  const port = await openRegionPort(client, found.index);
  return { server, client, port, region: new SeedRegionClient(port) };
}

async function detach(a: Attached): Promise<void> {
  a.port.close();
  a.client.close();
  await a.server.stop();
}

async function digest(a: Attached): Promise<string> {
  return Buffer.from(await a.client.regionRead(0, LargeMemoryRegs.DIGEST, 32)).toString('hex');
}

/** Device data through the region: each round a whole stop-and-copy, kept, then resumed elsewhere and checked. */
async function throughRegion(
  dataSection: 'trapped' | 'mmapped',
): Promise<() => Promise<{ value: number; per: string }>> {
  const args = ['--device-fill', 'random', '--work-rate', '0', '--data-section', dataSection];
  const src = await attach(args);
  const dst = await attach(['--work-rate', '0', '--data-section', dataSection]);
  cleanup.push(
    () => detach(src),
    () => detach(dst),
  );
  // Touched before the rounds, as memcpy's destination is: the rounds time the transfer, not first-write
  // page faults of this buffer (which made a first round several times slower than the next).
  const kept = new Uint8Array(MEM + (64 << 20)).fill(1);
  return async () => {
    // Straight to stop-and-copy: the whole device state, then back to running for the next round.
    await src.region.writeField('device_state', BigInt(DeviceState.SAVING));
    let n = 0;
    const t0 = performance.now();
    await src.region.drain((chunk) => {
      kept.set(chunk, n); // one memcpy per chunk, the price of checking what was read
      n += chunk.byteLength;
    });
    const ms = performance.now() - t0;
    await src.region.writeField('device_state', BigInt(DeviceState.RUNNING));
    await dst.region.writeField('device_state', BigInt(DeviceState.RESUMING));
    await dst.region.loadBuffer(kept.subarray(0, n));
    await dst.region.writeField('device_state', BigInt(DeviceState.RUNNING));
    const [a, b] = await Promise.all([digest(src), digest(dst)]);
    if (a !== b) throw new Error(`${dataSection}: the resumed device's digest differs: the benchmark run is void`);
    return { value: n / ms / 1000, per: `${bytes(n)}, resumed and verified` };
  };
}

/**
 * The same stop-and-copy through a v2 device (Linux 5.18+ interface over vfio-user): MIG_DATA_READ
 * messages, as the VMM's v2 driver reads them (four in flight, each received in place), resumed into a
 * second v2 server with MIG_DATA_WRITE (not timed) and checked by digest.
 */
/** MB/s of each v2 round's resume (MIG_DATA_WRITE of the saved state into a second device), warm-up included. */
const v2Resumes: number[] = [];

async function throughV2(): Promise<() => Promise<{ value: number; per: string }>> {
  const device = ['--device', 'large-memory', '--device-mem', `${MEM >> 20}M`, '--quiet', '--flavor', 'v2'];
  const src = await startServer([...device, '--device-fill', 'random', '--work-rate', '0']);
  const dst = await startServer([...device, '--work-rate', '0']);
  const a = await VfioUserClient.connect(src.path);
  const b = await VfioUserClient.connect(dst.path);
  cleanup.push(async () => {
    a.close();
    b.close();
    await Promise.all([src.stop(), dst.stop()]);
  });
  const kept = new Uint8Array(MEM + (64 << 20)).fill(1); // touched, as for the region paths
  const digestOf = async (c: VfioUserClient) =>
    Buffer.from(await c.regionRead(0, LargeMemoryRegs.DIGEST, 32)).toString('hex');
  return async () => {
    // A driver per round, as a VMM opens one per migration; STOP_COPY only (flags 1), straight from a stop.
    const from = await V2MigrationDriver.open(a, 'source', 1n);
    await from.vmStateChange(false, 'finish-migrate');
    let n = 0;
    const t0 = performance.now();
    await from.saveComplete((chunk) => {
      kept.set(chunk, n); // one memcpy per chunk, as the region paths pay to check what they read
      n += chunk.byteLength;
    });
    const ms = performance.now() - t0;
    await from.saveCleanup();
    await from.vmStateChange(true, 'running');
    const to = await V2MigrationDriver.open(b, 'destination', 1n);
    await to.loadSetup();
    const r0 = performance.now();
    await to.loadData(kept.subarray(0, n)); // as a destination VMM loads it: from its stream's buffer
    v2Resumes.push(n / (performance.now() - r0) / 1000);
    await to.loadFinish();
    await to.vmStateChange(true, 'running');
    from.close();
    to.close();
    const [x, y] = await Promise.all([digestOf(a), digestOf(b)]);
    if (x !== y) throw new Error(`v2: the resumed device's digest differs: the benchmark run is void`);
    return { value: n / ms / 1000, per: `${bytes(n)}, resumed and verified` };
  };
}

const cleanup: (() => Promise<void>)[] = [];

// What is measured is the package as installed (dist/, compiled), not the sources through tsx: every
// process the bench starts (VMMs, device servers, their channel and vCPU threads) runs the compiled code.
// `--sources` measures a checkout's tsx instead.
buildPackage();
if (!values.sources) process.env.VFIO_MIGRATE_COMPILED = '1';
run.code = values.sources ? 'sources' : 'compiled';

if (want('startup')) {
  await startupBench(ROUNDS, run);
  say();
}
if (want('ram')) {
  await ramBench(Number(values['ram-mem']), ROUNDS, run);
  say();
}
if (want('zero')) {
  await zeroBench(Number(values['zero-mem']), ROUNDS, run);
  say();
}
if (want('multifd')) {
  await multifdBench(Number(values['multifd-mem']), CHANNELS, ROUNDS, run);
  say();
  const large = Number(values['multifd-large-mem']);
  if (large > 0) await multifdLargeBench(large, CHANNELS, ROUNDS, run);
}
if (want('dirty-log')) {
  await dirtySyncInRun(Number(values['sync-mem']), ROUNDS, run);
  say();
}
if (want('profile')) {
  await profileBench(Number(values['ram-mem']), ROUNDS, run, {
    memMiB: Number(values['multifd-mem']),
    channels: CHANNELS,
  });
  say();
}
if (want('device')) {
  say(`device data: a large-memory device of ${bytes(MEM)} (random contents), stop-and-copy through its region`);
  // Warm-up rounds first: trapped and mmapped reuse the same two device servers and client every round,
  // whose code V8 compiles over their first rounds (the server's save path recompiled several times, a
  // third of a second of compiling on a helper thread, competing for the cores); the baselines get the
  // same so that like is compared with like.
  const warm = { warmup: 3 };
  const raw = await measure('raw-unix', 'MB/s', ROUNDS, () => rawUnix(MEM), warm);
  const staged = await measure('raw-unix-staged', 'MB/s', ROUNDS, () => rawUnix(MEM, 'staged'), warm);
  const copyFrom = randomFillSync(new Uint8Array(MEM));
  const copyTo = new Uint8Array(MEM).fill(1); // touched: the rounds time copies, not first-write faults
  const memcpy = await measure('memcpy', 'MB/s', ROUNDS, async () => memcpyRound(copyFrom, copyTo), warm);
  const dev = await measure('device', 'MB/s', ROUNDS, deviceProduce(), warm);
  const trapped = await measure('trapped', 'MB/s', ROUNDS, await throughRegion('trapped'), warm);
  const mmapped = await measure('mmapped', 'MB/s', ROUNDS, await throughRegion('mmapped'), warm);
  const v2 = await measure('v2', 'MB/s', ROUNDS, await throughV2(), warm);
  for (const c of cleanup) await c();
  // The measured rounds' CPU (the warm-up's first value left out), as figures of their own.
  const cpu = Object.entries(cpuOf).map(([name, c]) =>
    figure(`${name} cpu`, 'ms', c.ms.slice(-ROUNDS), { per: `CPU ms per ${bytes(MEM)}`, note: c.note }),
  );
  const stagedCpu = figure('raw-unix-staged cpu', 'ms', stagedCpuMs.slice(-ROUNDS), {
    per: `CPU ms per ${bytes(MEM)}`,
    note: 'every thread of the writer and the reader',
  });
  for (const f of [...cpu, stagedCpu]) say(formatFigure(f));
  const v2Resume = figure('v2 resume', 'MB/s', v2Resumes.slice(-ROUNDS), {
    per: `${bytes(MEM)} written with MIG_DATA_WRITE into a second device (the measured rounds of v2)`,
  });
  say(formatFigure(v2Resume));
  run.figures.push(raw, staged, memcpy, dev, trapped, mmapped, v2, v2Resume, ...cpu, stagedCpu);
  const ceiling = dev.median < raw.median ? dev : raw;
  // The trapped path moves every byte through a UNIX socket (raw-unix's CPU), the device produces it
  // (device's) and the VMM side copies it out of its read buffer (memcpy's: the bench keeps what it read):
  // no way of doing that work on this machine's cores goes faster than cores / CPU per byte.
  const cpuPerMB = cpu.reduce((sum, f) => sum + f.median, 0) / (MEM / 1e6);
  const trappedCeiling = figure('trapped ceiling', 'MB/s', [(cpus().length * 1000) / cpuPerMB], {
    per: `${cpus().length} cores / (raw-unix + device + memcpy CPU per byte)`,
  });
  say(formatFigure(trappedCeiling));
  run.figures.push(trappedCeiling);
  say();
  run.ratios.push(
    ratio('mmapped / raw-unix', mmapped, raw),
    ratio('trapped / raw-unix', trapped, raw, '>= 0.8', ['raw-unix-staged / raw-unix']),
    ratio('trapped ceiling / raw-unix', trappedCeiling, raw),
    ratio('trapped / trapped ceiling', trapped, trappedCeiling),
    // The same parts run together, as a trapped stop-and-copy runs them, with no protocol between them:
    // below 0.8 of raw-unix, the trapped aim is out of reach here by measurement.
    ratio('raw-unix-staged / raw-unix', staged, raw),
    ratio('raw-unix-staged / trapped ceiling', staged, trappedCeiling),
    ratio('trapped / raw-unix-staged', trapped, staged),
    ratio('mmapped / min(raw, device)', mmapped, ceiling),
    ratio('trapped / min(raw, device)', trapped, ceiling),
    ratio('mmapped / memcpy', mmapped, memcpy, '>= 0.3'),
    ratio('trapped / memcpy', trapped, memcpy),
    ratio('v2 / raw-unix', v2, raw),
    ratio('v2 / trapped', v2, trapped),
    ratio('v2 resume / raw-unix', v2Resume, raw),
  );
}
saveRun(run, values.json, !values['no-history']);
