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
