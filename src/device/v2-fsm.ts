// The Linux 5.18+ ("v2") migration state machine on the device side: the kernel's next-step table
// (drivers/vfio/vfio_main.c, vfio_mig_get_next_state) in one place, walked one direct arc at a time, as
// libvfio-user HEAD's migration_set_state does (lib/migration.c). The device is the same MigrationBackend
// as in the region flavors: each arc whose v1 bit values differ is one backend.transition(from, to), with
// the mapping V2_TO_BACKEND below. The vfio-user commands (DEVICE_FEATURE, MIG_DATA_READ/WRITE) are a
// transport's job; this class holds the state, the rules and the data direction.

import { Errno } from '../abi/errno.ts';
import { DeviceState } from '../abi/migration.ts';
import { MigState, migStateName } from '../abi/migration-v2.ts';
import { asVfioError, einval, VfioError } from '../errors.ts';
import type { MigrationBackend } from './backend.ts';

const { ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P } = MigState;
const X = -1; // refused

/**
 * next = V2_NEXT_STEP[cur][target], the kernel's full table (all features). Rows and columns are MigState
 * values 0..7 (ERROR first). Interior states of a path are never saving-group states.
 */
export const V2_NEXT_STEP: readonly (readonly number[])[] = [
  /* ERROR        */ [X, X, X, X, X, X, X, X],
  /* STOP         */ [X, STOP, RUNNING_P2P, STOP_COPY, RESUMING, RUNNING_P2P, RUNNING_P2P, RUNNING_P2P],
  /* RUNNING      */ [X, RUNNING_P2P, RUNNING, RUNNING_P2P, RUNNING_P2P, RUNNING_P2P, PRE_COPY, RUNNING_P2P],
  /* STOP_COPY    */ [X, STOP, STOP, STOP_COPY, STOP, STOP, X, X],
  /* RESUMING     */ [X, STOP, STOP, STOP, RESUMING, STOP, STOP, STOP],
  /* RUNNING_P2P  */ [X, STOP, RUNNING, STOP, STOP, RUNNING_P2P, RUNNING, PRE_COPY_P2P],
  /* PRE_COPY     */ [X, RUNNING, RUNNING, PRE_COPY_P2P, RUNNING, RUNNING, PRE_COPY, PRE_COPY_P2P],
  /* PRE_COPY_P2P */ [X, RUNNING_P2P, RUNNING_P2P, STOP_COPY, RUNNING_P2P, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P],
];

/**
 * How each v2 state looks to a MigrationBackend (which speaks the v1/seed bits). The P2P states quiesce
 * peer-to-peer DMA only; our devices do none, so they map to their non-P2P twins and an arc between twins
 * calls no backend. ERROR has no backend state (the device is left where the failure happened).
 */
export const V2_TO_BACKEND: Readonly<Record<number, number>> = {
  [STOP]: DeviceState.STOPPED,
  [RUNNING]: DeviceState.RUNNING,
  [STOP_COPY]: DeviceState.SAVING,
  [RESUMING]: DeviceState.RESUMING,
  [RUNNING_P2P]: DeviceState.RUNNING,
  [PRE_COPY]: DeviceState.SAVING | DeviceState.RUNNING,
  [PRE_COPY_P2P]: DeviceState.SAVING | DeviceState.RUNNING,
};

export interface V2Features {
  /** PRE_COPY and PRE_COPY_P2P (VFIO_MIGRATION_PRE_COPY). STOP_COPY is always offered. */
  preCopy: boolean;
  /** RUNNING_P2P and PRE_COPY_P2P (VFIO_MIGRATION_P2P): the full kernel table. */
  p2p: boolean;
}

function supported(state: number, f: V2Features): boolean {
  switch (state) {
    case STOP:
    case RUNNING:
    case STOP_COPY:
    case RESUMING:
      return true;
    case RUNNING_P2P:
      return f.p2p;
    case PRE_COPY:
      return f.preCopy;
    case PRE_COPY_P2P:
      return f.p2p && f.preCopy;
    default:
      return false;
  }
}

/**
 * The next direct arc from `cur` toward `target`, skipping states the device does not support (kernel
 * rule); undefined when the request is refused. ERR is tested before the skip loop.
 */
export function v2NextStep(cur: number, target: number, f: V2Features): number | undefined {
  if (!supported(cur, f) && cur !== ERROR) return undefined;
  if (!supported(target, f)) return undefined;
  let next = V2_NEXT_STEP[cur]?.[target] ?? X;
  while (next !== X && !supported(next, f)) next = V2_NEXT_STEP[next]![target]!;
  return next === X ? undefined : next;
}

/** The whole path v2NextStep walks (for tests and docs); undefined if any step is refused. */
export function v2Path(cur: number, target: number, f: V2Features): number[] | undefined {
  const path = [cur];
  while (cur !== target) {
    const next = v2NextStep(cur, target, f);
    if (next === undefined) return undefined;
    path.push(next);
    cur = next;
  }
  return path;
}

const SAVING_GROUP = new Set<number>([PRE_COPY, PRE_COPY_P2P, STOP_COPY]);

export class V2MigrationFsm {
  private current: number = RUNNING;

  constructor(
    private readonly backend: MigrationBackend,
    readonly features: V2Features,
  ) {}

  get state(): number {
    return this.current;
  }

  /** The state in the backend's (v1) bits, for gating and client-loss handling; ERROR reads as stopped. */
  get backendState(): number {
    return V2_TO_BACKEND[this.current] ?? DeviceState.STOPPED;
  }

  /** Device reset: RUNNING, the only way out of ERROR (libvfio-user HEAD resets to RUNNING). */
  reset(): void {
    this.current = RUNNING;
  }

  /**
   * MIG_DEVICE_STATE SET: walks the next-step table, one backend transition per arc whose bits differ.
   * On a failed arc the state stays at the last completed step and the error is thrown (EINVAL for a
   * refused request, the device's errno or EIO for a failed arc).
   */
  set(target: number): void {
    if (target === ERROR) throw einval('ERROR cannot be requested');
    if (!supported(target, this.features)) throw einval(`${migStateName(target)} is not supported by this device`);
    if (this.current === ERROR) throw einval('the device is in ERROR: only a reset leaves it');
    while (this.current !== target) {
      const next = v2NextStep(this.current, target, this.features);
      if (next === undefined) {
        throw einval(`${migStateName(this.current)} -> ${migStateName(target)} is not allowed`);
      }
      const from = V2_TO_BACKEND[this.current]!;
      const to = V2_TO_BACKEND[next]!;
      if (from !== to) {
        try {
          this.backend.transition(from, to);
        } catch (err) {
          throw asVfioError(err, Errno.EIO);
        }
      }
      this.current = next;
    }
  }

  /** Whether the device estimates its stop-copy size (else MIG_DATA_SIZE is refused, as libvfio-user does). */
  get sizesStopCopy(): boolean {
    return this.backend.stopCopyBytes !== undefined;
  }

  /** MIG_DATA_SIZE: what STOP_COPY would produce now. */
  stopCopySize(): number {
    if (!this.backend.stopCopyBytes) throw einval('this device does not estimate its stop-copy size');
    try {
      return this.backend.stopCopyBytes();
    } catch (err) {
      throw asVfioError(err, Errno.EIO); // a failed estimate changes no state
    }
  }

  /**
   * MIG_DATA_READ into `out` (a reply being built): returns how many bytes of it the device filled; 0 =
   * nothing now (pre-copy) or the end.
   */
  readInto(out: Uint8Array): number {
    if (!SAVING_GROUP.has(this.current)) {
      throw einval(
        `migration data is readable only in PRE_COPY or STOP_COPY (device is ${migStateName(this.current)})`,
      );
    }
    const n = this.internal(() => this.backend.produce(out));
    if (!Number.isSafeInteger(n) || n < 0 || n > out.byteLength) {
      this.current = ERROR;
      throw new VfioError(Errno.EIO, `device produced an impossible chunk size ${n}`);
    }
    return n;
  }

  /** MIG_DATA_WRITE: the next bytes of the resuming transfer, all of them or an error. */
  write(data: Uint8Array): void {
    if (this.current !== RESUMING) {
      throw einval(`migration data is writable only in RESUMING (device is ${migStateName(this.current)})`);
    }
    this.internal(() => this.backend.consume(data), true);
  }

  /** Device data failures: a refusal of bad data (EINVAL) keeps the state; anything else is ERROR. */
  private internal<T>(fn: () => T, refusable = false): T {
    try {
      return fn();
    } catch (err) {
      if (refusable && err instanceof VfioError && err.errno === Errno.EINVAL) throw err;
      this.current = ERROR;
      throw asVfioError(err, Errno.EIO);
    }
  }
}
