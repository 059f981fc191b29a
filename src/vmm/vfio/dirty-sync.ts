// A log sync over a device's bitmap query (QEMU's vfio_get_dirty_bitmap loop): one read-and-clear query per
// DMA-mapped range, its bitmap merged into the guest dirty log. A failed query leaves the device's log
// unknown, so the whole range is marked dirty (as the kernel uAPI asks) before the error is thrown. The v1
// (DIRTY_PAGES GET_BITMAP) and v2 (DMA_LOGGING_REPORT) drivers differ only in the query.

import type { DirtyBitmapSink } from '../guest/dirty-bitmap.ts';
import type { Tracer } from '../trace.ts';
import type { DmaRangeRef } from './driver.ts';
import { countBits, nameError } from './driver-errors.ts';

export async function syncDirtyRanges(
  o: { name: string; trace: Tracer; what: string },
  ranges: readonly DmaRangeRef[],
  sink: DirtyBitmapSink,
  pageSize: bigint,
  query: (range: DmaRangeRef, pages: number) => Promise<Uint8Array>,
): Promise<bigint> {
  let total = 0n;
  for (const r of ranges) {
    const pages = Number(r.size / pageSize);
    try {
      const bitmap = await query(r, pages);
      sink(r.iova / pageSize, pages, bitmap);
      const dirty = BigInt(countBits(bitmap, pages));
      o.trace.event('vfio_get_dirty_bitmap', { name: o.name, iova: r.iova, size: r.size, dirty_pages: dirty });
      total += dirty;
    } catch (err) {
      sink(r.iova / pageSize, pages, 'all');
      throw nameError(o.name, err, `${o.what}: `);
    }
  }
  return total;
}
