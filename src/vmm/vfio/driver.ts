// What the VMM asks of the VFIO migration driver of one device, whatever interface the device speaks: the
// role of QEMU's VFIOMigration and the SaveVMHandlers/VMChangeStateHandler/notifier functions of
// hw/vfio/migration.c. One implementation per flavor (seed-driver.ts for the 2019 region, v1-driver.ts for
// the Linux 5.8 region, v2-driver.ts for the 5.18+ state machine); the migration handler
// (../migration/vfio-handler.ts) and the controller use only this.

import type { MigrationFlavor } from '../../abi/migration.ts';
import type { VfioUserClient } from '../../vfio-user/client.ts';
import type { DirtyBitmapSink } from '../guest/dirty-bitmap.ts';

/** A guest-physical range mapped into the device (DMA_MAP), as dirty-page queries address it. */
export interface DmaRangeRef {
  iova: bigint;
  size: bigint;
}

/** Receives one chunk of device data; the view is valid until the returned promise settles. */
export type DeviceDataSink = (chunk: Uint8Array) => Promise<void> | void;

export interface VfioMigrationDriver {
  /** The device's name in the VM (its PCI address, QEMU's vmstate id). */
  readonly name: string;
  readonly flavor: MigrationFlavor;
  readonly client: VfioUserClient;
  /** Device data bytes moved in this migration (both directions), for query-migrate's vfio.transferred. */
  readonly transferred: number;
  /** Data chunks moved in this migration. */
  readonly chunks: number;
  /** Pre-copy iterations that moved device data in this migration (stop-and-copy not counted). */
  readonly precopyRounds: number;
  /** Why the device server hung up on its own (crashed, killed): the device and its state are gone. */
  readonly lost: string | undefined;
  /**
   * The device has pre-copy data whose load the destination acknowledges before the switch-over, with the
   * switchover-ack capability (QEMU's switchover_ack_needed: a v2 device using PRE_COPY). Absent: never.
   */
  readonly switchoverAckNeeded?: boolean;
  /** Source, pre-copy: the device's initial data has all been read in this migration. */
  readonly initialDataSent?: boolean;

  /** The device's migration state as its flavor numbers it (device_state, or v2's MIG_DEVICE_STATE). */
  deviceState(): Promise<number>;
  /** A state value as this flavor names it (for x-query-vfio and error messages). */
  stateName(state: number): string;

  /** The VM run-state change handler: the device runs when the VM runs and stops when it stops. */
  vmStateChange(running: boolean, reason: string): Promise<void>;
  /** The migration-state notifier: on 'cancelling', 'cancelled' or 'failed' the device runs again. */
  migrationStateNotifier(status: string): Promise<void>;

  // ---- source ----
  /** save_setup: the device starts saving (pre-copy while it runs). */
  saveSetup(): Promise<void>;
  /** save_live_pending: bytes the device still has to send (an estimate while it runs). */
  savePending(): Promise<bigint>;
  /** save_live_iterate: chunks of up to about `budget` bytes in all; returns the bytes moved. */
  saveIterate(budget: number, onData: DeviceDataSink): Promise<number>;
  /** save_live_complete_precopy: the device is stopped; everything left, then saving ends. */
  saveComplete(onData: DeviceDataSink): Promise<number>;
  /** The device's config space, sent as DEV_CONFIG_STATE. */
  saveConfig(): Promise<Uint8Array>;
  /** save_cleanup: after the migration, whatever its outcome (dirty tracking stops, saving ends). */
  saveCleanup?(): Promise<void>;

  // ---- destination ----
  /** load_setup: the device starts resuming. */
  loadSetup(): Promise<void>;
  /** One DEV_DATA_STATE block, in stream order. */
  loadData(data: Uint8Array): Promise<void>;
  /** The whole state arrived: the device validates it (resuming ends) before the destination says READY. */
  loadFinish(): Promise<void>;
  /** DEV_CONFIG_STATE: restore what the driver may write (command register, BARs). */
  loadConfig(blob: Uint8Array): Promise<void>;

  /** A log sync: the device's DMA-dirtied pages in `ranges` into `sink`; returns the dirty pfns reported. */
  dirtySync(ranges: readonly DmaRangeRef[], sink: DirtyBitmapSink, pageSize?: bigint): Promise<bigint>;

  /** Unmaps what the driver mapped; the client itself is closed by its owner. */
  close(): void;
}
