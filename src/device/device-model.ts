// A device as a device server hosts it: PCI identity, BARs, and its migration backend.

import type { MigrationBackend } from './backend.ts';
import type { Bar, DmaPort, DmaRegion, IrqPort } from './bar.ts';

export interface DeviceModel {
  /** Model name, e.g. "register-file". */
  readonly model: string;
  /** PCI config space (256 bytes). */
  readonly config: Uint8Array;
  /** BAR0..BAR5; undefined where the device has none. */
  readonly bars: readonly (Bar | undefined)[];
  readonly migration: MigrationBackend;
  /** Gives the device a way to reach guest memory (or takes it away with null). */
  attachDma(port: DmaPort | null): void;
  /** Optional: told of each range the client maps and unmaps, in order (a device that DMAs by slot). */
  dmaRegister?(region: DmaRegion): void;
  dmaUnregister?(region: DmaRegion): void;
  /** Optional: a way to raise interrupts (or null when the client left). */
  attachIrq?(port: IrqPort | null): void;
  /** SHA-256 (hex) of every byte of device state: equal digests mean identical devices. */
  stateDigest(): string;
  /** Device reset: back to the power-on state (the migration region resets itself separately). */
  reset(): void;
  /** Stops timers; the device does nothing after this. */
  close(): void;
}
