// The RegionPort seam (how a VMM-side migration driver reaches one region of a device), and its
// implementation for one region of a vfio-user device: reads and writes are
// trapped (REGION_READ/REGION_WRITE through the client); if the server sent the region's fd with sparse-mmap
// areas, each area is mmapped and `mapped()` serves views of it, as QEMU maps a region's mmappable parts and
// traps the rest. An area that cannot be mapped stays trapped (with a warning), as QEMU carries on with a
// slow path rather than failing the device.

import { Errno } from '../abi/errno.ts';
import {
  type RegionFlavor,
  SEED_REGION_SUBTYPE,
  SEED_REGION_TYPE,
  V1_REGION_SUBTYPE,
  V1_REGION_TYPE,
} from '../abi/migration.ts';
import { NUM_REGIONS_V2 } from '../abi/vfio-user/device-info.ts';
import { VfioError } from '../errors.ts';
import { native } from '../native/addon.ts';
import type { RegionInfo, VfioUserClient } from './client.ts';

/** How the VMM reaches one region of a device. */
export interface RegionPort {
  readonly size: number;
  read(offset: number, length: number): Promise<Uint8Array>;
  /**
   * Reads `dest.byteLength` bytes at `offset` straight into `dest`, in pieces of at most `pieceSize` with
   * up to `inFlight` of them outstanding (hints; a port may ignore them). Optional: without it, read() is
   * used and copied.
   */
  readInto?(offset: number, dest: Uint8Array, options?: { pieceSize?: number; inFlight?: number }): Promise<void>;
  write(offset: number, data: Uint8Array): Promise<void>;
  /** A direct view of [offset, offset + length) when that range is mmapped; undefined when it is trapped. */
  mapped(offset: number, length: number): Uint8Array | undefined;
}

/** One mmapped sparse area: region-relative offset and size, and the mapping. */
export interface MappedArea {
  offset: number;
  size: number;
  memory: Uint8Array;
}

export interface VfioRegionPort extends RegionPort {
  readonly index: number;
  /** The region info the port was opened with (its fd, if any, is owned by the port). */
  readonly info: RegionInfo;
  /** Areas served by `mapped()`; empty when the region is trapped only. */
  readonly areas: readonly MappedArea[];
  /** Why areas the server offered are not mapped (they stay trapped). */
  readonly warnings: readonly string[];
  /** Unmaps every area and closes the region fd. The port must not be used afterwards. Idempotent. */
  close(): void;
}

export interface RegionPortOptions {
  /** Map the sparse areas when the server offers them (default true); false = trapped only. */
  mmap?: boolean;
}

function safeNumber(what: string, v: bigint): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new VfioError(Errno.EOVERFLOW, `${what} ${v} is too large`);
  return Number(v);
}

/** Opens region `index` of the device behind `client` as a RegionPort. */
export async function openRegionPort(
  client: VfioUserClient,
  index: number,
  options: RegionPortOptions = {},
): Promise<VfioRegionPort> {
  const info = await client.regionInfo(index);
  const areas: MappedArea[] = [];
  const warnings: string[] = [];
  let closed = false;
  const release = () => {
    for (const a of areas) native().munmap(a.memory.buffer as ArrayBuffer);
    areas.length = 0;
    if (info.fd !== undefined) native().close(info.fd);
  };
  try {
    const size = safeNumber(`region ${index} size`, info.size);
    if (info.fd !== undefined && options.mmap !== false) {
      // An area past the fd's end would kill this process with SIGBUS at the first touch there.
      let fileSize = -1n;
      try {
        fileSize = BigInt(native().fdSize(info.fd));
      } catch (err) {
        warnings.push(`region ${index} fd cannot be stat'ed (${(err as Error).message}): nothing mapped`);
      }
      for (const a of fileSize < 0n ? [] : (info.sparseAreas ?? [])) {
        const where = `region ${index} area ${a.offset}+${a.size}`;
        if (a.size === 0n) continue;
        if (a.offset + a.size > info.size) {
          warnings.push(`${where} lies beyond the region's ${info.size} bytes: not mapped`);
          continue;
        }
        if (info.offset + a.offset + a.size > fileSize) {
          warnings.push(`${where} lies beyond the fd's ${fileSize} bytes: not mapped, it stays trapped`);
          continue;
        }
        try {
          const ab = native().mmap(info.fd, info.offset + a.offset, a.size, info.writable);
          areas.push({ offset: Number(a.offset), size: Number(a.size), memory: new Uint8Array(ab) });
        } catch (err) {
          warnings.push(`${where} cannot be mmapped (${(err as Error).message}): it stays trapped`);
        }
      }
    }
    const port: VfioRegionPort = {
      index,
      info,
      size,
      areas,
      warnings,
      read: (offset, length) => {
        if (closed) return Promise.reject(new VfioError(Errno.EBADF, `region ${index} port is closed`));
        return client.regionRead(index, offset, length);
      },
      readInto: (offset, dest, readOptions) => {
        if (closed) return Promise.reject(new VfioError(Errno.EBADF, `region ${index} port is closed`));
        return client.regionReadInto(index, offset, dest, readOptions);
      },
      write: (offset, data) => {
        if (closed) return Promise.reject(new VfioError(Errno.EBADF, `region ${index} port is closed`));
        return client.regionWrite(index, offset, data);
      },
      mapped: (offset, length) => {
        if (closed) return undefined;
        for (const a of areas) {
          if (offset >= a.offset && offset + length <= a.offset + a.size) {
            return a.memory.subarray(offset - a.offset, offset - a.offset + length);
          }
        }
        return undefined;
      },
      close: () => {
        if (closed) return;
        closed = true;
        release();
      },
    };
    return port;
  } catch (err) {
    release();
    throw err;
  }
}

export interface MigrationRegionFound {
  index: number;
  flavor: RegionFlavor;
  /** Its region info (any fd that came with it has been closed; openRegionPort asks again). */
  info: RegionInfo;
}

/** The flavor a TYPE cap stands for: seed 2/1 (the 2019 draft), v1 3/1 (Linux 5.8). */
export function migrationFlavorOf(type: { type: number; subtype: number } | undefined): RegionFlavor | null {
  if (type?.type === SEED_REGION_TYPE && type.subtype === SEED_REGION_SUBTYPE) return 'seed';
  if (type?.type === V1_REGION_TYPE && type.subtype === V1_REGION_SUBTYPE) return 'v1';
  return null;
}

/**
 * Scans the device-specific regions (index ≥ 9) for a migration region's TYPE cap. Regions the server
 * refuses to describe (EINVAL) are skipped; connection failures are not.
 */
export async function findMigrationRegion(client: VfioUserClient): Promise<MigrationRegionFound | null> {
  const { numRegions } = await client.deviceInfo();
  for (let index = NUM_REGIONS_V2; index < numRegions; index++) {
    let info: RegionInfo;
    try {
      info = await client.regionInfo(index);
    } catch (err) {
      if (err instanceof VfioError && err.errno === Errno.EINVAL) continue;
      throw err;
    }
    if (info.fd !== undefined) {
      native().close(info.fd);
      info.fd = undefined;
    }
    const flavor = migrationFlavorOf(info.type);
    if (flavor) return { index, flavor, info };
  }
  return null;
}
