// Errors from a device, named for the user: "REGION_READ failed at the peer (EIO)" alone does not say
// which device failed or during which step (QEMU's error_report calls carry vbasedev->name the same way).

import { asVfioError, VfioError } from '../../errors.ts';

/** `err` as a VfioError whose message starts with the device name and step. */
export function nameError(name: string, err: unknown, what = ''): VfioError {
  const e = asVfioError(err);
  const bare = e.detail;
  return new VfioError(e.errno, `${name}: ${what}${bare}`, { cause: err });
}

/** `p`, with a failure re-thrown named (nameError). */
export async function named<T>(name: string, p: Promise<T>, what = ''): Promise<T> {
  try {
    return await p;
  } catch (err) {
    throw nameError(name, err, what);
  }
}

/**
 * Runs a save loop whose chunks go to `onData`: device errors are named, while a failure of `onData`
 * (the stream's: a broken link, a cancel) passes unchanged, so it is not blamed on the device.
 */
export async function dataPath<T>(
  name: string,
  what: string,
  onData: (chunk: Uint8Array) => Promise<void> | void,
  run: (sink: (chunk: Uint8Array) => Promise<void>) => Promise<T>,
): Promise<T> {
  let sinkError: { err: unknown } | undefined;
  const sink = async (chunk: Uint8Array) => {
    try {
      await onData(chunk);
    } catch (err) {
      sinkError = { err };
      throw err;
    }
  };
  try {
    return await named(name, run(sink), what);
  } catch (err) {
    throw sinkError ? sinkError.err : err;
  }
}

/** Bits set among the first `n` bits of an LSB-first bitmap (bit i = byte i/8, bit i%8). */
export function countBits(bitmap: Uint8Array, n: number): number {
  let c = 0;
  for (let i = 0; i < n; i++) if ((bitmap[i >>> 3]! >>> (i & 7)) & 1) c++;
  return c;
}
