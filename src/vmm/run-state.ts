// The VM's run state (QEMU's RunState names) with its transitions in one table, and the VM state change
// handlers QEMU calls when the VM starts or stops: in registration order on start, in reverse on stop
// (so devices stop after the vCPUs that drive them, and start before them). A handler that fails does
// not leave the machine half-way: the state change still completes, and the errors are returned so the
// caller (e.g. the migration) can fail cleanly.

export const RUN_STATES = [
  'prelaunch',
  'running',
  'paused',
  'inmigrate',
  'finish-migrate',
  'postmigrate',
  'shutdown',
  'internal-error',
] as const;
export type RunStateName = (typeof RUN_STATES)[number];

const TRANSITIONS: Readonly<Record<RunStateName, readonly RunStateName[]>> = {
  prelaunch: ['running', 'paused', 'inmigrate'],
  inmigrate: ['running', 'paused', 'shutdown', 'internal-error'],
  running: ['paused', 'finish-migrate', 'shutdown', 'internal-error'],
  paused: ['running', 'finish-migrate', 'shutdown'],
  // A migration that fails after stopping the VM resumes it (running) or leaves it paused as it was.
  'finish-migrate': ['postmigrate', 'running', 'paused', 'internal-error'],
  postmigrate: ['running', 'paused', 'shutdown'],
  shutdown: [],
  'internal-error': ['paused', 'shutdown'],
};

const RUNNING_STATES = new Set<RunStateName>(['running']);

export type ChangeHandler = (running: boolean, reason: string, state: RunStateName) => void | Promise<void>;

export class RunState {
  private current: RunStateName;
  private readonly handlers: ChangeHandler[] = [];

  constructor(initial: RunStateName = 'prelaunch') {
    this.current = initial;
  }

  get state(): RunStateName {
    return this.current;
  }

  get running(): boolean {
    return RUNNING_STATES.has(this.current);
  }

  addChangeHandler(h: ChangeHandler): void {
    this.handlers.push(h);
  }

  static allowed(from: RunStateName, to: RunStateName): boolean {
    return TRANSITIONS[from].includes(to);
  }

  /**
   * Moves to `to`; when that starts or stops the VM, runs the change handlers. Returns the handlers'
   * errors (empty when all went well).
   */
  async transition(to: RunStateName, reason: string): Promise<Error[]> {
    if (to === this.current) return [];
    if (!RunState.allowed(this.current, to)) throw new Error(`run state ${this.current} -> ${to} is not allowed`);
    const wasRunning = this.running;
    this.current = to;
    const running = this.running;
    if (wasRunning === running) return [];
    const order = running ? this.handlers : [...this.handlers].reverse();
    const errors: Error[] = [];
    for (const h of order) {
      try {
        await h(running, reason, to);
      } catch (err) {
        errors.push(err instanceof Error ? err : new Error(String(err)));
      }
    }
    return errors;
  }
}
