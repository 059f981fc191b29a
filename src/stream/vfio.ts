// VFIO device section payloads: be64 tags 0xFFFFFFFF_EF10_xxxx (QEMU's hw/vfio/migration.c); device data
// as DEV_DATA_STATE + be64 size + bytes; config as DEV_CONFIG_STATE + blob + END_OF_STATE.

import { be64 } from './bytes.ts';
import { VfioTag } from './constants.ts';
import { StreamError } from './errors.ts';

/** Config blobs are the PCI config space we save (256 bytes); anything bigger is refused. */
export const MAX_CONFIG_BYTES = 4096;

export function vfioSetupPayload(): Uint8Array[] {
  return [be64(VfioTag.DEV_SETUP_STATE), be64(VfioTag.END_OF_STATE)];
}

/** One device-data chunk; `chunk` is referenced, not copied. */
export function vfioDataPayload(chunk: Uint8Array): Uint8Array[] {
  return [be64(VfioTag.DEV_DATA_STATE), be64(BigInt(chunk.byteLength)), chunk, be64(VfioTag.END_OF_STATE)];
}

export function vfioEndPayload(): Uint8Array[] {
  return [be64(VfioTag.END_OF_STATE)];
}

export function vfioConfigPayload(blob: Uint8Array): Uint8Array[] {
  return [be64(VfioTag.DEV_CONFIG_STATE), blob, be64(VfioTag.END_OF_STATE)];
}

export type VfioRecord =
  | { kind: 'setup' }
  | { kind: 'data'; data: Uint8Array }
  | { kind: 'config'; data: Uint8Array }
  | { kind: 'end' };

/**
 * Decodes a VFIO section payload: any number of SETUP, DATA and CONFIG blocks, each closed by
 * END_OF_STATE where QEMU closes them, and the payload ends on END_OF_STATE.
 */
export function* decodeVfioPayload(payload: Uint8Array): Generator<VfioRecord> {
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  let at = 0;
  const fail = (msg: string): never => {
    throw new StreamError(`VFIO: ${msg}`, at);
  };
  const tag = (): bigint => {
    if (at + 8 > payload.byteLength) fail('tag runs past the end of the section');
    const t = dv.getBigUint64(at, false);
    at += 8;
    return t;
  };
  let last: bigint | null = null;
  while (at < payload.byteLength) {
    const t = tag();
    last = t;
    switch (t) {
      case VfioTag.END_OF_STATE:
        yield { kind: 'end' };
        break;
      case VfioTag.DEV_SETUP_STATE:
        yield { kind: 'setup' };
        break;
      case VfioTag.DEV_DATA_STATE: {
        if (at + 8 > payload.byteLength) fail('data size runs past the end');
        const size = dv.getBigUint64(at, false);
        at += 8;
        if (size > BigInt(payload.byteLength - at))
          fail(`data block of ${size} bytes runs past the end of the section`);
        const data = payload.subarray(at, at + Number(size));
        at += Number(size);
        yield { kind: 'data', data };
        break;
      }
      case VfioTag.DEV_CONFIG_STATE: {
        // The blob runs to the END_OF_STATE that must close it.
        const rest = payload.byteLength - at;
        if (rest < 8 || rest - 8 > MAX_CONFIG_BYTES) fail('config state has no END_OF_STATE after at most 4 KiB');
        const data = payload.subarray(at, payload.byteLength - 8);
        at = payload.byteLength - 8;
        yield { kind: 'config', data };
        break;
      }
      default:
        fail(`unknown tag 0x${t.toString(16)}`);
    }
  }
  if (last !== VfioTag.END_OF_STATE) fail('payload does not end with END_OF_STATE');
}
