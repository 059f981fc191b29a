// The seed protocol's device_state transitions, in one place. Rows are the current state (value & MASK),
// entries the states a VMM may write next. Writing the current state again is always accepted (no-op).
//
//  0 stopped        -> running, stop-and-copy (save a stopped VM), resuming
//  1 running        -> stopped, stop-and-copy, pre-copy, resuming
//  2 stop-and-copy  -> stopped (save done), running (migration cancelled or failed)
//  3 pre-copy       -> running (cancelled or failed), stop-and-copy (VM stopped for the switch-over)
//  4 resuming       -> running (VM starts), stopped (state loaded, VM not started yet)
// SAVING|RESUMING (6, 7) and RESUMING|RUNNING (5) are never valid.

import { DeviceState } from '../abi/migration.ts';

const { STOPPED, RUNNING, SAVING, RESUMING } = DeviceState;
const PRE_COPY = SAVING | RUNNING;
const STOP_AND_COPY = SAVING;

export const SEED_TRANSITIONS: Readonly<Record<number, readonly number[]>> = {
  [STOPPED]: [RUNNING, STOP_AND_COPY, RESUMING],
  [RUNNING]: [STOPPED, STOP_AND_COPY, PRE_COPY, RESUMING],
  [STOP_AND_COPY]: [STOPPED, RUNNING],
  [PRE_COPY]: [RUNNING, STOP_AND_COPY],
  [RESUMING]: [RUNNING, STOPPED],
};

/** The states the region can ever be in. */
export const SEED_STATES: readonly number[] = Object.keys(SEED_TRANSITIONS).map(Number);

export function seedTransitionAllowed(from: number, to: number): boolean {
  return from === to ? SEED_STATES.includes(to) : (SEED_TRANSITIONS[from]?.includes(to) ?? false);
}
