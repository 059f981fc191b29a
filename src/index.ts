// vfio-migrate as a library: everything for device authors (./api/device.ts, also `vfio-migrate/device`)
// and for VMM embedders (./api/vmm.ts, also `vfio-migrate/vmm`). docs/embedding.md walks through both.

export * from './api/device.ts';
export * from './api/vmm.ts';
