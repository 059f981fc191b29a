// The VMM's VFIO migration driver for a device that speaks the seed's 2019 region (the role of QEMU's
// hw/vfio/migration.c in the series the seed opens): the migration region's data section mapped when the
// device offers that; a VM run-state handler that sets or clears RUNNING; a migration-state notifier that
// returns the device to RUNNING when a migration is cancelled or fails; the save and load steps; and the
// dirty-page query through the region at each log sync. Stream framing is not done here: the migration
// handler (../migration/vfio-handler.ts) turns these steps into stream sections.

import { Errno } from '../../abi/errno.ts';
import { DeviceState, deviceStateName } from '../../abi/migration.ts';
import { VfioError } from '../../errors.ts';
import type { VfioUserClient } from '../../vfio-user/client.ts';
import { type MigrationRegionFound, openRegionPort, type VfioRegionPort } from '../../vfio-user/region-port.ts';
import type { DirtyBitmapSink } from '../guest/dirty-bitmap.ts';
import { noTrace, type Tracer } from '../trace.ts';
import { FAILED_STATUSES } from './config-space.ts';
import type { DeviceDataSink, DmaRangeRef, VfioMigrationDriver } from './driver.ts';
import { MigrationDriverBase } from './driver-base.ts';
import { dataPath, named } from './driver-errors.ts';
import { SeedRegionClient } from './seed-region-client.ts';

const { RUNNING, SAVING, RESUMING, MASK } = DeviceState;

/** A chunk here is one data_offset/data_size/data round on the region. */
export class SeedMigrationDriver extends MigrationDriverBase implements VfioMigrationDriver {
  readonly flavor = 'seed' as const;
  private lastRunning: boolean | null = null;

  private constructor(
    name: string,
    client: VfioUserClient,
    readonly port: VfioRegionPort,
    readonly region: SeedRegionClient,
    trace: Tracer,
  ) {
    super(name, client, trace);
  }

  /** Opens the driver on the migration region discovery found (vfio_migration_probe, seed flavor). */
  static async open(
    client: VfioUserClient,
    name: string,
    found: MigrationRegionFound,
    trace: Tracer = noTrace,
  ): Promise<SeedMigrationDriver> {
    if (found.info.size === 0n) throw new VfioError(Errno.EINVAL, `${name}: zero-sized migration region`);
    const port = await openRegionPort(client, found.index);
    trace.event('vfio_migration_probe', { name, index: found.index });
    return new SeedMigrationDriver(name, client, port, new SeedRegionClient(port), trace);
  }

  private named<T>(p: Promise<T>, what = ''): Promise<T> {
    return named(this.name, p, what);
  }

  private dataPath<T>(
    what: string,
    onData: DeviceDataSink,
    run: (sink: (chunk: Uint8Array) => Promise<void>) => Promise<T>,
  ): Promise<T> {
    return dataPath(this.name, what, onData, run);
  }

  async deviceState(): Promise<number> {
    return this.region.deviceState();
  }

  stateName(state: number): string {
    return deviceStateName(state);
  }

  /** new = (old & mask) | value, as vfio_migration_set_state does. */
  private async setState(mask: number, value: number): Promise<number> {
    const state = await this.named(this.region.setDeviceState(mask, value));
    this.trace.event('vfio_migration_set_state', { name: this.name, state });
    return state;
  }

  /**
   * The VM run-state change handler: the VM started → the device runs (from resuming, stopped or
   * stop-and-copy); the VM stopped → RUNNING cleared (pre-copy becomes stop-and-copy). Skipped when the
   * running flag did not change, as QEMU v1 does.
   */
  async vmStateChange(running: boolean, reason: string): Promise<void> {
    // A lost device has no state to change; the VM still stops and runs (without it).
    if (this.lastRunning === running || this.lost) return;
    const state = running ? await this.setState(~MASK, RUNNING) : await this.setState(~RUNNING, 0);
    this.lastRunning = running;
    this.trace.event('vfio_vmstate_change', {
      name: this.name,
      running: running ? 1 : 0,
      reason,
      dev_state: deviceStateName(state),
    });
  }

  /**
   * The migration state notifier: when a migration is cancelled or fails, the device goes back to
   * RUNNING (SAVING and RESUMING cleared) so the source carries on with its device state intact.
   */
  async migrationStateNotifier(status: string): Promise<void> {
    this.trace.event('vfio_migration_state_notifier', { name: this.name, state: status });
    if (!FAILED_STATUSES.has(status)) return;
    await this.setState(~(SAVING | RESUMING), RUNNING);
    this.lastRunning = true;
    this.resetCounters();
  }

  /**
   * save_setup: SAVING set (running → pre-copy, stopped → stop-and-copy). A device still SAVING from an
   * earlier migration (whose notifier could not end the session: the device refused to return to
   * running) first has that session ended, else setting SAVING again would change nothing and this
   * migration would go on from where the old one stopped, without the data that one already sent.
   */
  async saveSetup(): Promise<void> {
    this.trace.event('vfio_save_setup', { name: this.name });
    this.resetCounters();
    const state = await this.named(this.region.deviceState(), 'reading device_state: ');
    if (state & SAVING) {
      this.trace.event('vfio_save_setup_stale_session', { name: this.name, state: deviceStateName(state) });
      await this.setState(~SAVING, 0);
    }
    await this.setState(MASK, SAVING);
  }

  /** save_live_pending: pending_bytes as the device reports it. */
  async savePending(): Promise<bigint> {
    const pending = await this.region.pendingBytes();
    this.trace.event('vfio_save_pending', { name: this.name, precopy: pending, postcopy: 0, compatible: 0 });
    return pending;
  }

  /**
   * save_live_iterate: chunks while pending, up to `budget` bytes. `onData` gets each chunk (a view valid
   * until it settles). Returns the bytes moved.
   */
  async saveIterate(budget: number, onData: DeviceDataSink): Promise<number> {
    // Counted per chunk, so query-migrate shows device data moving during a long pass.
    const r = await this.dataPath('saving device data: ', onData, (sink) =>
      this.region.iterate(budget, async (chunk) => {
        this.trace.event('vfio_save_buffer', { name: this.name, data_size: chunk.byteLength });
        await this.emitChunk(sink, chunk);
      }),
    );
    if (r.bytes > 0) this.precopyRounds++;
    this.trace.event('vfio_save_iterate', { name: this.name, data_size: r.bytes });
    return r.bytes;
  }

  /**
   * save_live_complete_precopy: the device is stopped and saving (RUNNING cleared, SAVING kept); drain
   * until pending_bytes is 0, then clear SAVING.
   */
  async saveComplete(onData: DeviceDataSink): Promise<number> {
    await this.setState(~RUNNING, SAVING);
    const r = await this.dataPath('stop-and-copy: ', onData, (sink) =>
      this.region.drain(async (chunk) => {
        await this.emitChunk(sink, chunk);
      }),
    );
    await this.setState(~SAVING, 0);
    this.trace.event('vfio_save_complete_precopy', { name: this.name, bytes: r.bytes });
    return r.bytes;
  }

  /** The device's config space, sent as DEV_CONFIG_STATE. */
  /** load_setup: the destination device goes to RESUMING. */
  async loadSetup(): Promise<void> {
    this.resetCounters();
    await this.setState(~MASK, RESUMING);
  }

  /** One DEV_DATA_STATE block, in stream order. */
  async loadData(data: Uint8Array): Promise<void> {
    this.trace.event('vfio_load_state_device_data', { name: this.name, data_size: data.byteLength });
    await this.named(this.region.loadBuffer(data), 'loading device data: ');
    this.countLoaded(data.byteLength);
  }

  /**
   * The whole state has arrived: resuming → stopped, which makes the device validate it now (a bad or
   * incomplete state fails here, before the destination tells the source it is ready). The VM start
   * then takes the device from stopped to running.
   */
  async loadFinish(): Promise<void> {
    await this.setState(~MASK, 0);
    this.trace.event('vfio_load_cleanup', { name: this.name });
  }

  /** DEV_CONFIG_STATE: restore what the driver may write (command register, BARs). */
  /**
   * A log sync: pulls the device's dirty bitmap for every DMA-mapped range (vfio_get_dirty_page_list)
   * into `sink`. Only meaningful while the device is SAVING; returns the number of dirty pfns reported.
   */
  async dirtySync(ranges: readonly DmaRangeRef[], sink: DirtyBitmapSink, pageSize = 4096n): Promise<bigint> {
    let total = 0n;
    for (const r of ranges) {
      const res = await this.region.dirtyBitmap(r.iova / pageSize, pageSize, r.size / pageSize, sink);
      this.trace.event('vfio_get_dirty_page_list', {
        name: this.name,
        start: r.iova / pageSize,
        pfn_count: r.size / pageSize,
        page_size: pageSize,
        dirty: res.dirtyPfns,
        reads: res.reads,
      });
      total += res.dirtyPfns;
    }
    return total;
  }

  override close(): void {
    super.close();
    this.port.close();
  }
}
