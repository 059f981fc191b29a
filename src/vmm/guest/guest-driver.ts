// What the guest's own device driver would do at boot, for the sample devices: point the large-memory
// device's DMA ring at a guest buffer and turn DMA on, so the device dirties guest pages while it runs.
// A destination VMM does not do this: the device's registers arrive with its migrated state.

import { Errno } from '../../abi/errno.ts';
import { CONTROL_DMA, CONTROL_WORK, LargeMemoryRegs } from '../../device/samples/large-memory.ts';
import { VfioError } from '../../errors.ts';
import type { VfioUserClient } from '../../vfio-user/client.ts';

const ID_LMEM = 0x4d454d4c;

/** Programs the device if it is a sample large-memory device; returns what it did, or null. */
export async function bootGuestDriver(
  client: VfioUserClient,
  ringIova: bigint,
  ringSize: bigint,
): Promise<string | null> {
  // A device without a BAR0 that large (not one of ours) refuses the read: it is simply not this device.
  // Anything else (the connection failing) is the caller's to hear.
  const id = await client.regionRead(0, LargeMemoryRegs.ID, 4).catch((err: unknown) => {
    if (err instanceof VfioError && err.errno === Errno.EINVAL) return null;
    throw err;
  });
  if (!id || new DataView(id.buffer, id.byteOffset, 4).getUint32(0, true) !== ID_LMEM) return null;
  const u64 = (v: bigint) => {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, v, true);
    return b;
  };
  const u32 = (v: number) => {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v, true);
    return b;
  };
  await client.regionWrite(0, LargeMemoryRegs.DMA_BASE, u64(ringIova));
  await client.regionWrite(0, LargeMemoryRegs.DMA_SIZE, u64(ringSize));
  await client.regionWrite(0, LargeMemoryRegs.CONTROL, u32(CONTROL_WORK | CONTROL_DMA));
  return `large-memory device: DMA ring at 0x${ringIova.toString(16)} (${ringSize} bytes)`;
}
