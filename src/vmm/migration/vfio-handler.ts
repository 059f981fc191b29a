// The VFIO device's part of the stream, in the layout QEMU's hw/vfio/migration.c writes for the device's
// flavor (spec: the VFIO device section of QEMU's migration stream): START carries DEV_SETUP_STATE +
// END_OF_STATE (for a v1 or v2 device, our X_DEV_FLAVOR record first, see stream/vfio.ts); device data
// goes in PART sections as DEV_DATA_STATE + size + bytes + END_OF_STATE, a chunk per PART up to
// PART_DATA_LIMIT and in several PARTs beyond (a v1 pass that found nothing
// pending writes DEV_DATA_STATE with size 0, as QEMU 5.2-7.2 does). Stop-and-copy data: a seed device's
// goes in PARTs before an END of END_OF_STATE (the seed layout); a v1 or v2 device's goes in the END
// section itself, as QEMU 6.0-7.2's and 8.x's save_live_complete_precopy write it, up to END_DATA_LIMIT
// (more than that is sent ahead in PARTs, so no section outgrows what a reader accepts). FULL carries the config space (DEV_CONFIG_STATE +
// blob + END_OF_STATE). idstr `<device>/vfio`, instance 0, version 1. The destination refuses state saved
// from a device of another flavor.

import { Errno } from '../../abi/errno.ts';
import { VfioError } from '../../errors.ts';
import {
  decodeVfioPayload,
  vfioConfigPayload,
  vfioDataPayload,
  vfioEndPayload,
  vfioInitDataSentPayload,
  vfioSetupPayload,
} from '../../stream/vfio.ts';
import type { VfioMigrationDriver } from '../vfio/driver.ts';
import type { MigrationHandler, SectionKind, SectionWriter } from './handler.ts';

/**
 * Most v1/v2 stop-copy data carried in the END section: well under the reader's 16 MiB section limit. Data
 * beyond it goes ahead in PART sections (QEMU's END has no bound; ours keeps each section bounded).
 */
export const END_DATA_LIMIT = 4 << 20;

/**
 * Most device data in one PART section: a larger chunk (a seed device's whole half of its data area) goes
 * in several, in order, so that no section nears the reader's 16 MiB limit whatever the device's area.
 */
export const PART_DATA_LIMIT = 8 << 20;

/** A chunk of device data in PARTs of at most PART_DATA_LIMIT bytes: the device resumes from the same bytes. */
async function sendChunk(out: SectionWriter, chunk: Uint8Array): Promise<void> {
  if (chunk.byteLength <= PART_DATA_LIMIT) return out.part(vfioDataPayload(chunk));
  for (let at = 0; at < chunk.byteLength; at += PART_DATA_LIMIT)
    await out.part(vfioDataPayload(chunk.subarray(at, at + PART_DATA_LIMIT)));
}

export class VfioHandler implements MigrationHandler {
  readonly idstr: string;
  readonly instanceId = 0;
  readonly versionId = 1;
  private configLoaded = false;
  /** The switchover-ack capability, for this migration (set by the controller on both sides). */
  switchoverAck = false;
  /** Source: INIT_DATA_SENT went out. Destination: it came in. */
  private initDataSent = false;

  constructor(readonly driver: VfioMigrationDriver) {
    this.idstr = `${driver.name}/vfio`;
  }

  async saveSetup(): Promise<Uint8Array[]> {
    this.initDataSent = false;
    await this.driver.saveSetup();
    return vfioSetupPayload(this.driver.flavor);
  }

  async pendingBytes(): Promise<number> {
    return Number(await this.driver.savePending());
  }

  /**
   * One bounded helping of device data per pass, as QEMU's iterate does: a device that keeps dirtying
   * its state would otherwise hold the pass forever. Each chunk is a view of the device's data section,
   * valid until out.part() resolves (once the transport took the bytes): no copy on the way out.
   */
  async saveIterate(out: SectionWriter, budget: number): Promise<boolean> {
    const moved = await this.driver.saveIterate(budget, (chunk) => sendChunk(out, chunk));
    if (moved === 0 && this.driver.flavor === 'v1') await out.part(vfioDataPayload(new Uint8Array(0)));
    // QEMU's vfio_save_iterate ends the pass's payload with INIT_DATA_SENT instead of END_OF_STATE, once,
    // when the initial data is all out; our data chunks are already in PARTs of their own, so this one
    // carries the tag alone.
    if (this.switchoverAckNeeded() && this.driver.initialDataSent && !this.initDataSent) {
      this.initDataSent = true;
      await out.part(vfioInitDataSentPayload());
    }
    return true;
  }

  switchoverAckNeeded(): boolean {
    return this.switchoverAck && this.driver.switchoverAckNeeded === true;
  }

  switchoverApproved(): boolean {
    return this.initDataSent;
  }

  async saveComplete(out: SectionWriter): Promise<Uint8Array[]> {
    if (this.driver.flavor === 'seed') {
      await this.driver.saveComplete((chunk) => sendChunk(out, chunk));
      return vfioEndPayload();
    }
    // The chunks are views the driver reuses once the sink resolves: the ones kept for END are copied.
    let held: Uint8Array[] = [];
    let heldBytes = 0;
    await this.driver.saveComplete(async (chunk) => {
      if (heldBytes + chunk.byteLength > END_DATA_LIMIT && held.length > 0) {
        const ahead = held;
        held = [];
        heldBytes = 0;
        await out.part(vfioDataPayload(ahead));
      }
      held.push(chunk.slice());
      heldBytes += chunk.byteLength;
    });
    return vfioEndPayload(held);
  }

  async saveState(): Promise<Uint8Array[]> {
    return vfioConfigPayload(await this.driver.saveConfig());
  }

  async saveCleanup(): Promise<void> {
    await this.driver.saveCleanup?.();
  }

  async loadSetup(): Promise<void> {
    this.initDataSent = false;
    await this.driver.loadSetup();
  }

  async loadSection(kind: SectionKind, payload: Uint8Array): Promise<void> {
    const records = decodeVfioPayload(payload);
    if (kind === 'start') this.checkFlavor(records.find((r) => r.kind === 'flavor')?.flavor ?? 'seed');
    for (const rec of records) {
      if (rec.kind === 'data') await this.driver.loadData(rec.data);
      else if (rec.kind === 'config') {
        await this.driver.loadConfig(rec.data);
        this.configLoaded = true;
      } else if (rec.kind === 'init-data-sent') {
        // As QEMU's vfio_load_state: only a device that uses pre-copy, with the capability on, approves.
        if (!this.switchoverAckNeeded())
          throw new VfioError(
            Errno.EINVAL,
            `${this.idstr}: INIT_DATA_SENT received, but switchover-ack is not in use for this device ` +
              `(${this.switchoverAck ? 'it has no pre-copy' : 'the capability is off here: set it with migrate-set-capabilities on both sides'})`,
          );
        this.initDataSent = true;
      }
    }
  }

  /** The source's device spoke the same interface as ours, or its opaque state means nothing here. */
  private checkFlavor(streamFlavor: string): void {
    if (streamFlavor === this.driver.flavor) return;
    throw new VfioError(
      Errno.EINVAL,
      `${this.idstr}: the stream carries device state saved through the ${streamFlavor} migration interface, ` +
        `but this device is driven as ${this.driver.flavor}: state of one flavor cannot be loaded into another ` +
        '(start the destination with a device of the same kind, or --flavor to match)',
    );
  }

  /** EOF: the device validates what it loaded before the destination says READY. */
  async loadComplete(): Promise<void> {
    if (!this.configLoaded) throw new VfioError(Errno.EINVAL, `${this.idstr}: the stream carried no config state`);
    await this.driver.loadFinish();
  }
}
