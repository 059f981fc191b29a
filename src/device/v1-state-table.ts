// Linux 5.8's device_state rules for the v1 migration region, in one place, as libvfio-user's v1 era
// (lib/migration_priv.h, `migr_states`) accepts them. Rows are the current state (value & MASK), entries the
// states a write may request. Unlike the seed table, a write of the current state is a row entry like any
// other: pre-copy -> pre-copy is refused and pre-copy -> running accepted, because libvfio-user's table
// has exactly that (an operator-precedence slip in its pre-copy row; we keep it, since its clients meet it).
//
//  0 stopped        -> stopped, running
//  1 running        -> stopped, running, stop-and-copy, pre-copy, resuming
//  2 stop-and-copy  -> stopped, running, stop-and-copy
//  3 pre-copy       -> stopped, running, stop-and-copy
//  4 resuming       -> running, resuming
//  6 error          -> nothing: only a device reset leaves it (include/uapi/linux/vfio.h, 5.8)
// A request must pass VALID first (5.8 header: with RESUMING set, state & MASK must be exactly RESUMING), so
// 5, 6 and 7 are never accepted as requests; 6 is only ever entered by the device after an internal failure.

import { DeviceState, v1StateValid } from '../abi/migration.ts';

const { STOPPED, RUNNING, SAVING, RESUMING } = DeviceState;
const PRE_COPY = SAVING | RUNNING;
const STOP_AND_COPY = SAVING;
/** SAVING | RESUMING: the error state (VFIO_DEVICE_STATE_IS_ERROR). */
export const V1_ERROR_STATE = DeviceState.ERROR;

export const V1_TRANSITIONS: Readonly<Record<number, readonly number[]>> = {
  [STOPPED]: [STOPPED, RUNNING],
  [RUNNING]: [STOPPED, RUNNING, STOP_AND_COPY, PRE_COPY, RESUMING],
  [STOP_AND_COPY]: [STOPPED, RUNNING, STOP_AND_COPY],
  [PRE_COPY]: [STOPPED, RUNNING, STOP_AND_COPY],
  [RESUMING]: [RUNNING, RESUMING],
  [V1_ERROR_STATE]: [],
};

export function v1TransitionAllowed(from: number, to: number): boolean {
  return v1StateValid(to) && (V1_TRANSITIONS[from]?.includes(to) ?? false);
}
