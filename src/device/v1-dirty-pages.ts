// The device side of v1-era dirty page tracking: vfio-user DIRTY_PAGES (START / STOP / GET_BITMAP) and the
// bitmap of DMA_UNMAP with GET_DIRTY_BITMAP, as libvfio-user's v1 era answers them (lib/dma.c
// dma_controller_dirty_page_logging_start/stop and dma_controller_dirty_page_get, at 1569a37a), served from
// the device's DirtyPageLog. The range asked for must be exactly one DMA region backed by an fd; bits are
// read-and-clear, one per page of the logging page size negotiated in VERSION (migration.pgsize).

import { Errno } from '../abi/errno.ts';
import { VfioError } from '../errors.ts';
import type { DirtyPageLog } from './dirty-log.ts';
import { LOG_PAGE_SIZE } from './dirty-log.ts';

/** A DMA region as the tracker needs to see it. */
export interface TrackedDmaRegion {
  readonly iova: bigint;
  readonly size: bigint;
  /** -1 when the region has no fd (message-based DMA). */
  readonly fd: number;
}

export class V1DirtyTracking {
  /** The logging page size while tracking (libvfio-user's dirty_pgsize), 0 when not tracking. */
  private pgsize = 0n;

  /** `log` is undefined for a device that does no DMA: it never dirties a page. */
  constructor(private readonly log: DirtyPageLog | undefined) {}

  get isTracking(): boolean {
    return this.pgsize !== 0n;
  }

  /** START: idempotent at the same page size; libvfio-user refuses another page size while tracking. */
  start(pgsize: bigint = BigInt(LOG_PAGE_SIZE)): void {
    if (this.pgsize !== 0n) {
      if (pgsize !== this.pgsize) {
        throw new VfioError(Errno.EINVAL, `dirty logging already runs at page size ${this.pgsize}, not ${pgsize}`);
      }
      return;
    }
    if (pgsize !== BigInt(LOG_PAGE_SIZE)) {
      throw new VfioError(Errno.EINVAL, `dirty page size ${pgsize} is not the logging page size ${LOG_PAGE_SIZE}`);
    }
    this.log?.start();
    this.pgsize = pgsize;
  }

  /** STOP: idempotent. */
  stop(): void {
    if (this.pgsize === 0n) return;
    this.log?.stop();
    this.pgsize = 0n;
  }

  /**
   * The bitmap of [iova, iova + size) at `pgsize`, read and cleared; `region` is the DMA region the lookup
   * found for iova (undefined if none). Checks, in libvfio-user's order: a region covers iova (ENOENT), it
   * is exactly the range (ENOTSUP), the page size is the logging one (EINVAL, so also when not tracking),
   * the bitmap is exactly ceil(pages / 64) * 8 bytes (EINVAL), the region has an fd (EINVAL).
   */
  bitmap(
    range: { iova: bigint; size: bigint; pgsize: bigint; bitmapSize: bigint },
    region: TrackedDmaRegion | undefined,
  ): Uint8Array {
    if (!region) throw new VfioError(Errno.ENOENT, `no DMA region at 0x${range.iova.toString(16)}`);
    if (region.iova !== range.iova || region.size !== range.size) {
      throw new VfioError(
        Errno.ENOTSUP,
        `dirty range 0x${range.iova.toString(16)}+0x${range.size.toString(16)} is not exactly one DMA region`,
      );
    }
    if (range.pgsize !== this.pgsize) {
      throw new VfioError(
        Errno.EINVAL,
        this.pgsize === 0n ? 'dirty page logging is not started' : `bad page size ${range.pgsize}`,
      );
    }
    const pages = range.size / range.pgsize;
    const want = ((pages + 63n) / 64n) * 8n;
    if (range.size % range.pgsize !== 0n || range.bitmapSize !== want) {
      throw new VfioError(Errno.EINVAL, `bitmap size ${range.bitmapSize} must be ${want} for ${pages} pages`);
    }
    if (region.fd < 0) throw new VfioError(Errno.EINVAL, 'the DMA region has no fd (its pages are not logged)');
    const out = new Uint8Array(Number(want));
    const pagesPerPfn = Number(range.pgsize / BigInt(LOG_PAGE_SIZE));
    this.log?.readAndClear(
      { firstPage: Number(range.iova / BigInt(LOG_PAGE_SIZE)), pagesPerPfn, count: Number(pages) },
      out,
    );
    return out;
  }
}
