// What a device author implements to make a device migratable. The migration region (and, later, the v1
// and v2 front ends) translate the VMM's register accesses into these calls, so a device never sees the
// region protocol: it is asked to change state, to say how much it still has to send, to produce the next
// bytes of its state, and to take bytes of a saved state in order.

import type { DirtyPageLog } from './dirty-log.ts';

export interface MigrationBackend {
  /**
   * Applies a device_state change (values are `state & DeviceState.MASK`). Called only for transitions the
   * region's table allows and only when `to !== from`, before the VMM's write returns. When RUNNING is
   * cleared the device must be quiescent on return: no further state change and no further DMA.
   * Throwing refuses the transition: the region keeps `from` and reports the error to the VMM.
   * Entering SAVING starts a save session; leaving RESUMING is where a device validates what it loaded.
   */
  transition(from: number, to: number): void;

  /**
   * Bytes this save session has not yet produced. While the device runs it is an estimate that may grow;
   * once the device is stopped it is exact, and 0 means the saved state is complete.
   */
  pendingBytes(): number;

  /**
   * Writes the next bytes of the saved state into `out` (at most `out.byteLength`) and returns how many.
   * 0 means nothing is ready now (pre-copy) or the state is complete (stop-and-copy). Only called while
   * SAVING. The bytes are opaque to everyone but this device's `consume` on the other side.
   */
  produce(out: Uint8Array): number;

  /**
   * Takes the next bytes of a saved state, in the order they were produced, split anywhere. Only called
   * while RESUMING. Throw (a VfioError with EINVAL, ideally) to reject data the device cannot accept.
   * `data` is valid during the call only (the server receives the next request into the same memory):
   * copy what must outlive it.
   */
  consume(data: Uint8Array): void;

  /**
   * Optional: the bytes a stop-and-copy would produce if the device stopped now (v2's MIG_DATA_SIZE, which
   * QEMU counts in its switch-over decision): while saving, what is left; otherwise its whole state. A
   * device without it refuses MIG_DATA_SIZE, as libvfio-user does.
   */
  stopCopyBytes?(): number;

  /** Pages the device wrote by DMA. The region starts it on entering SAVING and stops it on leaving. */
  readonly dirtyLog?: DirtyPageLog;
}
