// A RegionPort over a migration region in this same process: trapped accesses call the region directly,
// and for an mmapped data section `mapped` returns a view of the memory the region uses, as a client's
// mmap of it would. For the in-process region demo and for tests.

import type { SeedMigrationRegion } from '../../device/seed-region.ts';
import type { RegionPort } from '../../vfio-user/region-port.ts';

export interface PortStats {
  /** trapped accesses */
  trapped: number;
  /** bytes reached through the mapping */
  mappedBytes: number;
}

export function localRegionPort(region: SeedMigrationRegion, stats?: PortStats): RegionPort {
  const { layout } = region;
  return {
    size: layout.size,
    read: async (offset, length) => {
      if (stats) stats.trapped++;
      return region.read(offset, length);
    },
    write: async (offset, data) => {
      if (stats) stats.trapped++;
      region.write(offset, data);
    },
    mapped: (offset, length) => {
      const area = layout.mmapAreas.find((a) => offset >= a.offset && offset + length <= a.offset + a.size);
      if (!area) return undefined;
      if (stats) stats.mappedBytes += length;
      const start = offset - layout.sectionOffset;
      return region.sectionMemory.subarray(start, start + length);
    },
  };
}
