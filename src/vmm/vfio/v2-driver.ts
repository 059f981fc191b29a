// The VMM's VFIO migration driver for a device that speaks the Linux 5.18+ "v2" interface over vfio-user
// (the role of QEMU 8.1+'s hw/vfio/migration.c, and of hw/vfio/common.c's device dirty tracking): the
// MIG_DEVICE_STATE feature moved by the run-state handler, the migration-state notifier and the save/load
// steps; MIG_DATA_READ in pre-copy (when the device offers PRE_COPY and it is enabled for the device) and
// in stop-copy; MIG_DATA_WRITE on load; DMA_LOGGING_START/STOP/REPORT for the pages the device dirties.
// vfio-user has no data fd and no VFIO_MIG_GET_PRECOPY_INFO: a short MIG_DATA_READ is the only "nothing
// more now" signal (libvfio-user lib/migration.c).

import { Errno } from '../../abi/errno.ts';
import { FeatureId, MigrationFlag, MigState, migStateName } from '../../abi/migration-v2.ts';
import {
  decodeDmaLoggingReportReply,
  dmaLoggingBitmapSize,
  encodeDmaLoggingControl,
  encodeDmaLoggingReportRequest,
} from '../../abi/vfio-user/feature-dma-logging.ts';
import {
  decodeMigDataSizeData,
  decodeMigStateData,
  encodeMigStateData,
} from '../../abi/vfio-user/feature-migration.ts';
import { asVfioError, VfioError } from '../../errors.ts';
import type { VfioUserClient } from '../../vfio-user/client.ts';
import type { DirtyBitmapSink } from '../guest/dirty-bitmap.ts';
import { noTrace, type Tracer } from '../trace.ts';
import { FAILED_STATUSES, readConfigSpace } from './config-space.ts';
import { syncDirtyRanges } from './dirty-sync.ts';
import type { DeviceDataSink, DmaRangeRef, VfioMigrationDriver } from './driver.ts';
import { MigrationDriverBase } from './driver-base.ts';
import { dataPath, named, nameError } from './driver-errors.ts';
import { MigDataReader } from './mig-data-reader.ts';

/** QEMU reads at most 1 MiB of device data per read(); vfio-user caps it further at max_data_xfer_size. */
const READ_CHUNK = 1 << 20;
const DIRTY_PAGE_SIZE = 4096n;
/** The saving group: one transfer across these states (kernel uAPI vfio.h). */
const SAVING = new Set<number>([MigState.PRE_COPY, MigState.PRE_COPY_P2P, MigState.STOP_COPY]);

export interface V2DriverOptions {
  /**
   * Use PRE_COPY when the device offers it (default true). Off = stop-copy only, as cloud-hypervisor does
   * for every device: needed for devices that resume only the stop-copy data (libvfio-user's sample).
   */
  precopy?: boolean;
  /** The guest ranges DMA-mapped into the device, named in DMA_LOGGING_START (empty: "log everything"). */
  dmaRanges?: readonly DmaRangeRef[];
  trace?: Tracer;
}

export class V2MigrationDriver extends MigrationDriverBase implements VfioMigrationDriver {
  readonly flavor = 'v2' as const;
  /** The state after our last successful SET (or GET); the device never moves on its own. */
  private state: number;
  /** Pre-copy used in this migration (the device offers it and it is not turned off). */
  private readonly precopy: boolean;
  /** A short MIG_DATA_READ in PRE_COPY said nothing more is ready now. */
  private precopyIdle = false;
  /**
   * The first short MIG_DATA_READ in PRE_COPY: the initial data is all read. The kernel counts initial
   * bytes (VFIO_MIG_GET_PRECOPY_INFO); vfio-user has no such query, so the first "nothing more now" is
   * the only sign the VMM gets.
   */
  initialDataSent = false;
  private logging = false;
  /** Whether the device answers MIG_DATA_SIZE (null: not asked yet). */
  private sizesStopCopy: boolean | null = null;
  /** MIG_DATA_READs, pipelined into reused buffers. */
  private readonly reader: MigDataReader;
  /** Config space read as the VM stopped: a device in STOP_COPY refuses region accesses (libvfio-user). */
  private stoppedConfig: Uint8Array | undefined;

  private constructor(
    name: string,
    client: VfioUserClient,
    readonly flags: bigint,
    initial: number,
    private readonly options: V2DriverOptions,
  ) {
    super(name, client, options.trace ?? noTrace);
    this.state = initial;
    this.precopy = options.precopy !== false && (flags & MigrationFlag.PRE_COPY) !== 0n;
    this.reader = new MigDataReader(client);
  }

  /** vfio_migration_init for v2: the flags came from discovery; the current state is read once. */
  static async open(
    client: VfioUserClient,
    name: string,
    flags: bigint,
    options: V2DriverOptions = {},
  ): Promise<V2MigrationDriver> {
    const state = await named(name, getState(client), 'reading MIG_DEVICE_STATE: ');
    (options.trace ?? noTrace).event('vfio_migration_realize', { name, flags, state: migStateName(state) });
    return new V2MigrationDriver(name, client, flags, state, options);
  }

  /** QEMU's vfio_switchover_ack_needed: the device's pre-copy is in use. */
  get switchoverAckNeeded(): boolean {
    return this.precopy;
  }

  async deviceState(): Promise<number> {
    return getState(this.client);
  }

  stateName(state: number): string {
    return migStateName(state);
  }

  /**
   * vfio_migration_set_state: SET `target`; if that fails, SET `recover` (QEMU's recover state). When
   * recovery is ERROR, or the device is found in ERROR, the device is reset (VFIO_DEVICE_RESET is the only
   * way out of ERROR). The first failure is thrown, named.
   */
  private async setState(target: number, recover: number): Promise<void> {
    if (this.state === target) return; // libvfio-user would take it as a no-op; skipping saves a message
    this.trace.event('vfio_migration_set_state', {
      name: this.name,
      new_state: migStateName(target),
      recover_state: migStateName(recover),
    });
    try {
      await this.client.deviceFeature({
        feature: FeatureId.MIG_DEVICE_STATE,
        set: true,
        data: encodeMigStateData({ deviceState: target }),
      });
      this.state = target;
      return;
    } catch (err) {
      const e = asVfioError(err);
      const from = migStateName(this.state);
      const failure = new VfioError(
        e.errno,
        `${this.name}: the device refused MIG_DEVICE_STATE ${from} -> ${migStateName(target)}: ${e.detail}`,
        { cause: err },
      );
      if (this.lost) throw failure;
      await this.recover(recover);
      throw failure;
    }
  }

  /** After a failed SET: the recover state, or a reset when that is ERROR or the device sits in ERROR. */
  private async recover(recover: number): Promise<void> {
    let now = await getState(this.client).catch(() => MigState.ERROR);
    if (now !== MigState.ERROR && recover !== MigState.ERROR) {
      try {
        if (now !== recover)
          await this.client.deviceFeature({
            feature: FeatureId.MIG_DEVICE_STATE,
            set: true,
            data: encodeMigStateData({ deviceState: recover }),
          });
        this.state = recover;
        return;
      } catch {
        now = await getState(this.client).catch(() => MigState.ERROR);
      }
    }
    this.trace.event('vfio_migration_reset', { name: this.name, state: migStateName(now) });
    await this.client.reset().catch(() => {});
    // The kernel (and libvfio-user before 2026-05) put a reset device in RUNNING; later libvfio-user leaves
    // the state as it was: ask rather than assume.
    this.state = await getState(this.client).catch(() => MigState.ERROR);
  }

  /**
   * The run-state handler (vfio_vmstate_change): the VM started → RUNNING; the VM stopped → STOP_COPY
   * when it stops for the switch-over while the device is pre-copying (the same transfer goes on), else
   * STOP. Recovery ERROR: a device that fails here is reset.
   */
  async vmStateChange(running: boolean, reason: string): Promise<void> {
    if (this.lost) return;
    // QEMU saves its own emulated copy of config space; ours is the device's, taken while it still answers.
    // Not fatal here (the VM must still stop): saveConfig then asks again, and fails saying why.
    this.stoppedConfig = running ? undefined : await readConfigSpace(this.client).catch(() => undefined);
    const target = running
      ? MigState.RUNNING
      : SAVING.has(this.state) && reason === 'finish-migrate'
        ? MigState.STOP_COPY
        : MigState.STOP;
    await this.setState(target, MigState.ERROR);
    this.trace.event('vfio_vmstate_change', {
      name: this.name,
      running: running ? 1 : 0,
      reason,
      dev_state: migStateName(this.state),
    });
  }

  /** On a cancelled or failed migration the device runs again (reset if it cannot). */
  async migrationStateNotifier(status: string): Promise<void> {
    this.trace.event('vfio_migration_state_notifier', { name: this.name, state: status });
    if (!FAILED_STATUSES.has(status) || this.lost) return;
    await this.stopLogging();
    await this.setState(MigState.RUNNING, MigState.ERROR);
    this.resetCounters();
  }

  /**
   * save_setup: device dirty tracking starts (DMA_LOGGING_START; a device without it has nothing to log),
   * then RUNNING → PRE_COPY when pre-copy is in use (recover RUNNING).
   */
  async saveSetup(): Promise<void> {
    this.trace.event('vfio_save_setup', { name: this.name, precopy: this.precopy });
    this.resetCounters();
    this.precopyIdle = false;
    this.initialDataSent = false;
    await this.startLogging();
    if (this.precopy && this.state === MigState.RUNNING) await this.setState(MigState.PRE_COPY, MigState.RUNNING);
  }

  private async startLogging(): Promise<void> {
    if (this.logging) return;
    const ranges = (this.options.dmaRanges ?? []).map((r) => ({ iova: r.iova, length: r.size }));
    try {
      await this.client.deviceFeature({
        feature: FeatureId.DMA_LOGGING_START,
        set: true,
        data: encodeDmaLoggingControl({ pageSize: DIRTY_PAGE_SIZE, ranges }),
      });
      this.logging = true;
    } catch (err) {
      const e = asVfioError(err);
      // A device that does no DMA may not log; anything but a refusal is a real failure.
      if (e.errno !== Errno.EINVAL && e.errno !== Errno.ENOTSUP && e.errno !== Errno.ENOTTY)
        throw nameError(this.name, err, 'DMA_LOGGING_START: ');
      this.trace.event('vfio_dma_logging_unsupported', { name: this.name, errno: e.code });
    }
  }

  private async stopLogging(): Promise<void> {
    if (!this.logging) return;
    this.logging = false;
    await this.client.deviceFeature({ feature: FeatureId.DMA_LOGGING_STOP, set: true }).catch(() => {});
  }

  /**
   * Bytes still to send, as QEMU's vfio_state_pending_exact counts them: in pre-copy, one read's worth until
   * the device said nothing more is ready (vfio-user gives no initial/dirty counts), plus the stop-copy size
   * the device estimates (MIG_DATA_SIZE), so that the switch-over waits until the device's stop-and-copy
   * fits in the downtime too. A device that refuses MIG_DATA_SIZE (libvfio-user's) adds nothing, as QEMU
   * counts nothing when the query fails; it is asked once.
   */
  async savePending(): Promise<bigint> {
    const precopy = this.state === MigState.PRE_COPY && !this.precopyIdle ? BigInt(this.readSize()) : 0n;
    const stopcopy = this.state === MigState.PRE_COPY ? await this.stopCopySize() : 0n;
    this.trace.event('vfio_state_pending', { name: this.name, precopy, stopcopy });
    return precopy + stopcopy;
  }

  /** MIG_DATA_SIZE GET (QEMU's vfio_query_stop_copy_size); 0 for a device that does not answer it. */
  private async stopCopySize(): Promise<bigint> {
    if (this.sizesStopCopy === false) return 0n;
    try {
      const reply = await this.client.deviceFeature({ feature: FeatureId.MIG_DATA_SIZE, get: true });
      this.sizesStopCopy = true;
      return decodeMigDataSizeData(reply.data);
    } catch (err) {
      const e = asVfioError(err);
      if (
        this.sizesStopCopy === null &&
        (e.errno === Errno.EINVAL || e.errno === Errno.ENOTSUP || e.errno === Errno.ENOTTY)
      ) {
        this.sizesStopCopy = false;
        return 0n;
      }
      throw nameError(this.name, err, 'MIG_DATA_SIZE: ');
    }
  }

  private readSize(): number {
    return Math.min(READ_CHUNK, this.client.maxMigData);
  }

  /**
   * save_live_iterate: MIG_DATA_READ while in PRE_COPY and within `budget` (reads pipelined, see
   * mig-data-reader.ts); a short read ends the pass, and the device is idle if the last read was short.
   */
  async saveIterate(budget: number, onData: DeviceDataSink): Promise<number> {
    if (this.state !== MigState.PRE_COPY) return 0;
    const want = this.readSize();
    let moved = 0;
    await dataPath(this.name, 'pre-copy: ', onData, async (sink) => {
      const lengths = await this.reader.pass(
        want,
        { more: (asked) => asked * want < budget, ends: (chunk) => chunk.byteLength < want },
        async (chunk) => {
          await this.emitChunk(sink, chunk);
          moved += chunk.byteLength;
        },
      );
      this.precopyIdle = lengths.length > 0 && lengths[lengths.length - 1]! < want;
      if (lengths.some((n) => n < want)) this.initialDataSent = true;
    });
    if (moved > 0) this.precopyRounds++;
    this.trace.event('vfio_save_iterate', { name: this.name, data_size: moved });
    return moved;
  }

  /**
   * save_live_complete_precopy: STOP_COPY (recover STOP), then MIG_DATA_READ (pipelined) until a read
   * returns 0 bytes; data after that is the device breaking the protocol.
   */
  async saveComplete(onData: DeviceDataSink): Promise<number> {
    await this.setState(MigState.STOP_COPY, MigState.STOP);
    let moved = 0;
    let end = false;
    await dataPath(this.name, 'stop-copy: ', onData, (sink) =>
      this.reader.pass(
        this.readSize(),
        {
          more: () => !end,
          ends: (chunk) => {
            if (end && chunk.byteLength > 0)
              throw new VfioError(
                Errno.EIO,
                `MIG_DATA_READ returned ${chunk.byteLength} bytes after the end of the data`,
              );
            end ||= chunk.byteLength === 0;
            return end;
          },
        },
        async (chunk) => {
          await this.emitChunk(sink, chunk);
          moved += chunk.byteLength;
        },
      ),
    );
    this.trace.event('vfio_save_complete_precopy', { name: this.name, bytes: moved });
    return moved;
  }

  /** save_cleanup: dirty tracking stops; STOP_COPY → STOP after the switch-over (kept out of the downtime). */
  async saveCleanup(): Promise<void> {
    this.trace.event('vfio_save_cleanup', { name: this.name });
    if (this.lost) return;
    await this.stopLogging();
    if (this.state === MigState.STOP_COPY) await this.setState(MigState.STOP, MigState.ERROR);
  }

  /** In STOP_COPY, the config space read as the VM stopped (the device refuses region accesses now). */
  override async saveConfig(): Promise<Uint8Array> {
    if (this.state === MigState.STOP_COPY && this.stoppedConfig) {
      this.trace.event('vfio_save_device_config_state', { name: this.name });
      return this.stoppedConfig;
    }
    return super.saveConfig();
  }

  /** load_setup: RESUMING (through STOP; recover ERROR). */
  async loadSetup(): Promise<void> {
    this.resetCounters();
    await this.setState(MigState.RESUMING, MigState.ERROR);
  }

  async loadData(data: Uint8Array): Promise<void> {
    this.trace.event('vfio_load_state_device_data', { name: this.name, data_size: data.byteLength });
    await named(this.name, this.client.migDataWrite(data), 'loading device data: ');
    this.countLoaded(data.byteLength);
  }

  /**
   * The stream is complete: RESUMING → STOP, the arc on which the device checks and applies what it was
   * given (kernel uAPI), so bad state fails here, before the destination says READY.
   */
  async loadFinish(): Promise<void> {
    await this.setState(MigState.STOP, MigState.ERROR);
    this.trace.event('vfio_load_cleanup', { name: this.name });
  }

  /**
   * A log sync: DMA_LOGGING_REPORT (read and clear) for each mapped range, merged into `sink`. A failed
   * report leaves the log unknown: the whole range is marked dirty (as the uAPI asks) and the error thrown.
   */
  async dirtySync(ranges: readonly DmaRangeRef[], sink: DirtyBitmapSink, pageSize = DIRTY_PAGE_SIZE): Promise<bigint> {
    if (!this.logging) return 0n;
    const o = { name: this.name, trace: this.trace, what: 'DMA_LOGGING_REPORT' };
    return syncDirtyRanges(o, ranges, sink, pageSize, async (r, pages) => {
      const req = { iova: r.iova, length: r.size, pageSize };
      const reply = await this.client.deviceFeature({
        feature: FeatureId.DMA_LOGGING_REPORT,
        get: true,
        argsz: 8 + 24 + dmaLoggingBitmapSize(req),
        data: encodeDmaLoggingReportRequest(req),
      });
      const rep = decodeDmaLoggingReportReply(reply.data);
      if (rep.iova !== r.iova || rep.length !== r.size || rep.bitmap.byteLength * 8 < pages) {
        throw new VfioError(Errno.EPROTO, `DMA_LOGGING_REPORT answered for ${rep.iova}+${rep.length}`);
      }
      return rep.bitmap;
    });
  }
}

async function getState(client: VfioUserClient): Promise<number> {
  const reply = await client.deviceFeature({ feature: FeatureId.MIG_DEVICE_STATE, get: true });
  return decodeMigStateData(reply.data).deviceState;
}
