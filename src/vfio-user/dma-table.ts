// The device server's view of guest memory: the ranges the client DMA_MAPped. A range that came with an fd
// is mmapped here, so device DMA is a plain memory write; a range without one is reached by sending
// DMA_READ/DMA_WRITE commands to the client. A DMA to an address no range covers is dropped and counted,
// as an IOMMU fault would be: device code running on a timer must never bring the server down.

import { Errno } from '../abi/errno.ts';
import { MAX_DMA_REGION_SIZE } from '../abi/vfio-user/limits.ts';
import type { DmaPort } from '../device/bar.ts';
import { VfioError } from '../errors.ts';
import { native } from '../native/addon.ts';

export interface DmaRange {
  readonly iova: bigint;
  readonly size: bigint;
  readonly readable: boolean;
  readonly writable: boolean;
  /** fd passed with DMA_MAP (owned by the table) and the offset into it; -1 for message-based DMA. */
  readonly fd: number;
  readonly fdOffset: bigint;
  /** The mmap of fd, for fd-backed ranges. */
  readonly memory: Uint8Array | null;
}

/**
 * Message-based DMA writes the client may have unacknowledged before the device's port reports congestion.
 * Without a bound a busy device floods the socket and every reply the client waits for queues behind it.
 */
export const MAX_MESSAGE_DMA_IN_FLIGHT = 32;

/** Sends one DMA_WRITE to the client; resolves when the client acknowledged it. */
export type MessageDmaWriter = (iova: bigint, data: Uint8Array) => Promise<void>;

export interface DmaStats {
  faults: number;
  messageWrites: number;
}

export class DmaTable {
  private ranges: DmaRange[] = [];
  private inFlight = new Set<Promise<void>>();
  readonly stats: DmaStats = { faults: 0, messageWrites: 0 };
  lastFault: string | null = null;

  constructor(
    private readonly maxRanges: number,
    private readonly messageWriter: MessageDmaWriter | null,
  ) {}

  get list(): readonly DmaRange[] {
    return this.ranges;
  }

  /**
   * Adds a range (taking ownership of `fd`). An identical re-map is accepted; an overlap is refused with
   * EINVAL (the spec says EEXIST; libvfio-user answers EINVAL, and its wire behaviour is our reference).
   */
  map(req: { iova: bigint; size: bigint; fdOffset: bigint; readable: boolean; writable: boolean; fd: number }): void {
    const { iova, size } = req;
    if (size === 0n || iova + size > 1n << 64n)
      throw new VfioError(Errno.EINVAL, `DMA range ${iova}+${size} is empty or wraps`);
    if (size > MAX_DMA_REGION_SIZE) throw new VfioError(Errno.ENOSPC, `DMA range of ${size} bytes exceeds 8 TiB`);
    const same = this.ranges.find((r) => r.iova === iova && r.size === size);
    if (
      same &&
      same.fdOffset === req.fdOffset &&
      same.readable === req.readable &&
      same.writable === req.writable &&
      same.fd < 0 === req.fd < 0
    ) {
      if (req.fd >= 0) native().close(req.fd);
      return;
    }
    if (this.ranges.some((r) => iova < r.iova + r.size && r.iova < iova + size)) {
      throw new VfioError(Errno.EINVAL, `DMA range ${hex(iova)}+${hex(size)} overlaps an existing mapping`);
    }
    if (this.ranges.length >= this.maxRanges)
      throw new VfioError(Errno.ENOSPC, `already ${this.ranges.length} DMA ranges`);
    let memory: Uint8Array | null = null;
    if (req.fd >= 0) {
      if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw new VfioError(Errno.ENOSPC, 'DMA range too large to map');
      // A mapping past the file's end would kill this process with SIGBUS at the device's first touch there.
      let fileSize: number;
      try {
        fileSize = native().fdSize(req.fd);
      } catch (err) {
        throw new VfioError(Errno.EINVAL, `cannot stat the DMA fd: ${(err as Error).message}`);
      }
      if (req.fdOffset + size > BigInt(fileSize)) {
        throw new VfioError(
          Errno.EINVAL,
          `DMA range ${hex(iova)}+${hex(size)} at fd offset ${hex(req.fdOffset)} runs past the fd's ${fileSize} bytes`,
        );
      }
      try {
        memory = new Uint8Array(native().mmap(req.fd, Number(req.fdOffset), Number(size), req.writable));
      } catch (err) {
        throw new VfioError(Errno.EINVAL, `cannot mmap the DMA fd: ${(err as Error).message}`);
      }
    }
    this.ranges.push({ ...req, memory });
  }

  /** Removes the range matching exactly (ENOENT otherwise), or every range with `all`. */
  unmap(iova: bigint, size: bigint, all = false): void {
    if (all) {
      for (const r of this.ranges) release(r);
      this.ranges = [];
      return;
    }
    const i = this.ranges.findIndex((r) => r.iova === iova && r.size === size);
    if (i < 0) throw new VfioError(Errno.ENOENT, `no DMA mapping at ${hex(iova)}+${hex(size)}`);
    release(this.ranges[i]!);
    this.ranges.splice(i, 1);
  }

  /** The range wholly containing [iova, iova + length), if any. */
  find(iova: bigint, length: number): DmaRange | undefined {
    const end = iova + BigInt(length);
    return this.ranges.find((r) => iova >= r.iova && end <= r.iova + r.size);
  }

  /** Counts `p` (device DMA by messages the device awaits itself) as in flight until it settles. */
  track<T>(p: Promise<T>): Promise<T> {
    const settled = p.then(
      () => {},
      () => {},
    );
    this.inFlight.add(settled);
    void settled.finally(() => this.inFlight.delete(settled));
    return p;
  }

  /** Waits until every message-based DMA write sent so far was acknowledged (or failed). */
  async flush(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }

  /** The port the device does its DMA through. */
  readonly port: DmaPort = {
    write: (iova, data) => {
      const r = this.find(iova, data.byteLength);
      if (!r?.writable) {
        this.fault(`DMA write of ${data.byteLength} bytes at ${hex(iova)}: ${r ? 'range is read-only' : 'not mapped'}`);
        return;
      }
      if (r.memory) {
        r.memory.set(data, Number(iova - r.iova));
        return;
      }
      if (!this.messageWriter) {
        this.fault(`DMA write at ${hex(iova)}: no way to reach message-based memory`);
        return;
      }
      this.stats.messageWrites++;
      const p = this.messageWriter(iova, data.slice()).catch((err: Error) =>
        this.fault(`DMA_WRITE at ${hex(iova)}: ${err.message}`),
      );
      this.inFlight.add(p);
      void p.finally(() => this.inFlight.delete(p));
    },
    congested: () => this.inFlight.size >= MAX_MESSAGE_DMA_IN_FLIGHT,
    read: (iova, length) => {
      const r = this.find(iova, length);
      if (!r?.readable || !r.memory) {
        this.fault(`DMA read of ${length} bytes at ${hex(iova)}: ${r ? 'not readable synchronously' : 'not mapped'}`);
        return new Uint8Array(length);
      }
      return r.memory.slice(Number(iova - r.iova), Number(iova - r.iova) + length);
    },
  };

  private fault(what: string): void {
    this.stats.faults++;
    this.lastFault = what;
  }
}

function release(r: DmaRange): void {
  if (r.memory) native().munmap(r.memory.buffer as ArrayBuffer);
  if (r.fd >= 0) native().close(r.fd);
}

function hex(v: bigint): string {
  return `0x${v.toString(16)}`;
}
