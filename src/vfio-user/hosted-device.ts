// A device as the vfio-user server presents it: PCI-like regions at their indexes (BAR0-5, config space at
// 7, the migration region at 9 as the v1-era libvfio-user places it), each with its flags, capabilities
// and, where mmappable, the fd a client maps. The migration flavor's module (seed or v1) is picked here;
// the device behind it is the same MigrationBackend in every flavor.

import { DeviceState } from '../abi/migration.ts';
import { MigState } from '../abi/migration-v2.ts';
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
import { V2DmaLogging } from '../device/v2-dma-logging.ts';
import { V2MigrationFsm } from '../device/v2-fsm.ts';
import { einval } from '../errors.ts';
import { native } from '../native/addon.ts';
import { hugeBuffer } from '../native/huge-buffer.ts';

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
  /**
   * read(offset, length) as a view of the region's own memory, when that memory stays unchanged until the
   * region's next access (undefined when the read must copy); optional. See MigrationRegionAccess.readView.
   */
  readView?(offset: number, length: number): Uint8Array | undefined;
  write(offset: number, data: Uint8Array): void;
}

/** Every flavor a device can be served in: a region flavor, or v2 (DEVICE_FEATURE, no region). */
export type ServedFlavor = RegionFlavor | 'v2';
export const SERVED_FLAVORS: readonly ServedFlavor[] = ['seed', 'v1', 'v2'];

/** The data section's default size per region flavor (see HostOptions.dataSize). */
export const DEFAULT_DATA_SIZE: Readonly<Record<RegionFlavor, number>> = { seed: 32 << 20, v1: 1 << 20 };

export interface HostOptions {
  /** Migration flavor the device is served in (default seed). */
  flavor?: ServedFlavor;
  dataSection: DataSectionKind;
  /**
   * Room for device data: default 32 MiB in seed, 1 MiB in v1. Each chunk costs the VMM three register
   * reads (pending_bytes, data_offset, data_size; pipelined in seed, about one round trip) and the server
   * a turn of its event loop per message, and, trapped, its REGION_READs are pipelined only within the
   * chunk (max_data_xfer_size is 1 MiB): a larger section amortises the first two and lets the third
   * overlap (32 MiB against 16 measured mmapped stop-and-copy 9-28% faster in alternating rounds, trapped
   * the same). A seed section is double-buffered (seed-region.ts): chunks of 16 MiB, the device filling
   * one half while the VMM copies or reads the other; the VMM sends a chunk in PARTs of at most 8 MiB
   * (vfio-handler's PART_DATA_LIMIT). The pages of the area are only the memfd's once touched. v1
   * keeps 1 MiB: its stop-copy chunks are held for the END section, whose device data the VMM bounds to
   * 4 MiB (vfio-handler's END_DATA_LIMIT).
   */
  dataSize?: number;
  /** Room for one dirty-bitmap chunk (default 64 KiB for mmapped, 4 KiB trapped). */
  bitmapSize?: number;
}

export class HostedDevice {
  readonly regions: readonly (ServedRegion | undefined)[];
  /** The migration region (seed, v1); null in v2, where migration goes through DEVICE_FEATURE. */
  readonly migration: MigrationRegion | null;
  /** The region flavor's module; null in v2. */
  readonly flavor: RegionFlavorModule | null;
  /** v2: the state machine behind DEVICE_FEATURE and MIG_DATA_*; null in the region flavors. */
  readonly v2: V2MigrationFsm | null;
  /** v1: the dirty-page side (DIRTY_PAGES / unmap bitmap); null in seed (in the region) and v2. */
  readonly dirtyTracking: V1DirtyTracking | null;
  /** v2: DMA_LOGGING_START/STOP/REPORT; null in the region flavors. */
  readonly dmaLogging: V2DmaLogging | null;
  /** 10 regions in the region flavors (migration at 9), 9 in v2 (libvfio-user's two eras). */
  readonly numRegions: number;
  private readonly config: PciConfigSpace;
  private readonly memfd: number | null = null;
  private readonly mapping: ArrayBuffer | null = null;

  constructor(
    readonly device: DeviceModel,
    options: HostOptions,
  ) {
    const flavor = options.flavor ?? 'seed';
    const regionOptions = {
      kind: options.dataSection,
      // (v2 has no region: the size is unused there.)
      dataSize: options.dataSize ?? DEFAULT_DATA_SIZE[flavor === 'v1' ? 'v1' : 'seed'],
      bitmapSize: options.bitmapSize ?? (options.dataSection === 'mmapped' ? 64 * 1024 : 4096),
    };
    if (!SERVED_FLAVORS.includes(flavor)) throw einval(`migration flavor ${flavor} is not served by this host`);
    const module = flavor === 'v2' ? null : REGION_FLAVOR_MODULES[flavor];
    this.flavor = module;
    this.v2 = module ? null : new V2MigrationFsm(device.migration, { preCopy: true, p2p: false });
    this.dmaLogging = module ? null : new V2DmaLogging(device.migration.dirtyLog);
    this.dirtyTracking = module && !module.dirtyPagesInRegion ? new V1DirtyTracking(device.migration.dirtyLog) : null;
    this.numRegions = module ? NUM_REGIONS : NUM_REGIONS - 1;
    const layout = module?.layout(regionOptions);
    let sectionMemory: Uint8Array | undefined;
    if (layout && options.dataSection === 'mmapped') {
      // The data section lives in a memfd mapped here and, by the client, there: zero copies between them.
      this.memfd = native().memfdCreate(`vfio-migrate:${device.model}:migration`, layout.size);
      this.mapping = native().mmap(this.memfd, 0, layout.size, true);
      sectionMemory = new Uint8Array(this.mapping, layout.sectionOffset);
    } else if (layout) {
      // Trapped: only this process touches the section, first inside a migration: in huge pages.
      sectionMemory = hugeBuffer(layout.size - layout.sectionOffset);
    }
    this.migration = module?.create({ backend: device.migration, ...regionOptions, sectionMemory }) ?? null;
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
        // A BAR backed by a file is offered for mmap, whole or in its sparse areas.
        fd: bar.fd ?? null,
        fdOffset: 0n,
        sparse: bar.fd === undefined ? [] : (bar.sparse ?? [{ offset: 0, size: bar.size }]),
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
    if (m && module)
      regions[MIGRATION_REGION_INDEX] = {
        index: MIGRATION_REGION_INDEX,
        size: m.layout.size,
        readable: true,
        writable: true,
        fd: this.memfd,
        fdOffset: 0n,
        sparse: m.layout.mmapAreas,
        type: module.type,
        read: (o, n) => m.read(o, n),
        readInto: (o, dest) => m.readInto(o, dest),
        readView: (o, n) => m.readView(o, n),
        write: (o, d) => m.write(o, d),
      };
    this.regions = regions;
  }

  /** The migration state in the backend's bits (v1/seed values; v2 mapped, its ERROR as stopped). */
  get migrationState(): number {
    return this.migration?.state ?? this.v2!.backendState;
  }

  /**
   * The device took its client's requests while stopped or saving: only what libvfio-user's gate lets
   * through is accepted then. True when the gate is closed (v1 bits: neither RUNNING nor RESUMING).
   */
  get stopped(): boolean {
    return (this.migrationState & (DeviceState.RUNNING | DeviceState.RESUMING)) === 0;
  }

  /** After a lost client: back to running if the flavor's rules allow, else reset. Returns what happened. */
  returnToRunning(): 'running' | 'reset' {
    try {
      if (this.migration) this.migration.write(0, Uint8Array.of(DeviceState.RUNNING, 0, 0, 0));
      else this.v2!.set(MigState.RUNNING);
      return 'running';
    } catch {
      this.reset();
      return 'reset';
    }
  }

  region(index: number): ServedRegion {
    const r = this.regions[index];
    if (!r) throw einval(`region ${index} does not exist on this device`);
    return r;
  }

  reset(): void {
    this.device.reset();
    this.migration?.reset();
    this.v2?.reset();
  }

  close(): void {
    this.device.close();
    if (this.mapping) native().munmap(this.mapping);
    if (this.memfd !== null) native().close(this.memfd);
  }
}
