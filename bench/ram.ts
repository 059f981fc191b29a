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
//   raw-tcp-guest-huge  the same with both 1 GiB buffers in memfds collapsed into 2 MiB huge pages, as
//                 a VMM's guest RAM is where it can be (vmm --no-huge-pages keeps 4 KiB pages)
//   raw-tcp-landed  the same writer, the reader reading into one reused buffer and copying each read into
//                 a 1 GiB buffer: guest memory into guest memory the cheapest way found here
//   raw-tcp-checked-fresh  the raw-tcp-checked writer and reader, each read then written into a fresh
//                 1 GiB memfd (pwrite: shmem allocates the pages without zeroing them): the least a
//                 checksummed stream into a fresh destination does; its rounds alternate with ours-cold's
//   ours-warm     destination memory faulted in before the migration (`vmm --prefault`, QEMU's
//                 -mem-prealloc): the DESIGN.md aim is >= 80% of raw-tcp
//   ours-cold     a fresh destination (pages never written land through the guest memfd, nothing prefaulted)
//   ours-cold-backed, qemu-cold-backed, raw-tcp-checked-fresh-backed  the same, each round first having
//                 the host back the pages the destination will get (bench/host-pages.ts: inside a VM whose
//                 hypervisor reclaims freed memory, new pages otherwise come at whatever pace it left);
//                 `new pages as found` is how fast those backing writes went
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

import { cpus, freemem } from 'node:os';
import { bytes } from '../src/cli/format.ts';
import type { MultifdIoCounts } from '../src/vmm/migration/multifd-channel.ts';
import { processStatCpuMs } from './cpu-time.ts';
import {
  type Figure,
  figure,
  formatFigure,
  mbps,
  measure,
  measureInTurn,
  measurePair,
  measureWith,
  type Rate,
  type Round,
  ratio,
  say,
} from './figures.ts';
import { backHostPages } from './host-pages.ts';
import {
  type MigrationObserver,
  type OursRate,
  oursOnce,
  qemuMissing,
  qemuOnce,
  qemuVersion,
} from './one-migration.ts';
import { rawTcp } from './raw-streams.ts';
import type { BenchRun } from './results.ts';

/** The RAM part of `npm run bench`: every figure `rounds` times. */
export async function ramBench(memMiB: number, rounds: number, run: BenchRun): Promise<void> {
  const total = memMiB * (1 << 20);
  say(`RAM migration: a ${bytes(total)} guest of random bytes, idle, between two VMM processes over loopback TCP`);
  const rate = (x: Rate & { downtime?: number }) => ({
    value: mbps(x),
    per: `${bytes(x.bytes)} in ${x.ms.toFixed(0)} ms`,
    note: x.downtime !== undefined ? `downtime ${x.downtime} ms` : x.note,
  });
  const asRate = async (r: Promise<Rate>) => rate(await r);
  const raw = await measure('raw-tcp', 'MB/s', rounds, () => asRate(rawTcp(total)));
  const rawData = await measure('raw-tcp-data', 'MB/s', rounds, () => asRate(rawTcp(total, 'data')));
  const rawChecked = await measure('raw-tcp-checked', 'MB/s', rounds, () => asRate(rawTcp(total, 'checked')));
  const rawGuest = await measure('raw-tcp-guest', 'MB/s', rounds, () => asRate(rawTcp(total, 'guest')));
  const rawGuestHuge = await measure('raw-tcp-guest-huge', 'MB/s', rounds, () => asRate(rawTcp(total, 'guest-huge')));
  const rawLanded = await measure('raw-tcp-landed', 'MB/s', rounds, () => asRate(rawTcp(total, 'landed')));
  const missing = qemuMissing();
  if (missing) {
    say(`qemu       skipped: ${missing} (apt-get install qemu-system-x86 to compare)`);
    run.skipped.push({ name: 'qemu', why: missing });
  } else say(`qemu       ${qemuVersion()} (its rounds alternate with ours)`);
  // Ours against QEMU's with the destination prefaulted (warm) and fresh (cold), each round's CPU counted:
  // a fresh destination's rate swings with how fast the host hands out new pages, its CPU per GiB shows it.
  const tally = new CpuTally(memMiB / 1024);
  // `backed`: the round first has the host back the pages the destination is about to get
  // (bench/host-pages.ts), once the source holds its own memory: just before `migrate`.
  const backing: number[] = [];
  let backedBytes = 2 * total;
  const back = () => {
    // Twice the guest, or what free memory allows beside a margin: the bench must not push the machine
    // into reclaim (or its OOM killer) to back pages.
    const bytes = Math.min(2 * total, Math.max(1, Math.floor((freemem() - (512 << 20)) / (1 << 20))) * (1 << 20));
    backedBytes = Math.min(backedBytes, bytes);
    backing.push(mbps(backHostPages(bytes)));
  };
  const round = (who: Who, warmDest: boolean, kind: string, backed: boolean) => () =>
    tally.count(
      `${who}-${kind} cpu`,
      who,
      (use) => {
        const observe: MigrationObserver = backed
          ? {
              before: (pids) => {
                back();
                return use.before(pids);
              },
              after: () => use.after(),
            }
          : use;
        return who === 'ours'
          ? oursOnce(memMiB, warmDest, [], 'random', undefined, observe)
          : qemuOnce(memMiB, warmDest, 'random', undefined, observe);
      },
      rate,
    );
  // Ours and QEMU's in turn; the cold rounds also with the least a checksummed stream into fresh memory
  // does (`baseline`), since how fast the host hands out new pages moves all three alike.
  const inTurn = async (warmDest: boolean, kind: string, baseline?: { name: string; fn: Round }) => {
    const backed = kind.endsWith('-backed');
    const entries: { name: string; fn: Round }[] = [
      { name: `ours-${kind}`, fn: round('ours', warmDest, kind, backed) },
    ];
    if (baseline) entries.push(baseline);
    if (!missing) entries.push({ name: `qemu-${kind}`, fn: round('qemu', warmDest, kind, backed) });
    const [ours, ...rest] = await measureInTurn('MB/s', rounds, entries);
    return { ours: ours!, baseline: baseline ? rest.shift()! : null, qemu: missing ? null : rest.shift()! };
  };
  const { ours: warm, qemu: qemuWarm } = await inTurn(true, 'warm');
  const fresh = await inTurn(false, 'cold', {
    name: 'raw-tcp-checked-fresh',
    fn: () => asRate(rawTcp(total, 'fresh')),
  });
  const { ours: cold, qemu: qemuCold } = fresh;
  const rawFresh = fresh.baseline!;
  const backedRounds = await inTurn(false, 'cold-backed', {
    name: 'raw-tcp-checked-fresh-backed',
    fn: () => asRate(rawTcp(total, 'fresh', { beforeReading: back })),
  });
  const { ours: coldBacked, qemu: qemuColdBacked } = backedRounds;
  const rawFreshBacked = backedRounds.baseline!;
  // How the host handed out new pages before each backed round: what the cold rounds met (theirs in turn
  // with these, not the same moments).
  const asFound = figure('new pages as found', 'MB/s', backing, {
    per: `${bytes(backedBytes)}${backedBytes < 2 * total ? ' (all free memory allowed)' : ''} written into a new memfd before each backed round`,
  });
  say(formatFigure(asFound));
  const cpu = ['ours-warm cpu', 'ours-cold cpu', 'ours-cold-backed cpu'].map((name) => tally.figure(name, 'ours'));
  run.figures.push(raw, rawData, rawChecked, rawGuest, rawLanded, warm, cold, rawFresh);
  run.figures.push(coldBacked, rawFreshBacked, asFound, ...cpu);
  const qemuCpu =
    qemuWarm && qemuCold && qemuColdBacked
      ? ['qemu-warm cpu', 'qemu-cold cpu', 'qemu-cold-backed cpu'].map((n) => tally.figure(n, 'qemu'))
      : [];
  if (qemuWarm && qemuCold && qemuColdBacked) run.figures.push(qemuWarm, qemuCold, qemuColdBacked, ...qemuCpu);
  say();
  run.ratios.push(
    ratio('ours-warm / raw-tcp', warm, raw, '>= 0.80', ['raw-tcp-checked / raw-tcp']),
    ratio('ours-cold / raw-tcp', cold, raw),
    // The ceiling a checksummed stream has here, and how near ours comes to it (docs/performance.md).
    ratio('raw-tcp-checked / raw-tcp', rawChecked, raw),
    ratio('ours-warm / raw-tcp-checked', warm, rawChecked),
    // What the kernel's copies between a socket and memory not in the caches cost here: where this is
    // far below 1, sending from and reading into guest RAM directly is slower than staging through a
    // small reused buffer (native/src/chanthread.c; docs/performance.md).
    ratio('raw-tcp-guest / raw-tcp', rawGuest, raw),
    ratio('raw-tcp-guest-huge / raw-tcp', rawGuestHuge, raw),
    ratio('raw-tcp-guest-huge / raw-tcp-guest', rawGuestHuge, rawGuest),
    // Memory moved into memory the cheapest way found here, no checksum, no framing: where this and
    // raw-tcp-guest are both below 0.8, so is a stream that lands guest pages either way (docs/performance.md).
    ratio('raw-tcp-landed / raw-tcp', rawLanded, raw),
    ratio('ours-warm / raw-tcp-landed', warm, rawLanded),
    // How much of the least a checksummed stream into fresh memory does ours reaches (same rounds' load).
    ratio('ours-cold / raw-tcp-checked-fresh', cold, rawFresh),
    ratio('ours-cold-backed / raw-tcp-checked-fresh-backed', coldBacked, rawFreshBacked),
    // What backing the pages first did: near 1, new pages came as fast as found.
    ratio('ours-cold-backed / ours-cold', coldBacked, cold),
  );
  if (qemuWarm && qemuCold && qemuColdBacked) {
    run.ratios.push(
      ratio('ours-warm / qemu-warm', warm, qemuWarm, '>= 1.5', ['raw-tcp-checked / qemu-warm']),
      // What any stream that checksums every byte could reach against QEMU's unchecked one, here; and
      // what the link itself carries (one connection, read by Node): below 1.5, no single stream reaches
      // that aim here, checked or not.
      ratio('raw-tcp-checked / qemu-warm', rawChecked, qemuWarm),
      ratio('raw-tcp / qemu-warm', raw, qemuWarm),
      ratio('ours-cold / qemu-cold', cold, qemuCold, '>= 1.5', [
        'raw-tcp-checked-fresh / qemu-cold',
        'new pages as found / qemu-cold',
      ]),
      // What any stream that checksums every byte into fresh memory could reach against QEMU's cold one.
      ratio('raw-tcp-checked-fresh / qemu-cold', rawFresh, qemuCold),
      // Every page of a fresh destination is a new page: no destination lands faster than new pages came.
      ratio('new pages as found / qemu-cold', asFound, qemuCold),
      ratio('ours-cold-backed / qemu-cold-backed', coldBacked, qemuColdBacked, '>= 1.5', [
        'raw-tcp-checked-fresh-backed / qemu-cold-backed',
      ]),
      ratio('raw-tcp-checked-fresh-backed / qemu-cold-backed', rawFreshBacked, qemuColdBacked),
      ratio('qemu-cold-backed / qemu-cold', qemuColdBacked, qemuCold),
      // The same work's CPU (above 1: ours spent less per GiB).
      ratio('qemu-warm cpu / ours-warm cpu', qemuCpu[0]!, cpu[0]!),
      ratio('qemu-cold cpu / ours-cold cpu', qemuCpu[1]!, cpu[1]!),
      ratio('qemu-cold-backed cpu / ours-cold-backed cpu', qemuCpu[2]!, cpu[2]!),
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

/** The name suffix of a figure of ours with guest RAM in 4 KiB pages (vmm --no-huge-pages). */
const SMALL_PAGES = ' 4 KiB pages';

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
  // small: ours with guest RAM in 4 KiB pages (`--no-huge-pages`), as QEMU's memfd here has it.
  const busy = async (k: number, who: Who, small = false) => {
    const r = await tally.count(
      `${who}-multifd-${k}${small ? SMALL_PAGES : ''} cpu`,
      who,
      (use) =>
        who === 'ours'
          ? oursOnce(memMiB, true, [], 'random', k, use, small ? ['--no-huge-pages'] : [])
          : qemuOnce(memMiB, true, 'random', k, use),
      (measured) => guestRate(memMiB, measured),
    );
    if (who === 'ours' && !small) ceilings.set(k, [...(ceilings.get(k) ?? []), (r.value * cores) / r.busyCores]);
    return r;
  };
  // QEMU's multifd with each count above one (when installed), its rounds alternating with ours.
  const missing = qemuMissing();
  const ours = new Map<number, Figure>();
  const qemu = new Map<number, Figure>();
  let small: Figure | undefined;
  for (const k of counts) {
    // With N channels, in turn with ours and QEMU's: ours with 4 KiB pages, what huge pages bring.
    const [o, ...rest] = await measureInTurn('MB/s', rounds, [
      { name: `ours-multifd-${k}`, fn: () => busy(k, 'ours') },
      ...(k === 1 || missing ? [] : [{ name: `qemu-multifd-${k}`, fn: () => busy(k, 'qemu') }]),
      ...(k === channels ? [{ name: `ours-multifd-${k}${SMALL_PAGES}`, fn: () => busy(k, 'ours', true) }] : []),
    ]);
    ours.set(k, o!);
    if (k === channels) small = rest.pop();
    if (rest[0]) qemu.set(k, rest[0]);
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
  if (small) {
    run.figures.push(small, tally.figure(`ours-multifd-${channels}${SMALL_PAGES} cpu`, 'ours'));
    run.ratios.push(ratio(`ours-multifd-${channels} / ours-multifd-${channels}${SMALL_PAGES}`, n, small));
  }
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
