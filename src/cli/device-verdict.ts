// The demo's last word on the devices: do the destination's devices hold the source's state? Plays the part
// of QEMU's post-migration check in its own migration tests (tests/qtest/migration-test.c compares memory
// after switch-over); here devices are compared by the state digest each VMM reads through the BAR.

/** One device's digest as a VMM reports it: null when the device was lost and nothing can be read. */
export type DeviceDigest = { name: string; digest: string | null; lost?: string };

/**
 * Why the destination's devices cannot be called equal to the source's: an empty list means verified.
 * Equal requires the same number of devices and, for each, a digest on both sides (a device lost on both
 * sides proves nothing, so null never equals null) with the same value.
 */
export function deviceMismatches(src: DeviceDigest[], dst: DeviceDigest[]): string[] {
  const problems: string[] = [];
  if (src.length !== dst.length) problems.push(`the source has ${src.length} device(s), the destination ${dst.length}`);
  const n = Math.max(src.length, dst.length);
  for (let i = 0; i < n; i++) {
    const a = src[i];
    const b = dst[i];
    const name = a?.name ?? b?.name ?? `#${i}`;
    if (!a || !b) continue; // already said by the count
    if (a.digest === null) problems.push(`device ${name} lost at the source${a.lost ? ` (${a.lost})` : ''}`);
    if (b.digest === null) problems.push(`device ${name} lost at the destination${b.lost ? ` (${b.lost})` : ''}`);
    if (a.digest !== null && b.digest !== null && a.digest !== b.digest)
      problems.push(`device ${name} state differs at the destination`);
  }
  return problems;
}
