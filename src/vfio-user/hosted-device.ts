// A device as the vfio-user server presents it: PCI-like regions at their indexes (BAR0-5, config space at
// 7, the migration region at 9 as the v1-era libvfio-user places it), each with its flags, capabilities
// and, where mmappable, the fd a client maps. The migration flavor's module (seed or v1) is picked here;
// the device behind it is the same MigrationBackend in every flavor.

import type { DeviceModel } from '../device/device-model.ts';
import {
  type MigrationRegion,
  REGION_FLAVOR_MODULES,
  type RegionFlavor,
  type RegionFlavorModule,
} from '../device/migration-flavor.ts';
import { PciConfigSpace } from '../device/pci-config.ts';
import type { DataSectionKind } from '../device/region-layout.ts';
import { V1DirtyTracking } from '../device/v1-dirty-pages.ts';
import { einval } from '../errors.ts';
import { native } from '../native/addon.ts';

export const CONFIG_REGION_INDEX = 7;
export const MIGRATION_REGION_INDEX = 9;
export const NUM_REGIONS = 10;

/** Vectors per IRQ index: INTx, MSI, MSI-X, ERR, REQ. */
export const IRQ_COUNTS = [1, 1, 4, 1, 1] as const;

export interface ServedRegion {
  readonly index: number;
  readonly size: number;
  readonly readable: boolean;
  readonly writable: boolean;
  /** fd a client may mmap (owned by the HostedDevice), with the region's offset in it. */
  readonly fd: number | null;
  readonly fdOffset: bigint;
  /** Mappable parts, region-relative (the sparse-mmap capability). */
  readonly sparse: readonly { offset: number; size: number }[];
  /** Region type capability, for device-specific regions. */
  readonly type?: { type: number; subtype: number };
  read(offset: number, length: number): Uint8Array;
  /** read(offset, dest.byteLength) into `dest` (a reply built in place); optional, else read() is copied. */
  readInto?(offset: number, dest: Uint8Array): void;
  write(offset: number, data: Uint8Array): void;
}

export interface HostOptions {
  /** Migration flavor the device is served in (default seed). */
  flavor?: RegionFlavor;
  dataSection: DataSectionKind;
  /** Room for one device-data chunk (default 1 MiB). */
  dataSize?: number;
  /** Room for one dirty-bitmap chunk (default 64 KiB for mmapped, 4 KiB trapped). */
  bitmapSize?: number;
}

export class HostedDevice {
  readonly regions: readonly (ServedRegion | undefined)[];
  readonly migration: MigrationRegion;
  readonly flavor: RegionFlavorModule;
  /** v1: the DIRTY_PAGES / unmap-bitmap side; null when dirty pages go through the region (seed). */
  readonly dirtyTracking: V1DirtyTracking | null;
  private readonly config: PciConfigSpace;
  private readonly memfd: number | null = null;
  private readonly mapping: ArrayBuffer | null = null;

  constructor(
    readonly device: DeviceModel,
    options: HostOptions,
  ) {
    const regionOptions = {
      kind: options.dataSection,
      dataSize: options.dataSize ?? 1024 * 1024,
      bitmapSize: options.bitmapSize ?? (options.dataSection === 'mmapped' ? 64 * 1024 : 4096),
    };
    this.flavor = REGION_FLAVOR_MODULES[options.flavor ?? 'seed'];
    if (!this.flavor) throw einval(`migration flavor ${options.flavor} is not served by this host`);
    this.dirtyTracking = this.flavor.dirtyPagesInRegion ? null : new V1DirtyTracking(device.migration.dirtyLog);
    const layout = this.flavor.layout(regionOptions);
    let sectionMemory: Uint8Array | undefined;
    if (options.dataSection === 'mmapped') {
      // The data section lives in a memfd mapped here and, by the client, there: zero copies between them.
      this.memfd = native().memfdCreate(`vfio-migrate:${device.model}:migration`, layout.size);
      this.mapping = native().mmap(this.memfd, 0, layout.size, true);
      sectionMemory = new Uint8Array(this.mapping, layout.sectionOffset);
    }
    this.migration = this.flavor.create({ backend: device.migration, ...regionOptions, sectionMemory });
    this.config = new PciConfigSpace(
      device.config,
      device.bars.map((b) => b?.size ?? 0),
    );
    const regions: (ServedRegion | undefined)[] = new Array(NUM_REGIONS).fill(undefined);
    device.bars.forEach((bar, i) => {
      if (!bar) return;
      regions[i] = {
        index: i,
        size: bar.size,
        readable: true,
        writable: true,
        fd: null,
        fdOffset: 0n,
        sparse: [],
        read: (o, n) => bar.read(o, n),
        write: (o, d) => bar.write(o, d),
      };
    });
    regions[CONFIG_REGION_INDEX] = {
      index: CONFIG_REGION_INDEX,
      size: this.config.size,
      readable: true,
      writable: true,
      fd: null,
      fdOffset: 0n,
      sparse: [],
      read: (o, n) => this.config.read(o, n),
      write: (o, d) => this.config.write(o, d),
    };
    const m = this.migration;
    regions[MIGRATION_REGION_INDEX] = {
      index: MIGRATION_REGION_INDEX,
      size: m.layout.size,
      readable: true,
      writable: true,
      fd: this.memfd,
      fdOffset: 0n,
      sparse: m.layout.mmapAreas,
      type: this.flavor.type,
      read: (o, n) => m.read(o, n),
      readInto: (o, dest) => m.readInto(o, dest),
      write: (o, d) => m.write(o, d),
    };
    this.regions = regions;
  }

  region(index: number): ServedRegion {
    const r = this.regions[index];
    if (!r) throw einval(`region ${index} does not exist on this device`);
    return r;
  }

  reset(): void {
    this.device.reset();
    this.migration.reset();
  }

  close(): void {
    this.device.close();
    if (this.mapping) native().munmap(this.mapping);
    if (this.memfd !== null) native().close(this.memfd);
  }
}
