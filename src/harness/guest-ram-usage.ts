// How much of a VMM process's guest RAM the host holds, read from outside the process: the pages its
// guest memfd has allocated (st_blocks of /proc/PID/fd/N, as `du` would say of a file), whether or not
// any process maps them. RssShmem counts only the pages a process has mapped, and a destination writes
// fresh pages through the memfd without mapping them (GuestMemory.writePagesThroughFd). For the tests
// and the bench.

import { readdirSync, readlinkSync, statSync } from 'node:fs';
import { GUEST_RAM_NAME } from '../vmm/guest/guest-memory.ts';

/** KiB of guest RAM the VMM process `pid` holds in memory (its guest memfd's allocated pages). */
export function guestRamAllocatedKib(pid: number): number {
  const dir = `/proc/${pid}/fd`;
  for (const fd of readdirSync(dir)) {
    let target: string;
    try {
      target = readlinkSync(`${dir}/${fd}`);
    } catch {
      continue; // closed since the listing
    }
    if (target.startsWith(`/memfd:${GUEST_RAM_NAME} `)) return (statSync(`${dir}/${fd}`).blocks * 512) / 1024;
  }
  throw new Error(`process ${pid} has no guest RAM memfd (/memfd:${GUEST_RAM_NAME}) open`);
}
