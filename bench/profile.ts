// Where a RAM migration's time goes, measured rather than described (docs/performance.md "Where the time
// goes"): the CPU each VMM's threads use during one migration of a random guest, from the kernel's own
// per-thread accounting (/proc/PID/task/TID/stat, user and system time, as `top -H` shows them), and,
// where Linux perf is installed, what that CPU was spent on: one `perf record -g` of each VMM process
// per destination kind, every sample sorted by its call chain into a kind of work (page faults, the
// kernel's TCP copies, memcpy, CRC-32C, garbage collection, ...). QEMU's own profiling of the same path
// is `perf` on the QEMU process; this is that, for both of our VMM processes at once, and, for a
// migration over multifd channels, for both QEMU processes of the same migration beside them.

import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bytes } from '../src/cli/format.ts';
import { processStatCpuMs, statCpuMs } from './cpu-time.ts';
import { figure, formatFigure, say } from './figures.ts';
import { type MigrationObserver, oursOnce, qemuMissing, qemuOnce } from './one-migration.ts';
import type { BenchRun, WorkProfile } from './results.ts';

/** CPU ms per thread id of one process (utime + stime, and stime alone). */
type ThreadCpu = Map<number, { total: number; sys: number }>;

function threadCpu(pid: number): ThreadCpu {
  const out: ThreadCpu = new Map();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    let t: { user: number; sys: number };
    try {
      t = statCpuMs(`/proc/${pid}/task/${tid}/stat`);
    } catch {
      continue; // the thread ended between the listing and the read
    }
    out.set(Number(tid), { total: t.user + t.sys, sys: t.sys });
  }
  return out;
}

/** CPU used between two samples, split into the main thread (tid = pid) and all others. */
function cpuUsed(pid: number, a: ThreadCpu, b: ThreadCpu) {
  let other = 0;
  let otherSys = 0;
  for (const [tid, v] of b) {
    if (tid === pid) continue;
    const was = a.get(tid) ?? { total: 0, sys: 0 };
    other += v.total - was.total;
    otherSys += v.sys - was.sys;
  }
  const m = b.get(pid)!;
  const m0 = a.get(pid)!;
  return { main: m.total - m0.total, mainSys: m.sys - m0.sys, other, otherSys };
}

/** The kinds of work a perf sample is sorted into, in the order tables show them. */
export const WORK_KINDS = [
  'page faults',
  'madvise (populate)',
  'pwritev (guest pages)',
  'kernel TCP send/receive',
  'kernel, other',
  'memcpy/memset',
  'CRC-32C',
  'zero-page scan',
  'addon, other',
  'garbage collection',
  'JIT compilation',
  'JavaScript, V8, Node',
  'libc, other',
  'QEMU, other',
] as const;
export type WorkKind = (typeof WORK_KINDS)[number];

export interface Frame {
  sym: string;
  dso: string;
}

const GC =
  /^(v8::internal::.*(Heap|Mark|Sweep|Scaveng|Evacuat|Compact|GC|Remembered|Slot|Promot)|.*v8::internal::MemoryChunk)/;
const JIT = /^v8::internal::(compiler|maglev|baseline)::/;

/** The kind of work of one sample, from its call chain (leaf first). */
export function classifySample(chain: readonly Frame[]): WorkKind {
  if (chain.some((f) => /^(asm_)?exc_page_fault$/.test(f.sym))) return 'page faults';
  if (chain.some((f) => /^(__x64_sys_madvise|do_madvise)/.test(f.sym))) return 'madvise (populate)';
  // The destination writing pages into fresh guest memory through its memfd (GuestMemory.writePagesThroughFd).
  if (chain.some((f) => /^(__x64_sys_pwritev|do_pwritev)/.test(f.sym))) return 'pwritev (guest pages)';
  const leaf = chain[0] ?? { sym: '', dso: '' };
  if (leaf.dso.includes('kernel')) {
    return chain.some((f) =>
      /^(tcp_(recv|send)msg|sock_(read|write)_iter|sock_(recv|send)msg|skb_copy_datagram)/.test(f.sym),
    )
      ? 'kernel TCP send/receive'
      : 'kernel, other';
  }
  if (/mem(move|cpy|set)/.test(leaf.sym) && /libc/.test(leaf.dso)) return 'memcpy/memset';
  // Locks, system call wrappers: QEMU's threads hand each other work under mutexes.
  if (/\blibc[.-]/.test(leaf.dso)) return 'libc, other';
  // QEMU (when profiled beside ours): its zero-page check is util/bufferiszero.c.
  if (leaf.dso.includes('qemu-system')) return /buffer_(is_)?zero/.test(leaf.sym) ? 'zero-page scan' : 'QEMU, other';
  if (leaf.dso.includes('vfio_native')) {
    if (/crc/i.test(leaf.sym)) return 'CRC-32C';
    if (/zero/i.test(leaf.sym)) return 'zero-page scan';
    return 'addon, other';
  }
  if (GC.test(leaf.sym)) return 'garbage collection';
  if (JIT.test(leaf.sym)) return 'JIT compilation';
  return 'JavaScript, V8, Node';
}

/**
 * Sorts `perf script -F tid,ip,sym,dso` output (a line with the thread id, then one indented frame per
 * line, leaf first, a blank line between samples) into kinds of work; returns sample counts per kind.
 */
export function classifyPerfScript(text: string): { samples: number; counts: Record<WorkKind, number> } {
  const counts = Object.fromEntries(WORK_KINDS.map((k) => [k, 0])) as Record<WorkKind, number>;
  let samples = 0;
  let chain: Frame[] = [];
  let open = false;
  const flush = () => {
    if (open) {
      counts[classifySample(chain)]++;
      samples++;
    }
    chain = [];
    open = false;
  };
  for (const line of text.split('\n')) {
    if (line.trim() === '') {
      flush();
      continue;
    }
    if (/^\s*\d+\s*$/.test(line)) {
      // A sample's first line: its thread id (right-aligned); its frames follow, indented by a tab.
      flush();
      open = true;
      continue;
    }
    // "\t  7f1497023a8e symbol+0x12 (/path/to/dso)"
    const m = /^\s*[0-9a-f]+\s+(.*?)\s+\(([^)]*)\)\s*$/.exec(line);
    if (m) chain.push({ sym: m[1]!.replace(/\+0x[0-9a-f]+$/, ''), dso: m[2]! });
  }
  flush();
  return { samples, counts };
}

/** Why perf cannot profile here, or null when it can. */
export function perfMissing(): string | null {
  const r = spawnSync('perf', ['--version'], { encoding: 'utf8' });
  if (r.error)
    return `perf is not on PATH (${(r.error as NodeJS.ErrnoException).code}; Debian: apt-get install linux-perf)`;
  if (r.status !== 0) return `perf --version failed: ${r.stderr.trim()}`;
  return null;
}

/**
 * perf recording each process from `before` to `after` (at `hz` samples per second of CPU), its samples
 * classified once stopped, and its CPU over the same span (/proc, threads that ended included) per GiB
 * moved, so that profiles of different programs compare in milliseconds and not only in shares.
 */
function perfRecorder(dir: string, gib: number, hz = 999) {
  const recs: { side: string; pid: number; file: string; child: ChildProcess; cpu0: number; cpu: number }[] = [];
  return {
    async start(sides: Record<string, number>) {
      for (const [side, pid] of Object.entries(sides)) {
        const file = join(dir, `${recs.length}.data`);
        const child = spawn('perf', ['record', '-q', '-F', String(hz), '-g', '-p', String(pid), '-o', file], {
          stdio: ['ignore', 'ignore', 'pipe'],
        });
        recs.push({ side, pid, file, child, cpu0: 0, cpu: 0 });
      }
      // perf attaches asynchronously; a moment lets it catch the migration's first bytes.
      await new Promise((r) => setTimeout(r, 300));
      for (const r of recs) r.cpu0 = processStatCpuMs(r.pid);
    },
    async stop(): Promise<WorkProfile['sides']> {
      for (const r of recs) r.cpu = processStatCpuMs(r.pid) - r.cpu0;
      const out: WorkProfile['sides'] = [];
      for (const r of recs) {
        const exited = once(r.child, 'exit');
        r.child.kill('SIGINT');
        await exited;
        const text = execFileSync('perf', ['script', '-i', r.file, '-F', 'tid,ip,sym,dso'], {
          encoding: 'utf8',
          maxBuffer: 1 << 30,
          stdio: ['ignore', 'pipe', 'ignore'],
        });
        const { samples, counts } = classifyPerfScript(text);
        out.push({ side: r.side, samples, counts, cpuMsPerGiB: Math.round(r.cpu / gib) });
      }
      return out;
    },
  };
}

/**
 * The profile part of `npm run bench`: per-thread CPU of both VMMs over `rounds` migrations of a random
 * guest, for a prefaulted and a fresh destination, then (perf installed) one recorded migration each,
 * and (`multifd`) one over that many channels by ours and one by QEMU (when installed) in one table.
 */
export async function profileBench(
  memMiB: number,
  rounds: number,
  run: BenchRun,
  multifd?: { memMiB: number; channels: number },
): Promise<void> {
  const gib = (memMiB * (1 << 20)) / 2 ** 30;
  say(`where the time goes: CPU per GiB moved of each VMM's threads, a ${bytes(memMiB << 20)} random guest`);
  for (const warm of [true, false]) {
    const dest = warm ? 'prefaulted' : 'fresh';
    const per: Record<string, number[]> = {};
    const sys: Record<string, number> = {};
    let pids = { source: 0, destination: 0 };
    let before: [ThreadCpu, ThreadCpu] | null = null;
    const observe: MigrationObserver = {
      before: (p) => {
        pids = p;
        before = [threadCpu(p.source), threadCpu(p.destination)];
      },
      after: () => {
        const [s0, d0] = before!;
        const s = cpuUsed(pids.source, s0, threadCpu(pids.source));
        const d = cpuUsed(pids.destination, d0, threadCpu(pids.destination));
        const add = (name: string, v: number, vSys: number) => {
          per[name] = [...(per[name] ?? []), v / gib];
          sys[name] = vSys / gib;
        };
        add('source main thread', s.main, s.mainSys);
        add('source other threads', s.other, s.otherSys);
        add('destination main thread', d.main, d.mainSys);
        add('destination other threads', d.other, d.otherSys);
      },
    };
    for (let i = 0; i < rounds; i++) await oursOnce(memMiB, warm, [], 'random', undefined, observe);
    for (const [name, values] of Object.entries(per)) {
      const f = figure(`cpu/GiB ${name}, ${dest}`, 'ms', values, {
        per: 'CPU ms per GiB of guest moved',
        note: `of which kernel ${sys[name]!.toFixed(0)} ms (last round)`,
      });
      say(formatFigure(f));
      run.figures.push(f);
    }
  }
  const missing = perfMissing();
  if (missing) {
    say(`perf       skipped: ${missing}`);
    run.skipped.push({ name: 'perf profile', why: missing });
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'vfio-migrate-perf-'));
  run.profiles ??= [];
  const profiles = run.profiles;
  /** One migration of `moved` GiB recorded: `migrate` runs it with the observer that starts and stops perf. */
  const record = async (
    name: string,
    moved: number,
    hz: number,
    label: (side: 'source' | 'destination') => string,
    migrate: (observe: MigrationObserver) => Promise<unknown>,
  ): Promise<WorkProfile['sides']> => {
    const rec = perfRecorder(dir, moved, hz);
    let sides: WorkProfile['sides'] = [];
    await migrate({
      before: (p) => rec.start({ [label('source')]: p.source, [label('destination')]: p.destination }),
      after: async () => {
        sides = await rec.stop();
      },
    });
    for (const s of sides) {
      const n = (k: string) => s.counts[k] ?? 0;
      const top = WORK_KINDS.filter((k) => n(k) > 0)
        .sort((a, b) => n(b) - n(a))
        .slice(0, 4)
        .map((k) => `${k} ${((100 * n(k)) / s.samples).toFixed(0)}%`);
      say(`perf ${name}, ${s.side}: ${s.samples} samples, ${s.cpuMsPerGiB} ms CPU per GiB: ${top.join(', ')}`);
    }
    return sides;
  };
  try {
    for (const warm of [true, false]) {
      const name = `RAM, ${bytes(memMiB << 20)} random guest, ${warm ? 'prefaulted' : 'fresh'} destination`;
      const sides = await record(
        name,
        gib,
        999,
        (side) => side,
        (observe) => oursOnce(memMiB, warm, [], 'random', undefined, observe),
      );
      profiles.push({ name, sides });
    }
    if (multifd) {
      // Ours and QEMU's multifd side by side: the same guest, channels and prefaulted destination, each
      // process's CPU per GiB and what it went on. A short migration: sampled more often.
      const k = multifd.channels;
      const mGib = (multifd.memMiB * (1 << 20)) / 2 ** 30;
      const name = `RAM over ${k} multifd channels, ${bytes(multifd.memMiB << 20)} random guest, prefaulted destination: ours and QEMU's`;
      const sides = await record(
        name,
        mGib,
        2999,
        (side) => `ours ${side}`,
        (observe) => oursOnce(multifd.memMiB, true, [], 'random', k, observe),
      );
      const qemu = qemuMissing();
      if (qemu) {
        say(`perf qemu skipped: ${qemu}`);
        run.skipped.push({ name: 'perf profile of QEMU multifd', why: qemu });
      } else {
        sides.push(
          ...(await record(
            name,
            mGib,
            2999,
            (side) => `QEMU ${side}`,
            (observe) => qemuOnce(multifd.memMiB, true, 'random', k, observe),
          )),
        );
      }
      profiles.push({ name, sides });
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
