// The kernel's socket limits tests reason about (net.core.wmem_max, wmem_default), read from /proc.
import { readFileSync } from 'node:fs';

/** net.core.NAME as a number, e.g. netCore('wmem_max'). */
export function netCore(name: string): number {
  return Number(readFileSync(`/proc/sys/net/core/${name}`, 'utf8'));
}
