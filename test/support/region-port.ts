// A RegionPort over a region in this process: trapped accesses call region.read/write, and for an mmapped
// data section `mapped` returns a view of the very memory the region uses, as a client's mmap would.
import type { SeedMigrationRegion } from '../../src/device/seed-region.ts';
import type { RegionPort } from '../../src/vmm/seed-region-client.ts';

export function regionPort(region: SeedMigrationRegion, stats?: { trapped: number; mappedBytes: number }): RegionPort {
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
      for (const a of layout.mmapAreas) {
        if (offset >= a.offset && offset + length <= a.offset + a.size) {
          if (stats) stats.mappedBytes += length;
          const start = offset - layout.sectionOffset;
          return region.sectionMemory.subarray(start, start + length);
        }
      }
      return undefined;
    },
  };
}
