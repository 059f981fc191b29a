// The API for VMM embedders: a VMM in this process (Vmm.create: guest RAM, devices attached over vfio-user,
// run state, migration controller: migrate, incoming, cancel, info), a QMP client to drive VMM processes,
// the vfio-user client for devices, and the local four-process harness the demo uses. The counterpart of
// what QEMU's migration and VFIO subsystems offer a management layer. docs/embedding.md walks through it.

export type { MigrationFlavor } from '../abi/migration.ts';
export { type LocalPair, type LocalPairOptions, startLocalPair, waitForMigration } from '../harness/local-hosts.ts';
export { type ClientOptions, VfioUserClient } from '../vfio-user/client.ts';
export { describeOffered, discoverMigration, type OfferedMigration } from '../vfio-user/migration-discovery.ts';
export { GuestMemory } from '../vmm/guest/guest-memory.ts';
export type { MigrationController } from '../vmm/migration/controller.ts';
export type { MigrationParameters } from '../vmm/migration/outgoing.ts';
export { QmpClient, type QmpClientOptions } from '../vmm/qmp/client.ts';
export type { MigrationInfo } from '../vmm/qmp/commands.ts';
export { Tracer } from '../vmm/trace.ts';
export { FLAVOR_CHOICES, type FlavorChoice } from '../vmm/vfio/attach.ts';
export type { VfioMigrationDriver } from '../vmm/vfio/driver.ts';
export { Vmm, type VmmDevice, type VmmOptions } from '../vmm/vmm.ts';
