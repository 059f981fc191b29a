// On-CPU time, in milliseconds, finer than the tick-based utime/stime of /proc/PID/stat (bench/profile.ts,
// 10 ms steps). Another process's threads, or one thread: the scheduler's per-thread accounting
// (/proc/PID/task/TID/schedstat, its first field, in ns), which for a thread running at that moment lags
// by at most a scheduler tick (a few ms); a thread that ends between two samples takes its time with it
// (the processes timed here keep theirs). This whole process: process.cpuUsage() (getrusage: every
// thread, the running one's time up to the call). A process whose threads come and go:
// processStatCpuMs, to a clock tick.

import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

/** One clock tick of /proc's utime and stime fields, in ms. */
const TICK_MS = 1000 / Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim() || 100);

export function threadCpuMs(pid: number, tid: number | string): number {
  return Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]) / 1e6;
}

export function processCpuMs(pid: number): number {
  let ms = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      ms += threadCpuMs(pid, tid);
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return ms;
}

export function selfCpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/**
 * A process's user and system time so far, threads that already ended included (/proc/PID/stat, to a
 * clock tick): for spans in which threads come and go, as a migration's channel threads do.
 */
export function processStatCpuMs(pid: number): number {
  const t = statCpuMs(`/proc/${pid}/stat`);
  return t.user + t.sys;
}

/** User and system time (ms, to a clock tick) of a /proc stat file: a process's or one task's. */
export function statCpuMs(path: string): { user: number; sys: number } {
  const stat = readFileSync(path, 'utf8');
  // Fields after the command name (which may hold spaces): utime is [11], stime [12].
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { user: Number(f[11]) * TICK_MS, sys: Number(f[12]) * TICK_MS };
}
