// A minimal type-0 PCI configuration header for the sample devices.

export const SAMPLE_VENDOR_ID = 0x1de5; // not a registered vendor: these are sample devices
export interface PciIdentity {
  deviceId: number;
  classCode: number; // 24-bit class/subclass/prog-if
  revision: number;
  /** BAR sizes (power of two) for BAR0..5, 0 = unused; BARs are 32-bit memory, 64-bit when size > 2 GiB is not needed. */
  barSizes: readonly number[];
}

export function buildPciConfig(id: PciIdentity): Uint8Array {
  const cfg = new Uint8Array(256);
  const dv = new DataView(cfg.buffer);
  dv.setUint16(0x00, SAMPLE_VENDOR_ID, true);
  dv.setUint16(0x02, id.deviceId, true);
  dv.setUint8(0x08, id.revision);
  dv.setUint8(0x09, id.classCode & 0xff);
  dv.setUint16(0x0a, (id.classCode >>> 8) & 0xffff, true);
  dv.setUint8(0x0e, 0x00); // header type 0
  for (let i = 0; i < 6; i++) {
    // BAR address bits are assigned by the VMM; the low bits say "32-bit memory, non-prefetchable".
    dv.setUint32(0x10 + 4 * i, 0, true);
  }
  dv.setUint16(0x2c, SAMPLE_VENDOR_ID, true); // subsystem vendor
  dv.setUint16(0x2e, id.deviceId, true);
  return cfg;
}

/**
 * Config space as a driver sees it: reads of the header, and writes to the command register and BARs
 * only. A BAR keeps its size's low bits clear, so writing all-ones and reading back tells the size, the
 * way PCI drivers probe it. Writes elsewhere are ignored, as read-only config fields are on hardware.
 */
export class PciConfigSpace {
  private readonly bytes: Uint8Array;
  private readonly dv: DataView;

  constructor(
    initial: Uint8Array,
    private readonly barSizes: readonly number[],
  ) {
    this.bytes = initial.slice();
    this.dv = new DataView(this.bytes.buffer);
  }

  get size(): number {
    return this.bytes.byteLength;
  }

  read(offset: number, length: number): Uint8Array {
    return this.bytes.slice(offset, offset + length);
  }

  write(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.byteLength; i++) {
      const at = offset + i;
      if (at === 0x04 || at === 0x05) this.bytes[at] = data[i]!;
      else if (at >= 0x10 && at < 0x28) this.bytes[at] = data[i]!;
    }
    for (let bar = 0; bar < 6; bar++) {
      const size = this.barSizes[bar] ?? 0;
      const at = 0x10 + 4 * bar;
      // Unimplemented BARs read as 0; implemented ones keep their size alignment (32-bit memory BARs).
      this.dv.setUint32(at, size === 0 ? 0 : (this.dv.getUint32(at, true) & ~(size - 1)) >>> 0, true);
    }
  }
}
