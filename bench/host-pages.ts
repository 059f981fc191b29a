// New pages as the host hands them out, for the fresh-destination figures (bench/ram.ts). Inside a
// virtual machine whose hypervisor takes freed memory back (Linux's free page reporting, virtio-balloon:
// blocks free for a few seconds are reported and the host drops their backing), the first write to such
// a page waits for the host to back it again. The guest kernel hands out recently freed pages first, so
// how fast a fresh destination's pages come depends on what the machine freed in the seconds before:
// a migration that lands into new memory measures the host's state as much as the migration.
// backHostPages takes that out: it writes `bytes` into a new memfd and frees it, so the next allocations
// of up to that size get pages the host backs; the time it took is how new pages came as found.

import { closeSync, writeSync } from 'node:fs';
import { native } from '../src/native/addon.ts';
import type { Rate } from './figures.ts';

const CHUNK = 1 << 20;

/** Writes `bytes` (a multiple of 1 MiB) into a new memfd and frees it; the rate of those writes. */
export function backHostPages(bytes: number): Rate {
  const chunk = Buffer.alloc(CHUNK, 1);
  const fd = native().memfdCreate('vfio-migrate-bench-back', bytes);
  try {
    const t0 = performance.now();
    for (let at = 0; at < bytes; at += CHUNK) writeSync(fd, chunk, 0, CHUNK, at);
    return { bytes, ms: performance.now() - t0 };
  } finally {
    closeSync(fd);
  }
}
