// The device config state every flavor sends as DEV_CONFIG_STATE (QEMU's vfio_save_device_config_state /
// vfio_load_device_config_state): PCI config space, region 7, its first 256 bytes; on load only what a
// guest driver may have written (the command register and the BARs) is written back. And the migration
// statuses on which the migration-state notifier puts a device back to running, for every flavor.

import { Errno } from '../../abi/errno.ts';
import { VfioError } from '../../errors.ts';
import type { VfioUserClient } from '../../vfio-user/client.ts';

const CONFIG_REGION = 7;
export const CONFIG_STATE_BYTES = 256;

/** Statuses that make the notifier return a device to running (QEMU's v1 and v2 drivers alike). */
export const FAILED_STATUSES: ReadonlySet<string> = new Set(['cancelling', 'cancelled', 'failed']);

export function readConfigSpace(client: VfioUserClient): Promise<Uint8Array> {
  return client.regionRead(CONFIG_REGION, 0, CONFIG_STATE_BYTES);
}

export async function restoreConfigSpace(client: VfioUserClient, name: string, blob: Uint8Array): Promise<void> {
  if (blob.byteLength !== CONFIG_STATE_BYTES) {
    throw new VfioError(
      Errno.EINVAL,
      `${name}: config state is ${blob.byteLength} bytes, expected ${CONFIG_STATE_BYTES}`,
    );
  }
  await client.regionWrite(CONFIG_REGION, 0x04, blob.subarray(0x04, 0x06));
  await client.regionWrite(CONFIG_REGION, 0x10, blob.subarray(0x10, 0x28));
}
