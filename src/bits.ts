// Bit counting shared by both dirty logs: the VMM's guest dirty bitmap (src/vmm/guest/dirty-bitmap.ts,
// QEMU's migration bitmap) and a device's own log of the pages it wrote by DMA (src/device/dirty-log.ts,
// what a VFIO device reports through the migration region).

/** Set bits in a 32-bit word (SWAR popcount: no loop over the bits, no table). */
export function popcount32(v: number): number {
  v -= (v >>> 1) & 0x55555555;
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return Math.imul((v + (v >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24;
}
