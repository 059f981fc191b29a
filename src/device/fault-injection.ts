// Fault injection on the device side, for reliability tests (`vfio-migrate serve --x-fault SPEC`): the
// device refuses a device_state transition, fails while producing or consuming its state, or its server
// process dies (SIGKILL) at a chosen point. It wraps the device's MigrationBackend, so the VMM meets the
// fault as it would meet a real device's: an errno on the real region access over vfio-user, or a
// connection that goes dead in the middle of one.
//
// SPEC = WHAT@STATE[,count=N][,after=N|SIZE][,errno=NAME]
//   WHAT  fail-transition  a device_state write into STATE is refused (the region keeps its old state)
//         kill-transition  the server process SIGKILLs itself when asked to enter STATE
//         fail-data        producing (saving states) or consuming (resuming) data in STATE fails
//         kill-data        the server process SIGKILLs itself there
//   STATE stopped | running | stop-and-copy | pre-copy | resuming, or its number 0-4
//   count how many times the fault fires (default 1; 0 = every time)
//   after transition faults: transitions into STATE let through first (default 0);
//         data faults: bytes that pass in STATE first (default 0), e.g. 4M
//   errno the errno of a fail-* fault (default EIO)

import { Errno, type ErrnoName } from '../abi/errno.ts';
import { deviceStateName, VALID_DEVICE_STATES } from '../abi/migration.ts';
import { VfioError } from '../errors.ts';
import type { MigrationBackend } from './backend.ts';
import type { DeviceModel } from './device-model.ts';

export type FaultKind = 'fail-transition' | 'kill-transition' | 'fail-data' | 'kill-data';
const KINDS: readonly FaultKind[] = ['fail-transition', 'kill-transition', 'fail-data', 'kill-data'];

export interface FaultSpec {
  kind: FaultKind;
  /** The device_state (value & MASK) the fault is tied to. */
  state: number;
  /** Times it fires; 0 = unlimited. */
  count: number;
  /** Transition faults: transitions into `state` let through first; data faults: bytes produced or
   * consumed in `state` before the fault fires. */
  after: number;
  errno: number;
}

function parseState(text: string): number {
  const byName = VALID_DEVICE_STATES.find((s) => deviceStateName(s) === text);
  if (byName !== undefined) return byName;
  if (/^[0-4]$/.test(text)) return Number(text);
  const names = VALID_DEVICE_STATES.map((s) => deviceStateName(s)).join(', ');
  throw new RangeError(`unknown device state "${text}" (known: ${names}, or 0-4)`);
}

function parseBytes(text: string): number {
  const m = /^(\d+)([kKmMgG]?)$/.exec(text);
  if (!m) throw new RangeError(`not a size: "${text}" (examples: 4096, 64K, 4M)`);
  return Number(m[1]) * { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2]!.toLowerCase()]!;
}

/** Parses one `--x-fault` argument (grammar above); throws a RangeError saying what is wrong. */
export function parseFaultSpec(text: string): FaultSpec {
  const [head = '', ...opts] = text.split(',');
  const at = head.indexOf('@');
  const kind = head.slice(0, at) as FaultKind;
  if (at < 0 || !KINDS.includes(kind))
    throw new RangeError(`fault "${text}": expected WHAT@STATE with WHAT one of ${KINDS.join(', ')}`);
  const spec: FaultSpec = { kind, state: parseState(head.slice(at + 1)), count: 1, after: 0, errno: Errno.EIO };
  for (const opt of opts) {
    const [key, value = ''] = opt.split('=');
    if (key === 'count' && /^\d+$/.test(value)) spec.count = Number(value);
    else if (key === 'after' && kind.endsWith('-data')) spec.after = parseBytes(value);
    else if (key === 'after' && /^\d+$/.test(value)) spec.after = Number(value);
    else if (key === 'errno' && kind.startsWith('fail-') && value in Errno) spec.errno = Errno[value as ErrnoName];
    else throw new RangeError(`fault "${text}": bad option "${opt}" (count=N, after=N or SIZE for data, errno=NAME)`);
  }
  return spec;
}

/** What happens when a kill fault fires: by default this process dies as an external SIGKILL would kill it. */
export type KillFn = (spec: FaultSpec) => void;
const sigkillSelf: KillFn = () => process.kill(process.pid, 'SIGKILL');

/** A MigrationBackend that passes everything to `inner` except where a fault fires. */
export class FaultInjectingBackend implements MigrationBackend {
  private readonly left: number[];
  /** Transitions into each fault's state seen so far (for `after`). */
  private readonly passed: number[];
  /** Bytes produced or consumed since the device entered its current state. */
  private bytesInState = 0;
  /** The state the last accepted transition set (null: the power-on state, before any). */
  private state: number | null = null;

  constructor(
    private readonly inner: MigrationBackend,
    readonly faults: readonly FaultSpec[],
    private readonly kill: KillFn = sigkillSelf,
    private readonly log: (line: string) => void = () => {},
  ) {
    this.left = faults.map((f) => (f.count === 0 ? Number.POSITIVE_INFINITY : f.count));
    this.passed = faults.map(() => 0);
  }

  get dirtyLog() {
    return this.inner.dirtyLog;
  }

  /** The first armed fault of `kinds` for `state` that is `ready` (asked only of armed ones), consumed. */
  private fire(
    kinds: readonly FaultKind[],
    state: number,
    ready: (f: FaultSpec, j: number) => boolean,
  ): FaultSpec | undefined {
    const i = this.faults.findIndex(
      (f, j) => kinds.includes(f.kind) && f.state === state && this.left[j]! > 0 && ready(f, j),
    );
    if (i < 0) return undefined;
    this.left[i]!--;
    return this.faults[i];
  }

  private act(f: FaultSpec, what: string): never {
    const kill = f.kind.startsWith('kill-');
    this.log(`x-fault ${f.kind}@${deviceStateName(f.state)}: ${kill ? 'SIGKILL: ' : ''}${what}`);
    if (kill) this.kill(f);
    throw new VfioError(f.errno, `injected fault: the device ${what}`);
  }

  transition(from: number, to: number): void {
    // Each transition into the state counts towards `after`; the one past it fires.
    const f = this.fire(['fail-transition', 'kill-transition'], to, (x, j) => this.passed[j]!++ >= x.after);
    if (f) this.act(f, `refuses ${deviceStateName(from)} -> ${deviceStateName(to)}`);
    this.inner.transition(from, to);
    this.state = to;
    this.bytesInState = 0;
  }

  pendingBytes(): number {
    return this.inner.pendingBytes();
  }

  produce(out: Uint8Array): number {
    this.dataFault('producing its state');
    const n = this.inner.produce(out);
    this.bytesInState += n;
    return n;
  }

  consume(data: Uint8Array): void {
    this.dataFault('consuming a saved state');
    this.inner.consume(data);
    this.bytesInState += data.byteLength;
  }

  /** The device was reset (back to its power-on state, no transition seen). */
  reset(): void {
    this.state = null;
    this.bytesInState = 0;
  }

  private dataFault(what: string): void {
    if (this.state === null) return;
    const f = this.fire(['fail-data', 'kill-data'], this.state, (x) => this.bytesInState >= x.after);
    if (f) this.act(f, `fails ${what} in ${deviceStateName(this.state)} after ${this.bytesInState} bytes`);
  }
}

/** `device` with its migration backend wrapped by the faults (the device itself is unchanged). */
export function withFaults(
  device: DeviceModel,
  faults: readonly FaultSpec[],
  options: { kill?: KillFn; log?: (line: string) => void } = {},
): DeviceModel {
  if (faults.length === 0) return device;
  const migration = new FaultInjectingBackend(device.migration, faults, options.kill, options.log);
  return {
    model: device.model,
    config: device.config,
    bars: device.bars,
    migration,
    attachDma: (port) => device.attachDma(port),
    stateDigest: () => device.stateDigest(),
    reset: () => {
      device.reset();
      migration.reset();
    },
    close: () => device.close(),
  };
}
