// How much of a VMM process's guest RAM the host holds, read from outside the process: the pages its
// guest memfd has allocated (st_blocks of /proc/PID/fd/N, as `du` would say of a file), whether or not
// any process maps them. RssShmem counts only the pages a process has mapped, and a destination writes
// fresh pages through the memfd without mapping them (GuestMemory.writePagesThroughFd). For the tests
// and the bench.

import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
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

/**
 * KiB of the VMM process `pid`'s guest RAM its mappings map with 2 MiB entries (/proc/PID/smaps,
 * ShmemPmdMapped of the guest memfd's mappings): each part of the memfd counted once, by the mapping of
 * it that maps the most so (the VMM and its vCPU workers each map all of guest RAM).
 */
export function guestRamHugeKib(pid: number): number {
  const byOffset = new Map<number, number>();
  let offset = -1;
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const head = /^[0-9a-f]+-[0-9a-f]+ \S+ ([0-9a-f]+) \S+ \d+\s*(.*)$/.exec(line);
    if (head) offset = head[2]!.startsWith(`/memfd:${GUEST_RAM_NAME} `) ? Number.parseInt(head[1]!, 16) : -1;
    else if (offset >= 0 && line.startsWith('ShmemPmdMapped:')) {
      const kib = Number(/(\d+)/.exec(line)![1]);
      byOffset.set(offset, Math.max(byOffset.get(offset) ?? 0, kib));
    }
  }
  let total = 0;
  for (const kib of byOffset.values()) total += kib;
  return total;
}
