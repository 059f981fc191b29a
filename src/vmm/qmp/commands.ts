// The QMP commands a VMM answers, in QEMU's QAPI shapes (as of QEMU 8.2, the version the greeting
// announces): argument schemas, result types, the backend interface the server calls, and the checks QEMU
// makes before it acts (migration URIs, parameter ranges), with its error texts.

import { MULTIFD_IO, type MultifdIo, type MultifdIoCounts } from '../migration/multifd-channel.ts';
import type { MigrationStatus } from '../migration/status.ts';
import { RUN_STATES, type RunStateName } from '../run-state.ts';
import {
  type ArgsSchema,
  QmpError,
  type QmpErrorClass,
  type QmpEvent,
  type VersionInfo,
  type VersionTriple,
} from './protocol.ts';

export type { MigrationStatus, QmpErrorClass, QmpEvent, VersionInfo, VersionTriple };

// ---------------------------------------------------------------------------------------------------
// QAPI types

/** QEMU's RunState (the names and their transition table live in run-state.ts). */
export { RUN_STATES };
export type RunState = RunStateName;

/** query-status. `singlestep` is always false (QEMU 8.2 still has the member, deprecated; 9.0 drops it). */
export interface StatusInfo {
  running: boolean;
  singlestep: boolean;
  status: RunState;
}

/**
 * MigrationStats (query-migrate's `ram`). All members are mandatory in QAPI; the postcopy, multifd and
 * zero-copy ones are optional here because this VMM has none of those, and the server fills them with 0.
 * Integers are bytes, pages or counts; `mbps` is megabits per second.
 */
export interface MigrationStats {
  transferred: number;
  remaining: number;
  total: number;
  duplicate: number;
  normal: number;
  'normal-bytes': number;
  'dirty-pages-rate': number;
  mbps: number;
  'dirty-sync-count': number;
  'postcopy-requests'?: number;
  'page-size': number;
  'multifd-bytes'?: number;
  'pages-per-second': number;
  'precopy-bytes': number;
  'downtime-bytes': number;
  'postcopy-bytes'?: number;
  'dirty-sync-missed-zero-copy'?: number;
}

/** VfioStats (query-migrate's `vfio`): bytes the VFIO devices sent. */
export interface VfioStats {
  transferred: number;
  /** Vendor extension: the devices' pending bytes at the last pass, while a migration is active. */
  'x-pending'?: number;
}

/**
 * MigrationInfo (query-migrate). QEMU leaves `status` out before the first migration (`{}`); times are
 * milliseconds. Members this VMM never reports (xbzrle-cache, postcopy-*, socket-address, dirty-limit-*)
 * are not listed; a backend may add any member and it is passed through after the known ones.
 */
export interface MigrationInfo {
  status?: MigrationStatus;
  ram?: MigrationStats;
  vfio?: VfioStats;
  'total-time'?: number;
  'expected-downtime'?: number;
  downtime?: number;
  'setup-time'?: number;
  'cpu-throttle-percentage'?: number;
  'error-desc'?: string;
  'blocked-reasons'?: string[];
  /** Vendor extension: where the downtime went (ms), once completed; `expected` as decided. */
  'x-switchover'?: Record<string, number>;
  /**
   * Vendor extension, a destination's view (QEMU's destination reports little more than its status):
   * payload bytes received per kind, sections loaded, and when the first and last section arrived (ms
   * since the incoming migration started; absent until one did).
   */
  'x-incoming'?: {
    'ram-bytes': number;
    'device-bytes': number;
    sections: number;
    'first-section'?: number;
    'last-section'?: number;
  };
  /** Vendor extension, with multifd: packets whose pages the channels moved each way (x-multifd-io). */
  'x-multifd-io'?: MultifdIoCounts;
}

/** The MigrationParameters this VMM has (query-migrate-parameters). */
export interface MigrationParameters {
  /** ms, 0..2000000 */
  'downtime-limit': number;
  /** bytes/s */
  'max-bandwidth': number;
  /** bytes/s; 0 = estimate */
  'avail-switchover-bandwidth': number;
  /** Extra TCP connections for RAM when the `multifd` capability is on: 1..255, QEMU's default 2. */
  'multifd-channels': number;
  /**
   * Ours: how each multifd channel's thread moves pages: 'staged' through a buffer of its own, 'direct'
   * between guest RAM and the socket (QEMU's way), 'auto' (the default) both measured, the cheaper kept.
   */
  'x-multifd-io': MultifdIo;
}

/** migrate-set-parameters, after its checks: only the members given. */
export type MigrateSetParameters = Partial<MigrationParameters>;

/** query-commands' elements. */
export interface CommandInfo {
  name: string;
}

/** A migration URI after the checks `migrate` and `migrate-incoming` make. */
export type MigrationUri = { transport: 'tcp'; host: string; port: number } | { transport: 'file'; path: string };

/** QEMU's ShutdownCause values this VMM can report. */
export type ShutdownCause = 'host-qmp-quit' | 'host-signal' | 'host-error';

/** The events a VMM sends, with their `data` (undefined: the event has no data member). */
export interface QmpEventMap {
  MIGRATION: { status: MigrationStatus };
  MIGRATION_PASS: { pass: number };
  STOP: undefined;
  RESUME: undefined;
  SHUTDOWN: { guest: boolean; reason: ShutdownCause };
}

// ---------------------------------------------------------------------------------------------------
// The backend

type MaybePromise<T> = T | Promise<T>;

/**
 * What the QMP server calls. The server checks arguments first (types, URIs, ranges), so a backend sees
 * only valid input. A backend refuses with `throw new QmpError(class, desc)`, sent as that error; any
 * other throw becomes a GenericError with the exception's message. Calls may be asynchronous; the server
 * runs one command at a time (across all clients, like QEMU's big lock), so a backend needs no locking
 * of its own against concurrent QMP commands.
 */
export interface QmpVmmBackend {
  /**
   * `migrate`: start an outgoing migration and return once it is under way (QEMU returns before the
   * migration ends; progress through query-migrate and MIGRATION events). With one in progress, throw
   * QEMU's `QmpError('GenericError', "There's a migration process in progress")`.
   */
  migrate(uri: string, target: MigrationUri): MaybePromise<void>;
  /** `migrate-incoming` (QEMU's `-incoming defer`). Leave it out and the command does not exist. */
  migrateIncoming?(uri: string, source: MigrationUri): MaybePromise<void>;
  /** `query-migrate`. */
  queryMigrate(): MaybePromise<MigrationInfo>;
  /** `migrate_cancel`: succeeds with no migration running, as in QEMU. */
  migrateCancel(): MaybePromise<void>;
  /** `migrate-set-parameters`, with the members given (all checked); applies to a running migration too. */
  setMigrationParameters(p: MigrateSetParameters): MaybePromise<void>;
  /** `query-migrate-parameters`. */
  queryMigrationParameters(): MaybePromise<MigrationParameters>;
  /**
   * `migrate-set-capabilities`, names checked against `capabilityNames`; the backend makes QEMU's checks
   * between capabilities. Leave both out and the commands do not exist.
   */
  setMigrationCapabilities?(changes: { capability: string; state: boolean }[]): MaybePromise<void>;
  /** `query-migrate-capabilities`: every capability this VMM knows, with its state. */
  queryMigrationCapabilities?(): MaybePromise<{ capability: string; state: boolean }[]>;
  capabilityNames?: readonly string[];
  /** `query-status` (the server adds `singlestep: false`). */
  queryStatus(): MaybePromise<{ running: boolean; status: RunState }>;
  /** `stop`: pause the vCPUs (QEMU emits STOP; the VMM's run state does, through server.emit). */
  stop(): MaybePromise<void>;
  /** `cont`: resume (RESUME event likewise). */
  cont(): MaybePromise<void>;
  /**
   * `quit`: called after the reply `{"return": {}}` has been queued and a SHUTDOWN event sent; the VMM
   * then exits (closing the server flushes what clients have not read yet).
   */
  quit(): void;
}

// ---------------------------------------------------------------------------------------------------
// Commands

/** What a command may ask of the server while it runs. */
export interface QmpCommandContext {
  /** Runs `fn` once the command's reply has been queued to the client (`quit` uses this). */
  afterReply(fn: () => void): void;
  /** Sends an event to every negotiated client. */
  emit(event: string, data?: Record<string, unknown>): void;
}

/** One command: its argument schema (QAPI order) and what it does. Its result is the `return` member. */
export interface QmpCommand {
  args: ArgsSchema;
  run: (args: Record<string, unknown>, ctx: QmpCommandContext) => unknown | Promise<unknown>;
}

/** QEMU's MAX_MIGRATE_DOWNTIME (ms). */
export const MAX_MIGRATE_DOWNTIME = 2_000_000;
/** Largest bandwidth parameter taken (QEMU takes up to SIZE_MAX; above this a JS number is not exact). */
export const MAX_BANDWIDTH = Number.MAX_SAFE_INTEGER;

export const QMP_CAPABILITIES_ARGS: ArgsSchema = {
  enable: { type: { array: { enum: ['oob'] } }, optional: true },
};
export const MIGRATE_ARGS: ArgsSchema = {
  uri: { type: 'str' },
  detach: { type: 'bool', optional: true },
  resume: { type: 'bool', optional: true },
};
export const MIGRATE_INCOMING_ARGS: ArgsSchema = { uri: { type: 'str' } };
export const MIGRATE_SET_PARAMETERS_ARGS: ArgsSchema = {
  'max-bandwidth': { type: 'size', optional: true },
  'avail-switchover-bandwidth': { type: 'size', optional: true },
  'downtime-limit': { type: 'uint64', optional: true },
  'multifd-channels': { type: 'int', optional: true },
  'x-multifd-io': { type: { enum: MULTIFD_IO }, optional: true },
};
export const MIGRATE_SET_CAPABILITIES_ARGS: ArgsSchema = { capabilities: { type: { array: 'any' } } };
/** QEMU's range for multifd-channels (a uint8, at least one channel). */
export const MAX_MULTIFD_CHANNELS = 255;

const generic = (desc: string) => new QmpError('GenericError', desc);

/** migrate-set-capabilities' list of MigrationCapabilityStatus, checked member by member as QAPI does. */
function checkedCapabilities(list: unknown[], names: readonly string[]): { capability: string; state: boolean }[] {
  return list.map((item, i) => {
    const at = `capabilities[${i}]`;
    if (typeof item !== 'object' || item === null || Array.isArray(item))
      throw generic(`Invalid parameter type for '${at}', expected: object`);
    const o = item as Record<string, unknown>;
    if (!('capability' in o)) throw generic(`Parameter '${at}.capability' is missing`);
    if (typeof o.capability !== 'string')
      throw generic(`Invalid parameter type for '${at}.capability', expected: string`);
    if (!names.includes(o.capability)) throw generic(`Parameter 'capability' does not accept value '${o.capability}'`);
    if (!('state' in o)) throw generic(`Parameter '${at}.state' is missing`);
    if (typeof o.state !== 'boolean') throw generic(`Invalid parameter type for '${at}.state', expected: boolean`);
    for (const k of Object.keys(o))
      if (k !== 'capability' && k !== 'state') throw generic(`Parameter '${at}.${k}' is unexpected`);
    return { capability: o.capability, state: o.state };
  });
}

const NOT_OFFERED = new Set(['unix', 'exec', 'fd', 'rdma', 'vsock']);

/**
 * Checks a migration URI: `tcp:HOST:PORT` (HOST a name, an IPv4 address or a bracketed IPv6 one; PORT
 * 1-65535, or 0 for `migrate-incoming` to pick one) or `file:PATH`. Anything else is a GenericError:
 * QEMU's "unknown migration protocol: URI" for schemes QEMU lacks too, a plain refusal for the ones QEMU
 * has and this VMM does not.
 */
export function parseMigrationUri(uri: string, direction: 'outgoing' | 'incoming'): MigrationUri {
  if (uri.startsWith('tcp:')) {
    const rest = uri.slice(4);
    const m = /^(\[[^\]]*\]|[^:[\]]*):([^,]*)(,.*)?$/.exec(rest);
    if (!m) throw generic(`error parsing address '${rest}'`);
    if (m[3] !== undefined) throw generic(`migration URI options are not supported: '${m[3]}'`);
    const host = m[1]!.startsWith('[') ? m[1]!.slice(1, -1) : m[1]!;
    if (host === '') {
      throw generic(`migration URI '${uri}' has no host; give one (tcp:0.0.0.0:PORT listens on every IPv4 address)`);
    }
    const portText = m[2]!;
    const port = /^\d{1,5}$/.test(portText) ? Number(portText) : Number.NaN;
    const min = direction === 'incoming' ? 0 : 1;
    if (!(port >= min && port <= 65535))
      throw generic(`migration URI '${uri}': port '${portText}' is not a number from ${min} to 65535`);
    return { transport: 'tcp', host, port };
  }
  if (uri.startsWith('file:')) {
    const path = uri.slice(5);
    if (path === '') throw generic(`migration URI '${uri}' has no path`);
    return { transport: 'file', path };
  }
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(uri)?.[1];
  if (scheme !== undefined && NOT_OFFERED.has(scheme)) {
    throw generic(`migration protocol '${scheme}:' is not supported here; use tcp:HOST:PORT or file:PATH`);
  }
  throw generic(`unknown migration protocol: ${uri}`);
}

function checkedParameters(a: Record<string, unknown>): MigrateSetParameters {
  // QEMU's migrate_params_check, in its order and words (the names with underscores, as QEMU has them).
  const p: MigrateSetParameters = {};
  const bw = a['max-bandwidth'] as bigint | undefined;
  if (bw !== undefined) {
    if (bw > BigInt(MAX_BANDWIDTH))
      throw generic(`Parameter 'max_bandwidth' expects an integer in the range of 0 to ${MAX_BANDWIDTH} bytes/second`);
    p['max-bandwidth'] = Number(bw);
  }
  const sw = a['avail-switchover-bandwidth'] as bigint | undefined;
  if (sw !== undefined) {
    if (sw > BigInt(MAX_BANDWIDTH)) {
      throw generic(
        `Parameter 'avail_switchover_bandwidth' expects an integer in the range of 0 to ${MAX_BANDWIDTH} bytes/second`,
      );
    }
    p['avail-switchover-bandwidth'] = Number(sw);
  }
  const dl = a['downtime-limit'] as bigint | undefined;
  if (dl !== undefined) {
    if (dl > BigInt(MAX_MIGRATE_DOWNTIME))
      throw generic(`Parameter 'downtime_limit' expects an integer in the range of 0 to ${MAX_MIGRATE_DOWNTIME} ms`);
    p['downtime-limit'] = Number(dl);
  }
  const io = a['x-multifd-io'] as MultifdIo | undefined;
  if (io !== undefined) p['x-multifd-io'] = io;
  const ch = a['multifd-channels'] as number | undefined;
  if (ch !== undefined) {
    if (ch < 1 || ch > MAX_MULTIFD_CHANNELS)
      throw generic(`Parameter 'multifd_channels' expects a value between 1 and ${MAX_MULTIFD_CHANNELS}`);
    p['multifd-channels'] = ch;
  }
  return p;
}

const int = (v: unknown): unknown => (typeof v === 'number' && Number.isFinite(v) ? Math.round(v) : v);
const num = (v: unknown): unknown => (typeof v === 'number' && !Number.isFinite(v) ? 0 : v);

/** Puts known members first, in QAPI order, with `kind` applied; unknown members follow unchanged. */
function shape(
  obj: Record<string, unknown>,
  members: readonly (readonly [string, (v: unknown) => unknown])[],
): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, f] of members) if (obj[k] !== undefined) out[k] = f(obj[k]);
  for (const [k, v] of Object.entries(obj)) if (!(k in out) && v !== undefined) out[k] = v;
  return out;
}

const RAM_MEMBERS = [
  ['transferred', int],
  ['remaining', int],
  ['total', int],
  ['duplicate', int],
  ['normal', int],
  ['normal-bytes', int],
  ['dirty-pages-rate', int],
  ['mbps', num],
  ['dirty-sync-count', int],
  ['postcopy-requests', int],
  ['page-size', int],
  ['multifd-bytes', int],
  ['pages-per-second', int],
  ['precopy-bytes', int],
  ['downtime-bytes', int],
  ['postcopy-bytes', int],
  ['dirty-sync-missed-zero-copy', int],
] as const;

const INFO_MEMBERS = [
  ['status', (v: unknown) => v],
  ['ram', (v: unknown) => (v && typeof v === 'object' ? migrationStats(v as Record<string, unknown>) : v)],
  [
    'vfio',
    (v: unknown) => (v && typeof v === 'object' ? shape(v as Record<string, unknown>, [['transferred', int]]) : v),
  ],
  ['total-time', int],
  ['expected-downtime', int],
  ['downtime', int],
  ['setup-time', int],
  ['cpu-throttle-percentage', int],
  ['error-desc', (v: unknown) => v],
  ['blocked-reasons', (v: unknown) => v],
] as const;

function migrationStats(ram: Record<string, unknown>): Record<string, unknown> {
  // Mandatory in QAPI; zero here unless the VMM says (multifd-bytes): no postcopy, no zero-copy send.
  const filled = { 'postcopy-requests': 0, 'multifd-bytes': 0, 'postcopy-bytes': 0, 'dirty-sync-missed-zero-copy': 0 };
  return shape({ ...filled, ...ram }, RAM_MEMBERS);
}

/** MigrationInfo as it goes on the wire: QAPI member order, integers where QAPI has int. */
export function wireMigrationInfo(info: MigrationInfo): Record<string, unknown> {
  return shape(info as Record<string, unknown>, INFO_MEMBERS);
}

/** The migration and run-control commands, on a backend. */
export function vmmCommands(backend: QmpVmmBackend): Record<string, QmpCommand> {
  const commands: Record<string, QmpCommand> = {
    migrate: {
      args: MIGRATE_ARGS,
      run: async (a) => {
        const uri = a.uri as string;
        const target = parseMigrationUri(uri, 'outgoing');
        // `detach` is ignored, as in QEMU; `resume` needs a paused postcopy migration, which never exists here.
        if (a.resume === true) throw generic('Cannot resume if there is no paused migration');
        await backend.migrate(uri, target);
        return {};
      },
    },
    'query-migrate': { args: {}, run: async () => wireMigrationInfo(await backend.queryMigrate()) },
    migrate_cancel: {
      args: {},
      run: async () => {
        await backend.migrateCancel();
        return {};
      },
    },
    'migrate-set-parameters': {
      args: MIGRATE_SET_PARAMETERS_ARGS,
      run: async (a) => {
        const p = checkedParameters(a);
        if (Object.keys(p).length > 0) await backend.setMigrationParameters(p);
        return {};
      },
    },
    'query-migrate-parameters': {
      args: {},
      run: async () => {
        const p = await backend.queryMigrationParameters();
        return shape(p as unknown as Record<string, unknown>, [
          ['max-bandwidth', int],
          ['avail-switchover-bandwidth', int],
          ['downtime-limit', int],
          ['multifd-channels', int],
          ['x-multifd-io', (v) => v],
        ]);
      },
    },
    'query-status': {
      args: {},
      run: async () => {
        const s = await backend.queryStatus();
        return { running: s.running, singlestep: false, status: s.status };
      },
    },
    stop: {
      args: {},
      run: async () => {
        await backend.stop();
        return {};
      },
    },
    cont: {
      args: {},
      run: async () => {
        await backend.cont();
        return {};
      },
    },
    quit: {
      args: {},
      run: (_a, ctx) => {
        ctx.afterReply(() => {
          ctx.emit('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' });
          backend.quit();
        });
        return {};
      },
    },
  };
  if (backend.setMigrationCapabilities && backend.queryMigrationCapabilities && backend.capabilityNames) {
    const set = backend.setMigrationCapabilities.bind(backend);
    const query = backend.queryMigrationCapabilities.bind(backend);
    const names = backend.capabilityNames;
    commands['migrate-set-capabilities'] = {
      args: MIGRATE_SET_CAPABILITIES_ARGS,
      run: async (a) => {
        await set(checkedCapabilities(a.capabilities as unknown[], names));
        return {};
      },
    };
    commands['query-migrate-capabilities'] = { args: {}, run: async () => query() };
  }
  if (backend.migrateIncoming) {
    const incoming = backend.migrateIncoming.bind(backend);
    commands['migrate-incoming'] = {
      args: MIGRATE_INCOMING_ARGS,
      run: async (a) => {
        const uri = a.uri as string;
        await incoming(uri, parseMigrationUri(uri, 'incoming'));
        return {};
      },
    };
  }
  return commands;
}
