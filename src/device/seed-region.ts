// The seed protocol's migration region, as a device's driver implements it: the 64-byte header of the
// June 2019 draft (device_state, pending_bytes, data_offset, data_size, and the dirty-page fields start_pfn,
// page_size, total_pfns, copied_pfns) in front of a data section that is either trapped (every access goes
// through read/write here) or mmapped (the client reads and writes the section's memory directly).
//
// Access dispatch (bounds, header fields, the gap) is region-access.ts, shared with the v1 region; this
// class holds the seed's field values and rules. Every rule it enforces is written in docs/migration-region.md.

import { Errno } from '../abi/errno.ts';
import {
  DeviceState,
  DIRTY_PFNS_ALL,
  DIRTY_PFNS_NONE,
  SEED_MIGRATION_INFO,
  type SeedField,
  deviceStateName as stateName,
} from '../abi/migration.ts';
import { asVfioError, einval, VfioError } from '../errors.ts';
import type { MigrationBackend } from './backend.ts';
import { LOG_PAGE_SIZE } from './dirty-log.ts';
import { MigrationRegionAccess } from './region-access.ts';
import { computeRegionLayout, type DataSectionKind, REGION_PAGE_SIZE, type RegionLayout } from './region-layout.ts';
import { seedTransitionAllowed } from './seed-state-table.ts';

export interface SeedRegionOptions {
  backend: MigrationBackend;
  kind: DataSectionKind;
  /** Room for one chunk of device data (default 1 MiB). */
  dataSize?: number;
  /** Room for one dirty-bitmap chunk (default 64 KiB = 524288 pfns per chunk). */
  bitmapSize?: number;
  /**
   * Memory backing the data section (bitmap area + data area), `size - sectionOffset` bytes. A server
   * passes an mmap of a memfd here so that the client can map the same pages; by default it is allocated.
   */
  sectionMemory?: Uint8Array;
}

/** What data_offset currently points at, and so what data_size reports. */
type Piece = { kind: 'none' } | { kind: 'data'; size: number } | { kind: 'bitmap'; bytes: number };

const MAX_U64 = (1n << 64n) - 1n;

/** The layout a region with these options gets (a server needs it to size the memfd it backs it with). */
export function seedRegionLayout(options: Pick<SeedRegionOptions, 'kind' | 'dataSize' | 'bitmapSize'>): RegionLayout {
  return computeRegionLayout({
    kind: options.kind,
    headerSize: SEED_MIGRATION_INFO.size,
    bitmapSize: options.bitmapSize ?? 64 * 1024,
    dataSize: options.dataSize ?? 1024 * 1024,
  });
}

/**
 * A data area of at least this many bytes is double-buffered while saving: the device produces the next
 * chunk into one half while the VMM copies the last one out of the other (mmapped), or while the server
 * sends it (trapped: REGION_READ replies lent from the chunk); smaller areas would cost more register
 * round trips per byte than the overlap gains.
 */
const DOUBLE_BUFFER_MIN = 256 * 1024;
/**
 * Bytes produced ahead per turn of the event loop: small enough that a trapped server keeps its socket
 * fed between slices (the kernel takes a reply a socket buffer at a time, and each time the server must
 * be free to write the next part), large enough that a slice costs more than its turn.
 */
const AHEAD_SLICE = 1 << 20;

/** The data section here is the bitmap area, then the data area. */
export class SeedMigrationRegion extends MigrationRegionAccess<SeedField> {
  private readonly backend: MigrationBackend;

  private deviceState: number = DeviceState.RUNNING;
  private piece: Piece = { kind: 'none' };
  /** Bytes of the last produced chunk the user has not yet released (by reading data_offset again). */
  private unconsumed = 0;
  /** A bitmap chunk was copied by a copied_pfns read and data_offset has not yet pointed at it. */
  private bitmapWaiting = false;
  private bitmapBytes = 0;

  // Double buffering (saving): which half holds the chunk at data_offset, the chunk produced ahead into
  // the other half once the VMM read data_size (it copies or reads the chunk then), a slice per turn of
  // the event loop until the half is full or the device has no more for now (`done`), or the error that
  // production met, reported at the next data_offset read as the device's own.
  private readonly doubleBuffered: boolean;
  private half = 0;
  private ahead: { half: number; size: number; done: boolean } | null = null;
  private aheadTask: NodeJS.Immediate | null = null;
  private aheadError: unknown = null;

  // Dirty-page query: the three sticky write-only fields, and where the next copied_pfns read resumes.
  private startPfn = 0n;
  private pageSize = BigInt(LOG_PAGE_SIZE);
  private totalPfns = 0n;
  private cursor = 0n;

  constructor(options: SeedRegionOptions) {
    super(seedRegionLayout(options), SEED_MIGRATION_INFO, options.sectionMemory);
    this.backend = options.backend;
    this.doubleBuffered = this.layout.dataSize >= DOUBLE_BUFFER_MIN;
  }

  /**
   * Device reset: back to RUNNING with no save or resume session and no dirty logging, as the v1-era
   * libvfio-user does. The device backend resets itself; this only resets the region's own state.
   */
  reset(): void {
    this.backend.dirtyLog?.stop();
    this.endSession();
    this.deviceState = DeviceState.RUNNING;
  }

  /** The current device_state (bits 0-2; bits 3-31 always read 0 on this device). */
  get state(): number {
    return this.deviceState;
  }

  /** The chunk at data_offset: its bytes change only when the next data_offset read or a state write moves on. */
  protected isStableChunk(offset: number, length: number): boolean {
    if (this.piece.kind !== 'data') return false;
    const start = this.chunkOffset();
    return offset >= start && offset + length <= start + this.piece.size;
  }

  /** Where the chunk handed out now starts (double buffered: in the half that holds it). */
  private chunkOffset(): number {
    return this.layout.dataOffset + (this.doubleBuffered ? this.half * this.halfArea(0).byteLength : 0);
  }

  /** The bitmap area is read-only; the data area is writable only while resuming. */
  protected checkSection(offset: number, _length: number, what: 'read' | 'write'): void {
    if (what === 'read') return;
    const inBitmap = offset < this.layout.dataOffset;
    if (inBitmap || this.deviceState !== DeviceState.RESUMING) {
      throw einval(
        inBitmap
          ? 'the dirty bitmap area is read-only'
          : `the data section is writable only while resuming (device is ${stateName(this.deviceState)})`,
      );
    }
  }

  protected readValue(name: SeedField): bigint {
    switch (name) {
      case 'device_state':
        return BigInt(this.deviceState);
      case 'pending_bytes':
        // Pure: the chunk at data_offset still counts until the user moves on to the next one.
        // A chunk produced ahead is no longer the backend's, and not yet handed out: it counts too.
        return this.isSaving()
          ? BigInt(this.safeBackend(() => this.backend.pendingBytes()) + this.unconsumed + (this.ahead?.size ?? 0))
          : 0n;
      case 'data_offset':
        return BigInt(this.nextDataOffset());
      case 'data_size':
        if (!this.isSaving())
          throw einval(`data_size is readable only while saving (device is ${stateName(this.deviceState)})`);
        this.produceAheadSoon();
        return BigInt(
          this.piece.kind === 'data' ? this.piece.size : this.piece.kind === 'bitmap' ? this.piece.bytes : 0,
        );
      case 'copied_pfns':
        return this.copyDirtyBitmap();
      default:
        throw einval(`${name} is write-only`);
    }
  }

  protected writeValue(name: SeedField, value: bigint): void {
    switch (name) {
      case 'device_state':
        this.setDeviceState(Number(value));
        return;
      case 'data_size':
        this.consumeWritten(value);
        return;
      case 'start_pfn':
        this.startPfn = value;
        this.cursor = value;
        return;
      case 'page_size':
        if (value < BigInt(LOG_PAGE_SIZE) || (value & (value - 1n)) !== 0n) {
          throw einval(`page_size ${value} must be a power of two of at least ${LOG_PAGE_SIZE}`);
        }
        this.pageSize = value;
        this.cursor = this.startPfn;
        return;
      case 'total_pfns':
        this.totalPfns = value;
        this.cursor = this.startPfn;
        return;
      default:
        throw einval(`${name} is read-only`);
    }
  }

  private isSaving(): boolean {
    return (this.deviceState & DeviceState.SAVING) !== 0;
  }

  private setDeviceState(requested: number): void {
    // The device implements bits 0-2 only; bits 3-31 read 0, so a read-modify-write keeps them 0. A write
    // that sets them is refused rather than silently dropped.
    if ((requested & ~DeviceState.MASK) !== 0) {
      throw einval(`device_state ${hex(requested)} sets bits outside the state mask ${hex(DeviceState.MASK)}`);
    }
    const from = this.deviceState;
    const to = requested & DeviceState.MASK;
    if (!seedTransitionAllowed(from, to)) {
      throw einval(`device_state ${stateName(from)} -> ${stateName(to)} is not allowed`);
    }
    if (from === to) return;
    const wasSaving = (from & DeviceState.SAVING) !== 0;
    const willSave = (to & DeviceState.SAVING) !== 0;
    // Start dirty logging before the device can see SAVING, so no DMA falls between the two.
    if (!wasSaving && willSave) this.backend.dirtyLog?.start();
    try {
      this.backend.transition(from, to);
    } catch (err) {
      if (!wasSaving && willSave) this.backend.dirtyLog?.stop();
      throw asVfioError(err, Errno.EIO);
    }
    this.deviceState = to;
    if (wasSaving && !willSave) {
      this.backend.dirtyLog?.stop();
      this.endSession();
    }
    if (to === DeviceState.RESUMING || from === DeviceState.RESUMING) this.endSession();
  }

  private endSession(): void {
    this.piece = { kind: 'none' };
    this.unconsumed = 0;
    this.bitmapWaiting = false;
    this.cancelAhead();
    this.ahead = null;
    this.aheadError = null;
    this.half = 0;
  }

  /** The data_offset read: points at a waiting bitmap chunk, or releases the last chunk and produces the next. */
  private nextDataOffset(): number {
    if (this.bitmapWaiting) {
      this.bitmapWaiting = false;
      this.piece = { kind: 'bitmap', bytes: this.bitmapBytes };
      return this.layout.bitmapOffset;
    }
    if (this.isSaving()) {
      this.unconsumed = 0;
      this.piece = { kind: 'none' };
      if (!this.doubleBuffered) {
        this.unconsumed = this.produceInto(this.dataArea());
        this.piece = { kind: 'data', size: this.unconsumed };
        return this.layout.dataOffset;
      }
      // Not produced yet, or not all of it (data_size was not read, or the slices' turns have not all
      // come): the rest now, in one call, as the chunk would have been produced without double buffering.
      this.cancelAhead();
      if (this.aheadError !== null) {
        const err = this.aheadError;
        this.aheadError = null;
        throw asVfioError(err, Errno.EIO);
      }
      const next = this.ahead ?? { half: 1 - this.half, size: 0, done: false };
      if (!next.done) next.size += this.produceInto(this.halfArea(next.half).subarray(next.size));
      this.ahead = null;
      this.half = next.half;
      this.unconsumed = next.size;
      this.piece = { kind: 'data', size: next.size };
      return this.chunkOffset();
    }
    if (this.deviceState === DeviceState.RESUMING) return this.layout.dataOffset;
    throw einval(`data_offset has no data while the device is ${stateName(this.deviceState)}`);
  }

  /** The backend's next chunk into `area`, its size checked. */
  private produceInto(area: Uint8Array): number {
    const n = this.safeBackend(() => this.backend.produce(area));
    if (!Number.isSafeInteger(n) || n < 0 || n > area.byteLength) {
      throw new VfioError(Errno.EIO, `device produced an impossible chunk size ${n}`);
    }
    return n;
  }

  /**
   * Double-buffered: the VMM read data_size, so it copies (or reads) the chunk now; the next one is
   * produced into the other half from the device's next turn of the event loop (after this reply went
   * out), AHEAD_SLICE bytes a turn, so the two overlap and a trapped server still answers its socket in
   * between. Nothing is produced ahead of an empty chunk (pre-copy: nothing ready; stop-and-copy: the
   * end). produce() is asked for the same bytes in the same order as without double buffering, only
   * earlier and in slices: a slice it fills only in part (nothing more for now) ends the chunk, and it is
   * not asked again for that chunk.
   */
  private produceAheadSoon(): void {
    if (!this.doubleBuffered || this.piece.kind !== 'data' || this.piece.size === 0) return;
    if (this.ahead || this.aheadTask || this.aheadError !== null) return;
    const ahead = { half: 1 - this.half, size: 0, done: false };
    this.ahead = ahead;
    const step = () => {
      this.aheadTask = null;
      if (!this.isSaving() || this.ahead !== ahead) return;
      const area = this.halfArea(ahead.half);
      const slice = area.subarray(ahead.size, Math.min(area.byteLength, ahead.size + AHEAD_SLICE));
      try {
        const n = this.produceInto(slice);
        ahead.size += n;
        ahead.done = n < slice.byteLength || ahead.size === area.byteLength;
      } catch (err) {
        this.ahead = null;
        this.aheadError = err;
        return;
      }
      if (!ahead.done) this.aheadTask = setImmediate(step);
    };
    this.aheadTask = setImmediate(step);
  }

  private cancelAhead(): void {
    if (this.aheadTask) clearImmediate(this.aheadTask);
    this.aheadTask = null;
  }

  /** One half of the data area (double buffering), each starting on a page as the mmapped area does. */
  private halfArea(half: number): Uint8Array {
    const area = this.dataArea();
    const size = Math.floor(area.byteLength / 2 / REGION_PAGE_SIZE) * REGION_PAGE_SIZE;
    return area.subarray(half * size, (half + 1) * size);
  }

  /** The data_size write while resuming: the device consumes exactly that many bytes from data_offset. */
  private consumeWritten(size: bigint): void {
    if (this.deviceState !== DeviceState.RESUMING) {
      throw einval(`data_size is writable only while resuming (device is ${stateName(this.deviceState)})`);
    }
    if (size > BigInt(this.layout.dataSize)) {
      throw einval(`data_size ${size} exceeds the ${this.layout.dataSize}-byte data area`);
    }
    const chunk = this.dataArea().subarray(0, Number(size));
    this.safeBackend(() => this.backend.consume(chunk), Errno.EINVAL);
  }

  private dataArea(): Uint8Array {
    const start = this.layout.dataOffset - this.layout.sectionOffset;
    return this.sectionMemory.subarray(start, start + this.layout.dataSize);
  }

  /**
   * The copied_pfns read. Scans from the cursor to the end of the queried range: none dirty -> 0, all dirty
   * -> all-ones (both finish the round and clear what they covered); otherwise copies as many pfns as the
   * bitmap area holds to it, clears them, advances the cursor and returns the count. A read after the
   * round finished starts a new round over the same (sticky) range.
   */
  private copyDirtyBitmap(): bigint {
    const log = this.backend.dirtyLog;
    if (!this.isSaving() || (log && !log.isTracking)) {
      throw einval(`dirty pages are tracked only while saving (device is ${stateName(this.deviceState)})`);
    }
    const end = this.startPfn + this.totalPfns;
    if (end > MAX_U64 || end * this.pageSize > MAX_U64 + 1n) {
      throw einval(`pfn range ${this.startPfn}+${this.totalPfns} at page size ${this.pageSize} overflows 64 bits`);
    }
    // A device without a dirty log does no DMA (backend.ts): it never dirties a page.
    if (!log) return DIRTY_PFNS_NONE;
    if (this.cursor >= end) this.cursor = this.startPfn;
    const remaining = end - this.cursor;
    if (remaining === 0n) return DIRTY_PFNS_NONE;
    const pagesPerPfn = Number(this.pageSize / BigInt(LOG_PAGE_SIZE));
    const firstPage = Number(this.cursor) * pagesPerPfn;
    const rest = { firstPage, pagesPerPfn, count: Number(remaining) };
    const dirty = log.countDirtyPfns(rest);
    if (dirty === 0) {
      this.cursor = end;
      return DIRTY_PFNS_NONE;
    }
    if (dirty === rest.count) {
      log.clear(rest);
      this.cursor = end;
      return DIRTY_PFNS_ALL;
    }
    const capacity = this.layout.bitmapSize * 8;
    const count = Math.min(rest.count, capacity);
    const bitmap = this.sectionMemory.subarray(
      this.layout.bitmapOffset - this.layout.sectionOffset,
      this.layout.bitmapOffset - this.layout.sectionOffset + this.layout.bitmapSize,
    );
    log.readAndClear({ firstPage, pagesPerPfn, count }, bitmap);
    this.cursor += BigInt(count);
    this.bitmapWaiting = true;
    this.bitmapBytes = Math.ceil(count / 8);
    return BigInt(count);
  }

  /** Runs device code; anything it throws reaches the VMM as a VfioError, never as an unhandled exception. */
  private safeBackend<T>(fn: () => T, errno: number = Errno.EIO): T {
    try {
      return fn();
    } catch (err) {
      throw asVfioError(err, errno);
    }
  }
}

function hex(n: number): string {
  return `0x${(n >>> 0).toString(16)}`;
}
