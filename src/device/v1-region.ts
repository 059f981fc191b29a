// The Linux 5.8 ("v1") migration region as libvfio-user's v1 era serves it (lib/migration.c at 1569a37a;
// include/uapi/linux/vfio.h, 5.8): the 32-byte vfio_device_migration_info in a register area rounded up
// to a page, then the data section, trapped or mmapped. Dirty pages are not in the region any more: the
// vfio-user DIRTY_PAGES command reports them (v1-dirty-pages.ts).
//
// The save iteration is libvfio-user's FSM: INITIAL -> STARTED (pending_bytes read, > 0) -> DATA_PREPARED
// (data_offset read produced a buffer) -> pending_bytes read again (consumes it) ... -> FINISHED (pending
// read 0; every later read is 0 until the next state write). Every accepted state write restarts it.
// A refused transition (the device throws EINVAL) keeps the state, as libvfio-user does; any other device
// failure is internal and leaves the region in the error state 6, which only reset() leaves (5.8 header).
// Every rule here is written in docs/migration-region-v1.md.

import { Errno } from '../abi/errno.ts';
import { DeviceState, deviceStateName, V1_MIGRATION_INFO, type V1Field } from '../abi/migration.ts';
import { asVfioError, einval, VfioError } from '../errors.ts';
import type { MigrationBackend } from './backend.ts';
import { MigrationRegionAccess } from './region-access.ts';
import { computeRegionLayout, type DataSectionKind, REGION_PAGE_SIZE, type RegionLayout } from './region-layout.ts';
import { V1_ERROR_STATE, v1TransitionAllowed } from './v1-state-table.ts';

export interface V1RegionOptions {
  backend: MigrationBackend;
  kind: DataSectionKind;
  /** Room for one chunk of device data (default 1 MiB). */
  dataSize?: number;
  /** Memory backing the data section (`size - sectionOffset` bytes), e.g. an mmap of a memfd. */
  sectionMemory?: Uint8Array;
}

/** libvfio-user's save iteration states (VFIO_USER_MIGR_ITER_STATE_*). */
type Iteration = 'initial' | 'started' | 'data-prepared' | 'finished';

/** The layout of a v1 region: the register area is one page (vfu_get_migr_register_area_size). */
export function v1RegionLayout(options: Pick<V1RegionOptions, 'kind' | 'dataSize'>): RegionLayout {
  return computeRegionLayout({
    kind: options.kind,
    headerSize: REGION_PAGE_SIZE,
    bitmapSize: 0,
    dataSize: options.dataSize ?? 1024 * 1024,
  });
}

export class V1MigrationRegion extends MigrationRegionAccess<V1Field> {
  private readonly backend: MigrationBackend;
  private deviceState: number = DeviceState.RUNNING;
  private iteration: Iteration = 'initial';
  private pending = 0;
  /** Size of the buffer the last data_offset read prepared (libvfio-user's iter.size). */
  private size = 0;

  constructor(options: V1RegionOptions) {
    super(v1RegionLayout(options), V1_MIGRATION_INFO, options.sectionMemory);
    this.backend = options.backend;
  }

  get state(): number {
    return this.deviceState;
  }

  /** Device reset: running, a fresh iteration; the only way out of the error state. */
  reset(): void {
    this.deviceState = DeviceState.RUNNING;
    this.restartIteration();
  }

  /** Data section accesses: reads only while saving, writes only while resuming (libvfio-user's rule). */
  protected checkSection(_offset: number, _length: number, what: 'read' | 'write'): void {
    const ok = what === 'read' ? this.isSaving() : this.deviceState === DeviceState.RESUMING;
    if (!ok) {
      throw einval(
        `the data section is ${what === 'read' ? 'readable only while saving' : 'writable only while resuming'} (device is ${this.stateName()})`,
      );
    }
  }

  /** The buffer the last data_offset read prepared: the next pending_bytes read or state write moves on. */
  protected isStableChunk(offset: number, length: number): boolean {
    const start = this.layout.dataOffset;
    return this.iteration === 'data-prepared' && offset >= start && offset + length <= start + this.size;
  }

  private isSaving(): boolean {
    return this.deviceState === DeviceState.SAVING || this.deviceState === (DeviceState.SAVING | DeviceState.RUNNING);
  }

  private stateName(): string {
    return this.deviceState === V1_ERROR_STATE ? 'error' : deviceStateName(this.deviceState);
  }

  protected readValue(name: V1Field): bigint {
    switch (name) {
      case 'device_state':
        return BigInt(this.deviceState);
      case 'pending_bytes':
        return BigInt(this.readPending());
      case 'data_offset':
        return BigInt(this.readDataOffset());
      case 'data_size':
        if (this.deviceState === DeviceState.RESUMING) return 0n;
        if (!this.isSaving()) throw einval(`data_size has no meaning while the device is ${this.stateName()}`);
        if (this.iteration !== 'started' && this.iteration !== 'data-prepared') {
          throw einval('data_size read out of sequence (read pending_bytes, then data_offset)');
        }
        return BigInt(this.size);
      default:
        throw einval(`${name} is not readable`);
    }
  }

  protected writeValue(name: V1Field, value: bigint): void {
    switch (name) {
      case 'device_state':
        this.setDeviceState(Number(value));
        return;
      case 'data_size':
        this.consumeWritten(value);
        return;
      default:
        throw einval(`${name} is read-only`);
    }
  }

  /** pending_bytes: outside a save there is nothing pending (the backend is asked only while saving). */
  private readPending(): number {
    if (!this.isSaving()) return 0;
    switch (this.iteration) {
      case 'finished':
        return 0;
      case 'started':
        return this.pending;
      default: {
        // initial, or after a buffer: this read consumes the buffer and starts the next iteration.
        const n = this.device(() => this.backend.pendingBytes());
        if (!Number.isSafeInteger(n) || n < 0) this.fail(`device reported impossible pending bytes ${n}`);
        this.pending = n;
        this.iteration = n === 0 ? 'finished' : 'started';
        return n;
      }
    }
  }

  private readDataOffset(): number {
    if (this.deviceState === DeviceState.RESUMING) return this.layout.dataOffset;
    if (!this.isSaving()) throw einval(`data_offset has no data while the device is ${this.stateName()}`);
    if (this.iteration === 'data-prepared') return this.layout.dataOffset; // invariant within an iteration
    if (this.iteration !== 'started') throw einval('data_offset read out of sequence (read pending_bytes first)');
    const area = this.dataArea();
    const n = this.device(() => this.backend.produce(area));
    if (!Number.isSafeInteger(n) || n < 0 || n > area.byteLength)
      this.fail(`device produced an impossible chunk size ${n}`);
    this.size = n;
    this.iteration = 'data-prepared';
    return this.layout.dataOffset;
  }

  private consumeWritten(size: bigint): void {
    if (this.deviceState !== DeviceState.RESUMING) {
      throw einval(`data_size is writable only while resuming (device is ${this.stateName()})`);
    }
    if (size > BigInt(this.layout.dataSize)) {
      throw einval(`data_size ${size} exceeds the ${this.layout.dataSize}-byte data area`);
    }
    const chunk = this.dataArea().subarray(0, Number(size));
    this.device(() => this.backend.consume(chunk));
  }

  private setDeviceState(requested: number): void {
    // Bits 3-31 are reserved; this device implements none, so a write setting them is refused.
    if ((requested & ~DeviceState.MASK) !== 0) {
      throw einval(`device_state 0x${(requested >>> 0).toString(16)} sets reserved bits`);
    }
    const from = this.deviceState;
    const to = requested;
    if (!v1TransitionAllowed(from, to)) {
      throw einval(`device_state ${this.stateName()} -> ${deviceStateName(to)} is not allowed`);
    }
    if (from !== to) this.device(() => this.backend.transition(from, to));
    this.deviceState = to;
    this.restartIteration();
  }

  private restartIteration(): void {
    this.iteration = 'initial';
    this.pending = 0;
    this.size = 0;
  }

  private dataArea(): Uint8Array {
    const start = this.layout.dataOffset - this.layout.sectionOffset;
    return this.sectionMemory.subarray(start, start + this.layout.dataSize);
  }

  /**
   * Runs device code. A VfioError carrying EINVAL is the device refusing the request: the state stays.
   * Anything else is an internal failure: the region enters the error state (5.8: "the driver reports
   * ... the error state after an internal failure") and the caller gets EIO.
   */
  private device<T>(fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      if (err instanceof VfioError && err.errno === Errno.EINVAL) throw err;
      this.deviceState = V1_ERROR_STATE;
      this.restartIteration();
      throw asVfioError(err, Errno.EIO);
    }
  }

  private fail(message: string): never {
    this.deviceState = V1_ERROR_STATE;
    this.restartIteration();
    throw new VfioError(Errno.EIO, message);
  }
}
