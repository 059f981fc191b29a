// What the migration engine asks of each piece of VM state that migrates (QEMU's SaveVMHandlers, for
// what we need): RAM and each VFIO device implement it. A handler may emit several PART sections per
// step, each bounded in size, so neither side ever holds a whole guest in memory.

export type SectionKind = 'start' | 'part' | 'end' | 'full';

export interface SectionWriter {
  /**
   * Writes one PART section of this handler with these payload pieces. Resolves once the bytes are on
   * their way (the transport took them), so the caller may reuse the memory behind the pieces.
   * `payloadCrc`: crc32c of the pieces end to end, when the caller computed it as it built them.
   */
  part(pieces: readonly Uint8Array[], payloadCrc?: number): Promise<void>;
}

export interface MigrationHandler {
  /** Section identity in the stream: e.g. `ram` / instance 0 / version 4, `0000:00:05.0/vfio` / 0 / 1. */
  readonly idstr: string;
  readonly instanceId: number;
  readonly versionId: number;

  // ---- source ----
  /** The START section's payload. */
  saveSetup(): Promise<Uint8Array[]>;
  /** Bytes still to send (an estimate while the VM runs; what the switch-over decision uses). */
  pendingBytes(): Promise<number>;
  /**
   * Sends up to about `budget` bytes as PART sections while the VM runs. Returns true when this pass is
   * done for the handler (the engine calls again until then, then syncs and re-checks convergence).
   */
  saveIterate(out: SectionWriter, budget: number): Promise<boolean>;
  /** The VM has stopped: sends everything left (PART sections) and returns the END section's payload. */
  saveComplete(out: SectionWriter): Promise<Uint8Array[]>;
  /** Non-iterative state for a FULL section after all END sections, if the handler has any. */
  saveState?(): Promise<Uint8Array[]>;
  /** After the migration, whatever its outcome. */
  saveCleanup?(): Promise<void>;

  // ---- switchover-ack (QEMU 8.1's capability), on both sides ----
  /** Whether the destination must see this handler's initial data loaded before the switch-over. */
  switchoverAckNeeded?(): boolean;
  /** Destination: this handler's initial data is loaded (its INIT_DATA_SENT arrived). */
  switchoverApproved?(): boolean;

  // ---- destination ----
  loadSetup(): Promise<void>;
  /** One verified section of this handler, in stream order. */
  loadSection(kind: SectionKind, payload: Uint8Array, versionId?: number): Promise<void>;
  /** The stream ended (EOF): check the state is complete and consistent; throw if not. */
  loadComplete(): Promise<void>;
  loadCleanup?(): Promise<void>;
}
