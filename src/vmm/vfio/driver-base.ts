// What the three flavors' migration drivers share: the per-migration counters query-migrate reports, the
// "device lost" record, and the config-space steps. QEMU keeps the same things in VFIOMigration and the
// flavor-independent half of hw/vfio/migration.c (vfio_save_device_config_state,
// vfio_load_device_config_state); only how device data moves differs by flavor.

import type { VfioUserClient } from '../../vfio-user/client.ts';
import type { Tracer } from '../trace.ts';
import { readConfigSpace, restoreConfigSpace } from './config-space.ts';
import type { DeviceDataSink } from './driver.ts';

export abstract class MigrationDriverBase {
  /** Device data bytes moved in this migration (both directions), for query-migrate's vfio.transferred. */
  transferred = 0;
  /** Data chunks moved in this migration. */
  chunks = 0;
  /** Pre-copy iterations that moved device data in this migration (stop-and-copy not counted). */
  precopyRounds = 0;
  /** Why the device server hung up on its own (crashed, killed): the device and its state are gone. */
  lost: string | undefined;

  protected constructor(
    readonly name: string,
    readonly client: VfioUserClient,
    protected readonly trace: Tracer,
  ) {
    client.on('close', this.onClientClose);
  }

  private readonly onClientClose = (reason: Error | undefined): void => {
    if (reason) this.lost ??= reason.message;
  };

  /** The driver is done with the device (the client may live on and get another driver). */
  close(): void {
    this.client.off('close', this.onClientClose);
  }

  /** At the start of a migration and after a failed one: the counters describe one migration. */
  protected resetCounters(): void {
    this.transferred = 0;
    this.chunks = 0;
    this.precopyRounds = 0;
  }

  /** Hands a saved chunk to the stream; its bytes count once the sink took them. */
  protected async emitChunk(sink: DeviceDataSink, chunk: Uint8Array): Promise<void> {
    this.chunks++;
    await sink(chunk);
    this.transferred += chunk.byteLength;
  }

  /** Counts a chunk the device has loaded. */
  protected countLoaded(bytes: number): void {
    this.transferred += bytes;
    this.chunks++;
  }

  /** The device's config space, sent as DEV_CONFIG_STATE. */
  async saveConfig(): Promise<Uint8Array> {
    this.trace.event('vfio_save_device_config_state', { name: this.name });
    return readConfigSpace(this.client);
  }

  /** DEV_CONFIG_STATE: restore what the driver may write (command register, BARs). */
  async loadConfig(blob: Uint8Array): Promise<void> {
    this.trace.event('vfio_load_device_config_state', { name: this.name });
    await restoreConfigSpace(this.client, this.name, blob);
  }
}
