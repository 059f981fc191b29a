// How many of this process's open file descriptors point at something whose name contains `fragment`
// (a memfd shows as "/memfd:NAME (deleted)"): for tests that a helper frees what it makes.
import { readdirSync, readlinkSync } from 'node:fs';

export function openFdsNamed(fragment: string): number {
  return readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`).includes(fragment);
    } catch {
      return false; // the directory's own fd, closed by now
    }
  }).length;
}
