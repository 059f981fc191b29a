// On-CPU time, in milliseconds, finer than the tick-based utime/stime of /proc/PID/stat (bench/profile.ts,
// 10 ms steps). Another process's threads, or one thread: the scheduler's per-thread accounting
// (/proc/PID/task/TID/schedstat, its first field, in ns), which for a thread running at that moment lags
// by at most a scheduler tick (a few ms); a thread that ends between two samples takes its time with it
// (the processes timed here keep theirs). This whole process: process.cpuUsage() (getrusage: every
// thread, the running one's time up to the call).

import { readdirSync, readFileSync } from 'node:fs';

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
