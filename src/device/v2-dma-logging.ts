// The device side of v2 dirty tracking: DEVICE_FEATURE DMA_LOGGING_START / STOP / REPORT as libvfio-user
// HEAD serves them (lib/dma.c, lib/libvfio-user.c at efd091bc), from the device's DirtyPageLog. START
// ignores its ranges and logs every DMA region (our log is sparse and covers any IOVA); a report is for
// exactly one fd-backed DMA region, read-and-clear, at any power-of-two page size: above the log's 4 KiB
// pages the bits are OR-merged, below it each 4 KiB bit is repeated for the smaller pages it covers.

import { Errno } from '../abi/errno.ts';
import { VfioError } from '../errors.ts';
import { type DirtyPageLog, LOG_PAGE_SIZE } from './dirty-log.ts';
import type { TrackedDmaRegion } from './v1-dirty-pages.ts';

export class V2DmaLogging {
  /** The page size START chose, 0n when logging is off. */
  private pageSize = 0n;

  constructor(private readonly log: DirtyPageLog | undefined) {}

  get isLogging(): boolean {
    return this.pageSize !== 0n;
  }

  /** START: the same page size again is a no-op; another one while logging is EINVAL. */
  start(pageSize: bigint): void {
    if (this.pageSize !== 0n) {
      if (pageSize !== this.pageSize) {
        throw new VfioError(Errno.EINVAL, `DMA logging already runs at page size ${this.pageSize}, not ${pageSize}`);
      }
      return;
    }
    this.log?.start();
    this.pageSize = pageSize;
  }

  stop(): void {
    if (this.pageSize === 0n) return;
    this.log?.stop();
    this.pageSize = 0n;
  }

  /** REPORT of [iova, iova + length) at `pageSize` (a power of two; the codec checked it and the sizes). */
  report(req: { iova: bigint; length: bigint; pageSize: bigint }, region: TrackedDmaRegion | undefined): Uint8Array {
    if (this.pageSize === 0n) throw new VfioError(Errno.EINVAL, 'DMA logging is not started');
    if (!region) throw new VfioError(Errno.ENOENT, `no DMA region at 0x${req.iova.toString(16)}`);
    if (region.iova !== req.iova || region.size !== req.length) {
      throw new VfioError(Errno.ENOTSUP, 'a DMA logging report must cover exactly one DMA region');
    }
    if (region.fd < 0) throw new VfioError(Errno.EINVAL, 'the DMA region has no fd (its pages are not logged)');
    const pages = Number((req.length + req.pageSize - 1n) / req.pageSize);
    const out = new Uint8Array(Math.ceil(pages / 64) * 8);
    if (!this.log) return out;
    const firstPage = Number(req.iova / BigInt(LOG_PAGE_SIZE));
    if (req.pageSize >= BigInt(LOG_PAGE_SIZE)) {
      const pagesPerPfn = Number(req.pageSize / BigInt(LOG_PAGE_SIZE));
      this.log.readAndClear({ firstPage, pagesPerPfn, count: pages }, out);
      return out;
    }
    const logPages = Math.ceil(Number(req.length) / LOG_PAGE_SIZE);
    const coarse = new Uint8Array(Math.ceil(logPages / 8));
    this.log.readAndClear({ firstPage, pagesPerPfn: 1, count: logPages }, coarse);
    const repeat = LOG_PAGE_SIZE / Number(req.pageSize);
    for (let p = 0; p < pages; p++) {
      const lp = Math.floor(p / repeat);
      if ((coarse[lp >> 3]! >> (lp & 7)) & 1) out[p >> 3]! |= 1 << (p & 7);
    }
    return out;
  }
}
