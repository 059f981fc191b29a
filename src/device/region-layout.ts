// Where things sit in a migration region. The header is followed by the dirty-bitmap area and then the
// device-data area, which runs to the end of the region: so whatever data_offset says, the room at it is
// `size - data_offset`, for saving and resuming alike. A trapped data section starts right after the
// header; an mmapped one is page aligned and offered as one sparse-mmap area.

export const REGION_PAGE_SIZE = 4096;

export type DataSectionKind = 'trapped' | 'mmapped';

export interface RegionLayoutOptions {
  kind: DataSectionKind;
  /** Size of the header block (64 for the seed, 32 for Linux 5.8). */
  headerSize: number;
  /** Bytes for the dirty bitmap; 0 for flavors that report dirty pages elsewhere. */
  bitmapSize: number;
  /** Bytes for device data: the most one chunk can carry. */
  dataSize: number;
}

export interface RegionLayout {
  readonly kind: DataSectionKind;
  readonly headerSize: number;
  /** Start of the data section (bitmap area, then data area). */
  readonly sectionOffset: number;
  readonly bitmapOffset: number;
  readonly bitmapSize: number;
  readonly dataOffset: number;
  readonly dataSize: number;
  /** Total region size. */
  readonly size: number;
  /** Parts a client may mmap (sparse-mmap capability), offsets within the region. */
  readonly mmapAreas: readonly { offset: number; size: number }[];
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

export function computeRegionLayout(o: RegionLayoutOptions): RegionLayout {
  const align = o.kind === 'mmapped' ? REGION_PAGE_SIZE : 8;
  for (const [name, v] of [
    ['bitmapSize', o.bitmapSize],
    ['dataSize', o.dataSize],
  ] as const) {
    if (!Number.isSafeInteger(v) || v < 0 || v % align !== 0) {
      throw new RangeError(`${name} ${v} must be a non-negative multiple of ${align} for a ${o.kind} data section`);
    }
  }
  if (o.dataSize === 0) throw new RangeError('dataSize must be > 0');
  const sectionOffset = alignUp(o.headerSize, align);
  const dataOffset = sectionOffset + o.bitmapSize;
  const size = dataOffset + o.dataSize;
  return {
    kind: o.kind,
    headerSize: o.headerSize,
    sectionOffset,
    bitmapOffset: sectionOffset,
    bitmapSize: o.bitmapSize,
    dataOffset,
    dataSize: o.dataSize,
    size,
    mmapAreas: o.kind === 'mmapped' ? [{ offset: sectionOffset, size: size - sectionOffset }] : [],
  };
}
