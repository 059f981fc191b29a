// The VMM's VFIO migration driver for a device that speaks the Linux 5.8 "v1" migration region (the role
// of QEMU 5.2–7.2's hw/vfio/migration.c, and of hw/vfio/common.c's container dirty tracking as vfio-user
// carries it): the 32-byte vfio_device_migration_info at the start of the region (TYPE 3 / SUBTYPE 1),
// changed with new = (old & mask) | value; the save loop (pending_bytes, data_offset, data_size, data),
// the resume loop (data_offset, data, data_size), the error state (reset), and dirty pages through
// vfio-user DIRTY_PAGES START/STOP/GET_BITMAP (cmd 14) at each log sync.
//
// Accesses are trapped (REGION_READ/WRITE), never mmapped: libvfio-user's sample fills the data section
// only when a trapped read asks for it, and wants each chunk read in one access of exactly data_size from
// the data section's start and written in one access; so a chunk is read and written whole whenever it
// fits one message (include/uapi/linux/vfio.h allows any split; this is the split every device accepts).

import { Errno } from '../../abi/errno.ts';
import { fieldNamed, readField, writeField } from '../../abi/fields.ts';
import {
  DeviceState,
  deviceStateName,
  V1_MIGRATION_INFO,
  type V1Field,
  v1StateIsError,
  v1StateValid,
} from '../../abi/migration.ts';
import { asVfioError, VfioError } from '../../errors.ts';
import type { VfioUserClient } from '../../vfio-user/client.ts';
import type { MigrationRegionFound } from '../../vfio-user/region-port.ts';
import type { DirtyBitmapSink } from '../guest/dirty-bitmap.ts';
import { noTrace, type Tracer } from '../trace.ts';
import { FAILED_STATUSES } from './config-space.ts';
import { syncDirtyRanges } from './dirty-sync.ts';
import type { DeviceDataSink, DmaRangeRef, VfioMigrationDriver } from './driver.ts';
import { MigrationDriverBase } from './driver-base.ts';
import { dataPath, named } from './driver-errors.ts';
import { readAhead } from './read-ahead.ts';

const { RUNNING, SAVING, RESUMING, MASK } = DeviceState;
const DIRTY_PAGE_SIZE = 4096n;

export class V1MigrationDriver extends MigrationDriverBase implements VfioMigrationDriver {
  readonly flavor = 'v1' as const;
  private logging = false;
  /** Trapped chunks are read into this buffer, reused from chunk to chunk. */
  private chunkBuffer = new Uint8Array(0);
  private readonly size: bigint;
  private readonly index: number;

  private constructor(name: string, client: VfioUserClient, found: MigrationRegionFound, trace: Tracer) {
    super(name, client, trace);
    this.index = found.index;
    this.size = found.info.size;
  }

  /** vfio_migration_probe (v1): the region must hold at least the 32-byte register block. */
  static async open(
    client: VfioUserClient,
    name: string,
    found: MigrationRegionFound,
    trace: Tracer = noTrace,
  ): Promise<V1MigrationDriver> {
    if (found.info.size < BigInt(V1_MIGRATION_INFO.size)) {
      throw new VfioError(Errno.EINVAL, `${name}: migration region of ${found.info.size} bytes, too small`);
    }
    trace.event('vfio_migration_probe', { name, index: found.index });
    return new V1MigrationDriver(name, client, found, trace);
  }

  private async read(field: V1Field): Promise<bigint> {
    const f = fieldNamed(V1_MIGRATION_INFO, field);
    return readField(await this.client.regionRead(this.index, f.offset, f.width), 0, f.width);
  }

  private async write(field: V1Field, value: bigint): Promise<void> {
    const f = fieldNamed(V1_MIGRATION_INFO, field);
    const buf = new Uint8Array(f.width);
    writeField(buf, 0, f.width, value);
    await this.client.regionWrite(this.index, f.offset, buf);
  }

  async deviceState(): Promise<number> {
    return Number(await this.read('device_state'));
  }

  stateName(state: number): string {
    return deviceStateName(state);
  }

  /**
   * vfio_migration_set_state: new = (old & mask) | value, refused before writing when not VALID. An
   * unchanged state is not written (libvfio-user runs the device's transition callback on every accepted
   * write, and its sample re-arms a timer on RUNNING). A refused write is followed by a re-read: a device
   * left in the error state is reset (the only way out; QEMU v1 aborts the VM instead).
   */
  private async setState(mask: number, value: number): Promise<number> {
    const old = await named(this.name, this.deviceState(), 'reading device_state: ');
    const next = ((old & mask) | value) >>> 0;
    if (!v1StateValid(next)) {
      throw new VfioError(Errno.EINVAL, `${this.name}: device_state ${deviceStateName(next)} is not a valid request`);
    }
    if (next === old) return old;
    try {
      await this.write('device_state', BigInt(next));
    } catch (err) {
      const e = asVfioError(err);
      const failure = new VfioError(
        e.errno,
        `${this.name}: the device refused device_state ${deviceStateName(old)} -> ${deviceStateName(next)}: ${e.detail}`,
        { cause: err },
      );
      if (!this.lost) {
        const now = await this.deviceState().catch(() => -1);
        if (now < 0 || v1StateIsError(now)) {
          this.trace.event('vfio_migration_reset', { name: this.name, state: now });
          await this.client.reset().catch(() => {});
        }
      }
      throw failure;
    }
    this.trace.event('vfio_migration_set_state', { name: this.name, state: next });
    return next;
  }

  /** The run-state handler: the VM started → exactly RUNNING; the VM stopped → RUNNING cleared. */
  async vmStateChange(running: boolean, reason: string): Promise<void> {
    if (this.lost) return;
    const state = running ? await this.setState(~MASK, RUNNING) : await this.setState(~RUNNING, 0);
    this.trace.event('vfio_vmstate_change', {
      name: this.name,
      running: running ? 1 : 0,
      reason,
      dev_state: deviceStateName(state),
    });
  }

  /** On a cancelled or failed migration: SAVING and RESUMING cleared, RUNNING set. */
  async migrationStateNotifier(status: string): Promise<void> {
    this.trace.event('vfio_migration_state_notifier', { name: this.name, state: status });
    if (!FAILED_STATUSES.has(status) || this.lost) return;
    await this.stopLogging();
    await this.setState(~(SAVING | RESUMING), RUNNING);
    this.resetCounters();
  }

  /** save_setup: dirty logging starts (DIRTY_PAGES START, log_global_start), then SAVING is set. */
  async saveSetup(): Promise<void> {
    this.trace.event('vfio_save_setup', { name: this.name });
    this.resetCounters();
    if (!this.logging) {
      await named(this.name, this.client.dirtyPages('start'), 'DIRTY_PAGES START: ');
      this.logging = true;
    }
    await this.setState(MASK, SAVING);
  }

  private async stopLogging(): Promise<void> {
    if (!this.logging) return;
    this.logging = false;
    await this.client.dirtyPages('stop').catch(() => {});
  }

  async savePending(): Promise<bigint> {
    const pending = await named(this.name, this.read('pending_bytes'), 'reading pending_bytes: ');
    this.trace.event('vfio_save_pending', { name: this.name, precopy: pending, postcopy: 0, compatible: 0 });
    return pending;
  }

  /**
   * One buffer (vfio_save_buffer): data_offset makes the device prepare it, data_size says how much, then
   * the bytes, received straight into a buffer reused from chunk to chunk (a DeviceDataSink's view is
   * valid until it settles), in pieces of at most a message with several REGION_READs in flight. The next
   * pending_bytes read releases it. data_size is sent with data_offset, one round trip for the two (the
   * server answers in order, so it reads the buffer data_offset prepared); pending_bytes is not sent
   * ahead, since in v1 reading it says the last buffer has been consumed.
   */
  private async nextChunk(): Promise<Uint8Array> {
    const offsetRead = this.read('data_offset');
    const sizeRead = readAhead(this.read('data_size'));
    const offset = await offsetRead;
    const size = await sizeRead;
    if (offset < BigInt(V1_MIGRATION_INFO.size) || offset + size > this.size) {
      throw new VfioError(
        Errno.EIO,
        `device put ${size} data bytes at ${offset}, outside its ${this.size}-byte region`,
      );
    }
    if (size === 0n) return new Uint8Array(0);
    const n = Number(size);
    if (this.chunkBuffer.byteLength < n) this.chunkBuffer = new Uint8Array(n);
    const dest = this.chunkBuffer.subarray(0, n);
    await this.client.regionReadInto(this.index, offset, dest);
    return dest;
  }

  /** save_live_iterate: buffers while pending_bytes > 0, up to about `budget` bytes. */
  async saveIterate(budget: number, onData: DeviceDataSink): Promise<number> {
    const bytes = await dataPath(this.name, 'saving device data: ', onData, async (sink) => {
      let moved = 0;
      while (moved < budget && (await this.read('pending_bytes')) > 0n) {
        const chunk = await this.nextChunk();
        if (chunk.byteLength === 0) break;
        this.trace.event('vfio_save_buffer', { name: this.name, data_size: chunk.byteLength });
        await this.emitChunk(sink, chunk);
        moved += chunk.byteLength;
      }
      return moved;
    });
    if (bytes > 0) this.precopyRounds++;
    this.trace.event('vfio_save_iterate', { name: this.name, data_size: bytes });
    return bytes;
  }

  /**
   * save_live_complete_precopy: RUNNING cleared and SAVING set (stop-and-copy), buffers until
   * pending_bytes reads 0 (two empty buffers in a row while bytes are pending: the device is stuck), then
   * SAVING cleared.
   */
  async saveComplete(onData: DeviceDataSink): Promise<number> {
    await this.setState(~RUNNING, SAVING);
    const bytes = await dataPath(this.name, 'stop-and-copy: ', onData, async (sink) => {
      let moved = 0;
      let empty = 0;
      for (;;) {
        const pending = await this.read('pending_bytes');
        if (pending === 0n) return moved;
        const chunk = await this.nextChunk();
        if (chunk.byteLength === 0) {
          if (++empty > 1) throw new VfioError(Errno.EIO, `device reports ${pending} pending bytes but produces none`);
          continue;
        }
        empty = 0;
        await this.emitChunk(sink, chunk);
        moved += chunk.byteLength;
      }
    });
    await this.setState(~SAVING, 0);
    this.trace.event('vfio_save_complete_precopy', { name: this.name, bytes });
    return bytes;
  }

  /** save_cleanup: dirty logging stops (log_global_stop). */
  async saveCleanup(): Promise<void> {
    this.trace.event('vfio_save_cleanup', { name: this.name });
    if (!this.lost) await this.stopLogging();
  }

  /** load_setup: RESUMING alone. */
  async loadSetup(): Promise<void> {
    this.resetCounters();
    await this.setState(~MASK, RESUMING);
  }

  /**
   * One buffer, in stream order: data_offset says where, the bytes go in one access (split only when the
   * data section is smaller, as QEMU v1 does), and the data_size write makes the device consume them.
   */
  async loadData(data: Uint8Array): Promise<void> {
    this.trace.event('vfio_load_state_device_data', { name: this.name, data_size: data.byteLength });
    await named(
      this.name,
      (async () => {
        let at = 0;
        while (at < data.byteLength) {
          const offset = await this.read('data_offset');
          const room = this.size - offset;
          if (offset < BigInt(V1_MIGRATION_INFO.size) || room <= 0n) {
            throw new VfioError(Errno.EIO, `device offers data_offset ${offset} in its ${this.size}-byte region`);
          }
          const n = Math.min(Number(room), data.byteLength - at);
          await this.client.regionWrite(this.index, offset, data.subarray(at, at + n));
          await this.write('data_size', BigInt(n));
          at += n;
        }
      })(),
      'loading device data: ',
    );
    this.countLoaded(data.byteLength);
  }

  /**
   * The stream is complete. v1 has no validating step of its own: a device goes from RESUMING straight to
   * RUNNING when the VM starts (libvfio-user v1 refuses RESUMING → STOP), so the data was checked as each
   * data_size write consumed it.
   */
  async loadFinish(): Promise<void> {
    this.trace.event('vfio_load_cleanup', { name: this.name });
  }

  /**
   * A log sync (vfio_get_dirty_bitmap): DIRTY_PAGES GET_BITMAP (read and clear) for each mapped range,
   * merged into `sink`. A failed query leaves the log unknown: the range is marked dirty, the error thrown.
   */
  async dirtySync(ranges: readonly DmaRangeRef[], sink: DirtyBitmapSink, pageSize = DIRTY_PAGE_SIZE): Promise<bigint> {
    if (!this.logging) return 0n;
    const o = { name: this.name, trace: this.trace, what: 'DIRTY_PAGES GET_BITMAP' };
    return syncDirtyRanges(o, ranges, sink, pageSize, (r) =>
      this.client.dirtyPages('get-bitmap', { iova: r.iova, size: r.size, pgsize: pageSize }),
    );
  }
}
