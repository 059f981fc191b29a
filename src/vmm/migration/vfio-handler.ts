// The VFIO device's part of the stream, in the QEMU v1 layout (spec/qemu-stream.md): START carries
// DEV_SETUP_STATE + END_OF_STATE; each device-data chunk goes in its own PART as DEV_DATA_STATE + size +
// bytes + END_OF_STATE; END carries END_OF_STATE after the stop-and-copy chunks; FULL carries the config
// space (DEV_CONFIG_STATE + blob + END_OF_STATE). idstr `<device>/vfio`, instance 0, version 1.

import { Errno } from '../../abi/errno.ts';
import { VfioError } from '../../errors.ts';
import {
  decodeVfioPayload,
  vfioConfigPayload,
  vfioDataPayload,
  vfioEndPayload,
  vfioSetupPayload,
} from '../../stream/vfio.ts';
import type { VfioMigrationDriver } from '../vfio/driver.ts';
import type { MigrationHandler, SectionKind, SectionWriter } from './handler.ts';

export class VfioHandler implements MigrationHandler {
  readonly idstr: string;
  readonly instanceId = 0;
  readonly versionId = 1;
  private configLoaded = false;

  constructor(readonly driver: VfioMigrationDriver) {
    this.idstr = `${driver.name}/vfio`;
  }

  async saveSetup(): Promise<Uint8Array[]> {
    await this.driver.saveSetup();
    return vfioSetupPayload();
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
    await this.driver.saveIterate(budget, (chunk) => out.part(vfioDataPayload(chunk)));
    return true;
  }

  async saveComplete(out: SectionWriter): Promise<Uint8Array[]> {
    await this.driver.saveComplete((chunk) => out.part(vfioDataPayload(chunk)));
    return vfioEndPayload();
  }

  async saveState(): Promise<Uint8Array[]> {
    return vfioConfigPayload(await this.driver.saveConfig());
  }

  async loadSetup(): Promise<void> {
    await this.driver.loadSetup();
  }

  async loadSection(_kind: SectionKind, payload: Uint8Array): Promise<void> {
    for (const rec of decodeVfioPayload(payload)) {
      if (rec.kind === 'data') await this.driver.loadData(rec.data);
      else if (rec.kind === 'config') {
        await this.driver.loadConfig(rec.data);
        this.configLoaded = true;
      }
    }
  }

  /** EOF: the device validates what it loaded (resuming → stopped) before the destination says READY. */
  async loadComplete(): Promise<void> {
    if (!this.configLoaded) throw new VfioError(Errno.EINVAL, `${this.idstr}: the stream carried no config state`);
    await this.driver.loadFinish();
  }
}
