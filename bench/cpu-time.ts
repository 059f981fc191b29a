// On-CPU time of a whole process, in nanoseconds, from the scheduler's own per-thread accounting
// (/proc/PID/task/TID/schedstat, its first field): fine enough for a round of tens of milliseconds, where
// the tick-based utime/stime of /proc/PID/stat (bench/profile.ts) moves in 10 ms steps. A thread that
// ends between two samples takes its time with it; the processes timed here keep theirs.

import { readdirSync, readFileSync } from 'node:fs';

export function processCpuNs(pid: number | 'self'): number {
  let ns = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return ns;
}
