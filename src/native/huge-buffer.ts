// Large buffers a migration fills and reuses (the source's section staging ring, the destination's gather
// buffers, a trapped device's data area, the VMM's trapped chunk buffers and its v2 MIG_DATA_READ buffers)
// in memory advised for transparent huge pages: the addon's mmapAnon, as QEMU advises its RAM blocks
// QEMU_MADV_HUGEPAGE. On this kind of host a first touch costs about 11 us per 4 KiB page (a 16 MiB
// buffer: about 45 ms, paid inside the migration; mostly the hypervisor backing memory it had reclaimed:
// docs/performance.md, "A fresh destination inside a VM"); in 2 MiB pages it is 8 faults.
import { native } from './addon.ts';

/** Zeroed bytes in their own 2 MiB-aligned anonymous mapping (unmapped once collected). */
export function hugeBuffer(bytes: number): Uint8Array<ArrayBuffer> {
  return new Uint8Array(native().mmapAnon(bytes));
}
