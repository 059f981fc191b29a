// The VM's run state: QEMU's RunState names and QEMU's transition table (system/runstate.c,
// runstate_transitions_def), in one place, and the VM state change handlers QEMU calls when the VM starts
// or stops running (vm_state_notify): in registration order when it starts, in reverse when it stops, so
// what starts first stops last (devices registered before the vCPUs start before them and stop after
// them). Like QEMU, "running" means exactly the state `running`; a change of state that keeps the VM
// running or not running (paused -> finish-migrate, say) calls no handler.
//
// Failure rule: QEMU's handlers cannot fail; ours can, and a failing handler must not leave the machine
// half-way. So a transition always completes: the new state is set before the first handler runs, every
// handler runs even when an earlier one threw (a device that failed to stop must not keep the vCPUs
// running), and the handlers' errors are returned, in call order, for the caller to act on (a migration
// fails, then moves the VM on with another transition). A transition the table forbids throws before
// anything happens.
//
// Transitions are serialized: one that is asked for while another's handlers run waits for them, then
// is checked against the state as it is then. A handler must not ask for a transition itself (it would
// wait for its own end): that throws.
//
// QMP's STOP and RESUME events go to listeners (onEvent): RESUME before the start handlers (QEMU's
// vm_prepare_start sends it first), STOP after the stop handlers (do_vm_stop sends it last).

import { AsyncLocalStorage } from 'node:async_hooks';

export const RUN_STATES = [
  'debug',
  'inmigrate',
  'internal-error',
  'io-error',
  'paused',
  'postmigrate',
  'prelaunch',
  'finish-migrate',
  'restore-vm',
  'running',
  'save-vm',
  'shutdown',
  'suspended',
  'watchdog',
  'guest-panicked',
  'colo',
] as const;
export type RunStateName = (typeof RUN_STATES)[number];

/** Every allowed transition (QEMU's runstate_transitions_def); anything else is refused. */
export const TRANSITIONS: Readonly<Record<RunStateName, readonly RunStateName[]>> = {
  prelaunch: ['inmigrate', 'running', 'finish-migrate'],
  debug: ['running', 'finish-migrate', 'prelaunch', 'suspended'],
  inmigrate: [
    'internal-error',
    'io-error',
    'paused',
    'running',
    'shutdown',
    'suspended',
    'watchdog',
    'guest-panicked',
    'finish-migrate',
    'prelaunch',
    'postmigrate',
    'colo',
  ],
  'internal-error': ['paused', 'finish-migrate', 'prelaunch'],
  'io-error': ['running', 'finish-migrate', 'prelaunch'],
  paused: ['running', 'finish-migrate', 'postmigrate', 'prelaunch', 'colo'],
  postmigrate: ['running', 'finish-migrate', 'prelaunch'],
  'finish-migrate': [
    'running',
    'paused',
    'postmigrate',
    'prelaunch',
    'colo',
    'internal-error',
    'io-error',
    'shutdown',
    'suspended',
    'watchdog',
    'guest-panicked',
  ],
  'restore-vm': ['running', 'prelaunch'],
  colo: ['running', 'prelaunch', 'shutdown'],
  running: [
    'debug',
    'internal-error',
    'io-error',
    'paused',
    'finish-migrate',
    'restore-vm',
    'save-vm',
    'shutdown',
    'watchdog',
    'guest-panicked',
    'colo',
    'suspended',
  ],
  'save-vm': ['running'],
  shutdown: ['paused', 'finish-migrate', 'prelaunch', 'colo'],
  suspended: ['running', 'finish-migrate', 'prelaunch', 'colo'],
  watchdog: ['running', 'finish-migrate', 'prelaunch', 'colo'],
  'guest-panicked': ['running', 'finish-migrate', 'prelaunch'],
};

export type ChangeHandler = (running: boolean, reason: string, state: RunStateName) => void | Promise<void>;

/** A QMP event about the run state. */
export interface RunStateEvent {
  event: 'STOP' | 'RESUME';
  state: RunStateName;
  reason: string;
}

export class RunStateError extends Error {
  constructor(
    readonly from: RunStateName,
    readonly to: RunStateName,
  ) {
    super(`run state ${from} -> ${to} is not allowed`);
    this.name = 'RunStateError';
  }
}

/** Which handler run (if any) the current async context belongs to, to refuse re-entrant transitions. */
interface HandlerRun {
  owner: RunState;
  active: boolean;
}
const inHandler = new AsyncLocalStorage<HandlerRun>();
/** Handler runs under way, over every RunState (the storage is shared). */
let handlerRuns = 0;

export class RunState {
  private current: RunStateName;
  private readonly handlers: ChangeHandler[] = [];
  private readonly listeners: ((e: RunStateEvent) => void)[] = [];
  /** The tail of the transition queue. */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(initial: RunStateName = 'prelaunch') {
    this.current = initial;
  }

  get state(): RunStateName {
    return this.current;
  }

  /** QEMU's runstate_is_running(). */
  get running(): boolean {
    return this.current === 'running';
  }

  /** QEMU's runstate_needs_reset(): `cont` must refuse these. */
  get needsReset(): boolean {
    return this.current === 'internal-error' || this.current === 'shutdown';
  }

  /**
   * Adds a VM state change handler: called with (running, reason, new state) when the VM starts (in
   * registration order) or stops (in reverse), and awaited. Returns a function that removes it.
   */
  addChangeHandler(h: ChangeHandler): () => void {
    this.handlers.push(h);
    return () => {
      const i = this.handlers.indexOf(h);
      if (i >= 0) this.handlers.splice(i, 1);
    };
  }

  /** Adds a listener for STOP and RESUME (what QMP sends as events). Returns a function that removes it. */
  onEvent(listener: (e: RunStateEvent) => void): () => void {
    this.listeners.push(listener);
    return () => {
      const i = this.listeners.indexOf(listener);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  static allowed(from: RunStateName, to: RunStateName): boolean {
    return from === to || TRANSITIONS[from].includes(to);
  }

  /**
   * Moves to `to` (staying put is always allowed and does nothing); when that starts or stops the VM,
   * runs the change handlers. Resolves to the handlers' errors (empty when all went well); the state is
   * `to` either way. Throws RunStateError, changing nothing, when the table forbids the move.
   */
  transition(to: RunStateName, reason: string): Promise<Error[]> {
    return this.enqueue(to, () => this.apply(to, reason));
  }

  /**
   * QEMU's vm_stop(): if the VM is running (when this transition's turn comes), moves it to `state`
   * (default paused) and stops it; if it is not running, does nothing (QMP `stop` on a stopped VM
   * succeeds).
   */
  vmStop(reason: string, state: RunStateName = 'paused'): Promise<Error[]> {
    return this.enqueue(state, async () => (this.running ? this.apply(state, reason) : []));
  }

  private enqueue(to: RunStateName, fn: () => Promise<Error[]>): Promise<Error[]> {
    const ctx = inHandler.getStore();
    if (ctx?.owner === this && ctx.active)
      return Promise.reject(new Error(`run state -> ${to} asked for from inside a VM state change handler`));
    const run = this.queue.then(fn);
    this.queue = run.catch(() => {});
    return run;
  }

  private async apply(to: RunStateName, reason: string): Promise<Error[]> {
    const from = this.current;
    if (to === from) return [];
    if (!RunState.allowed(from, to)) throw new RunStateError(from, to);
    const wasRunning = this.running;
    this.current = to;
    const running = this.running;
    if (wasRunning === running) return [];
    if (running) this.emit({ event: 'RESUME', state: to, reason });
    const order = running ? [...this.handlers] : [...this.handlers].reverse();
    const errors: Error[] = [];
    const ctx: HandlerRun = { owner: this, active: true };
    handlerRuns++;
    try {
      await inHandler.run(ctx, async () => {
        for (const h of order) {
          try {
            await h(running, reason, to);
          } catch (err) {
            errors.push(err instanceof Error ? err : new Error(String(err)));
          }
        }
      });
    } finally {
      ctx.active = false;
      // Node 20 keeps promise hooks on every promise while any AsyncLocalStorage is enabled (run() enables
      // it; nothing else disables it): with no handler running there is nothing to find, so turn it off.
      if (--handlerRuns === 0) inHandler.disable();
    }
    if (!running) this.emit({ event: 'STOP', state: to, reason });
    return errors;
  }

  private emit(e: RunStateEvent): void {
    for (const l of [...this.listeners]) {
      try {
        l(e);
      } catch {
        // A listener's failure is its own (a closed QMP connection, say); the state change stands.
      }
    }
  }
}
