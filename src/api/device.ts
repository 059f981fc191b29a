// The API for device authors: what a device implements (DeviceModel: identity, BARs, DMA, digest; and
// MigrationBackend: the four calls every migration flavor is translated into), the pieces the sample devices
// are built from, and serveDevice() to put a device behind a vfio-user socket. The counterpart of
// libvfio-user's include/libvfio-user.h for a C device. docs/embedding.md walks through it.

export { Errno } from '../abi/errno.ts';
export { DeviceState, deviceStateName, MIGRATION_FLAVORS, type MigrationFlavor } from '../abi/migration.ts';
export type { MigrationBackend } from '../device/backend.ts';
export type { Bar, DmaPort } from '../device/bar.ts';
export type { DeviceModel } from '../device/device-model.ts';
export { DirtyPageLog, LOG_PAGE_SIZE } from '../device/dirty-log.ts';
export { buildPciConfig, type PciIdentity, SAMPLE_VENDOR_ID } from '../device/pci-config.ts';
export type { DataSectionKind } from '../device/region-layout.ts';
export { createSampleDevice, LargeMemoryDevice, RegisterFileDevice, SAMPLE_DEVICES } from '../device/samples/index.ts';
export { asVfioError, einval, VfioError } from '../errors.ts';
export { HostedDevice, type HostOptions } from '../vfio-user/hosted-device.ts';
export { type ServeDeviceOptions, type ServedDevice, serveDevice } from '../vfio-user/serve-device.ts';
export { VfioUserServer } from '../vfio-user/server.ts';
