// Two "hosts" on this machine: on each, device servers and a VMM, as separate processes talking over
// real sockets. The source boots a guest; the destination waits with --incoming. Used by the demo and the
// end-to-end tests; on real hosts the same commands run on two machines.

import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MultifdIo } from '../vmm/migration/multifd-channel.ts';
import { QmpClient } from '../vmm/qmp/client.ts';

const BIN = new URL('../../bin/vfio-migrate.js', import.meta.url).pathname;

/**
 * One device server of a host and how its VMM attaches it: a sample device of `vfio-migrate serve`
 * (`device`, with `deviceArgs`), or another program (`deviceCommand`).
 */
export type DeviceOptions = (
  | {
      /** A sample device name for `vfio-migrate serve --device`. */
      device: string;
      deviceArgs?: string[];
      /** The server's own log on stderr (the pair's `log` gets it); default false: `serve --quiet`. */
      deviceLog?: boolean;
      deviceCommand?: never;
    }
  | {
      /**
       * Another device server instead of `serve`: its command line for a socket path. It must create the
       * socket and print "serving" on stdout once it accepts (examples/stopwatch-device.ts does).
       */
      deviceCommand: (socket: string) => string[];
      device?: never;
      deviceArgs?: never;
      deviceLog?: never;
    }
) & {
  /** Properties appended to the VMM's --device-socket value, e.g. `precopy=off`. */
  deviceProps?: string;
};

/** A host that names no device server in its own fields (it may still list `devices`). */
interface NoDevice {
  device?: never;
  deviceArgs?: never;
  deviceLog?: never;
  deviceCommand?: never;
  deviceProps?: never;
}

/**
 * A host: one device server (the DeviceOptions fields), several (`devices`), or none (neither `device` nor
 * `deviceCommand` nor `devices`: a VMM with guest RAM only, as QEMU's `-machine none` guest).
 */
export type HostOptions = (DeviceOptions | NoDevice) & {
  /**
   * Several device servers on this host, each its own process and socket, attached to the VMM in this
   * order (0000:00:05.0, 0000:00:06.0, …), as QEMU takes several -device vfio-user-pci. When given, it
   * replaces the single device of the fields above.
   */
  devices?: DeviceOptions[];
  vmmArgs?: string[];
};

export interface LocalPairOptions {
  memSize: string;
  source: HostOptions;
  destination: HostOptions;
  /** Listen address of the destination (port 0 picks one). */
  listen?: string;
  /** Instead of listening: the destination loads from this URI (e.g. `file:PATH`). */
  incoming?: string;
  /** Wrap each process's command, e.g. ['ip', 'netns', 'exec', 'hostB'] for a namespace. */
  sourceWrap?: string[];
  destinationWrap?: string[];
  /** The destination stays paused after loading (QMP `cont` starts it). */
  paused?: boolean;
  /** Receives every process's stderr lines, prefixed with its role. */
  log?: (line: string) => void;
  /** How long each process may take to say it is ready (default 30 s; a large filled guest takes longer). */
  startTimeoutMs?: number;
  /**
   * Multifd with this many channels: both VMMs get the capability and the parameter over QMP, the
   * destination waiting with `--incoming defer` until migrate-incoming (as QEMU needs it).
   */
  multifd?: MultifdSetting;
}

/** Multifd on both VMMs: the channel count, and how the channel threads move pages (x-multifd-io). */
export interface MultifdSetting {
  channels: number;
  io?: MultifdIo;
}

export interface Proc {
  role: string;
  child: ChildProcess;
  stdout: string;
}

export interface LocalPair {
  dir: string;
  src: QmpClient;
  dst: QmpClient;
  /** The destination's migration address, for `migrate`. */
  uri: string;
  /** Each host's VMM and its device servers in attach order (none for a host without devices). */
  procs: Record<'srcVmm' | 'dstVmm', Proc> & Record<'srcDevices' | 'dstDevices', Proc[]>;
  /**
   * Replaces the destination host with a fresh one (a new device server and a new VMM waiting with
   * `--incoming`, on new sockets), for a retry after a failed attempt: the old destination's processes
   * are stopped if still alive; `dst`, `uri` and `procs.dst*` then refer to the new ones.
   */
  freshDestination(overrides?: HostOptions & { paused?: boolean }): Promise<void>;
  /**
   * Starts the next destination host now, in the background (e.g. while a test's first attempt runs),
   * for the next freshDestination() to take over (unless that one asks for other overrides).
   */
  prepareDestination(overrides?: HostOptions & { paused?: boolean }): void;
  stop(): Promise<void>;
}

function startProcess(
  role: string,
  args: string[],
  ready: RegExp,
  wrap: string[],
  log?: (l: string) => void,
  timeoutMs = 30_000,
  spawned?: Proc[],
): Promise<Proc & { match: RegExpExecArray }> {
  const cmd = [...wrap, ...args];
  const child = spawn(cmd[0]!, cmd.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  const proc: Proc = { role, child, stdout: '' };
  // Known at once, so a failed start of one process also stops the others still starting.
  spawned?.push(proc);
  let errText = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    errText += d;
    for (const line of d.split('\n').filter(Boolean)) log?.(`${role}: ${line}`);
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${role} did not start within ${timeoutMs} ms: ${errText}`));
    }, timeoutMs);
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      proc.stdout += d;
      const m = ready.exec(proc.stdout);
      if (m) {
        clearTimeout(timer);
        resolve({ ...proc, match: m });
      }
    });
    child.once('exit', (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`${role} exited (${code ?? sig}) before it was ready: ${errText.trim()}`));
    });
  });
}

/** The multifd capability and channel count on a VMM. */
async function setMultifd(q: QmpClient, m: MultifdSetting): Promise<void> {
  await q.execute('migrate-set-capabilities', { capabilities: [{ capability: 'multifd', state: true }] });
  await q.execute('migrate-set-parameters', {
    'multifd-channels': m.channels,
    ...(m.io ? { 'x-multifd-io': m.io } : {}),
  });
}

/** A destination waiting with `--incoming defer`: multifd set, then migrate-incoming; its port line. */
async function deferredIncoming(
  q: QmpClient,
  child: ChildProcess,
  multifd: MultifdSetting,
  listen: string,
): Promise<RegExpExecArray> {
  await setMultifd(q, multifd);
  const listening = stdoutLine(child, /listening on port (\d+)/);
  await q.execute('migrate-incoming', { uri: `tcp:${listen}` });
  return listening;
}

/** The first stdout line from now on that matches `re`. */
function stdoutLine(child: ChildProcess, re: RegExp): Promise<RegExpExecArray> {
  let text = '';
  return new Promise((resolve, reject) => {
    const onData = (d: string) => {
      text += d;
      const m = re.exec(text);
      if (m) {
        child.stdout!.off('data', onData);
        child.off('exit', onExit);
        resolve(m);
      }
    };
    const onExit = () => reject(new Error(`exited before printing ${re}`));
    child.stdout!.on('data', onData);
    child.once('exit', onExit);
  });
}

/** `vfio-migrate ARGS` as this checkout (or installed package) runs it. */
function vfioMigrate(...args: string[]): string[] {
  return [process.execPath, BIN, ...args];
}

function deviceCommand(h: DeviceOptions, socket: string): string[] {
  if (h.deviceCommand) return h.deviceCommand(socket);
  const quiet = h.deviceLog ? [] : ['--quiet'];
  return vfioMigrate('serve', '--device', h.device, '--socket', socket, ...quiet, ...(h.deviceArgs ?? []));
}

/** The VMM's --device-socket value: the path (commas doubled, QEMU style) and any properties. */
function deviceSocketArg(h: DeviceOptions, socket: string): string {
  const path = socket.replaceAll(',', ',,');
  return h.deviceProps ? `${path},${h.deviceProps}` : path;
}

async function stopProcess(p: Proc | undefined): Promise<void> {
  if (!p || p.child.exitCode !== null || p.child.signalCode !== null) return;
  const exited = new Promise((r) => p.child.once('exit', r));
  p.child.kill('SIGTERM');
  p.child.kill('SIGCONT'); // a test may have stopped it (SIGSTOP): let it see the SIGTERM
  const t = setTimeout(() => p.child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(t);
}

/** The host's devices: the list when given, else the single device of the host's own fields, if any. */
function hostDevices(h: HostOptions): DeviceOptions[] {
  if (h.devices && h.devices.length > 0) return h.devices;
  return hasDevice(h) ? [h] : [];
}

function hasDevice(h: HostOptions): h is HostOptions & DeviceOptions {
  return h.device !== undefined || h.deviceCommand !== undefined;
}

/** `h` with what `o` sets: its VMM arguments, its devices, its device (which replaces h's whole). */
function overridden(h: HostOptions, o: HostOptions): HostOptions {
  const device = hasDevice(o) ? o : hasDevice(h) ? h : {};
  return { ...device, vmmArgs: o.vmmArgs ?? h.vmmArgs, devices: o.devices ?? h.devices };
}

/** The first device keeps the socket name it always had; the others are numbered after it. */
function deviceSocketName(prefix: string, i: number, tag: string): string {
  return `${prefix}-dev${i === 0 ? '' : `${i}`}${tag}.sock`;
}

/** Starts a host's device servers (in parallel); returns them in attach order with the VMM's arguments. */
async function startDevices(
  role: string,
  h: HostOptions,
  socket: (i: number) => string,
  wrap: string[],
  o: LocalPairOptions,
  spawned: Proc[],
): Promise<{ devices: Proc[]; args: string[] }> {
  const list = hostDevices(h);
  const devices = await Promise.all(
    list.map((d, i) =>
      startProcess(
        i === 0 ? role : `${role}${i}`,
        deviceCommand(d, socket(i)),
        /serving/,
        wrap,
        o.log,
        o.startTimeoutMs,
        spawned,
      ),
    ),
  );
  return { devices, args: list.flatMap((d, i) => ['--device-socket', deviceSocketArg(d, socket(i))]) };
}

interface DestinationHost {
  devices: Proc[];
  vmm: Proc & { match: RegExpExecArray };
}

/** A destination host: its device server, then its VMM waiting for the migration (`--incoming`). */
async function startDestination(
  o: LocalPairOptions,
  h: HostOptions,
  paused: boolean,
  path: (n: string) => string,
  tag: string,
  spawned: Proc[],
): Promise<DestinationHost> {
  const listen = o.listen ?? '127.0.0.1:0';
  const { devices, args } = await startDevices(
    'dst-device',
    h,
    (i) => path(deviceSocketName('dst', i, tag)),
    o.destinationWrap ?? [],
    o,
    spawned,
  );
  const vmm = await startProcess(
    'dst-vmm',
    vfioMigrate(
      'vmm',
      ...args,
      '--qmp',
      path(`dst${tag}.qmp`),
      '--mem',
      o.memSize,
      '--incoming',
      o.multifd ? 'defer' : (o.incoming ?? `tcp:${listen}`),
      ...(paused ? ['--paused'] : []),
      ...(h.vmmArgs ?? []),
    ),
    o.incoming || o.multifd ? /vmm ready/ : /listening on port (\d+)/,
    o.destinationWrap ?? [],
    o.log,
    o.startTimeoutMs,
    spawned,
  );
  return { devices, vmm };
}

export async function startLocalPair(o: LocalPairOptions): Promise<LocalPair> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-migrate-'));
  const procs: Partial<LocalPair['procs']> = {};
  /** Every process started, including replaced destinations, so that stop() ends them all. */
  const all: Proc[] = [];
  const path = (n: string) => join(dir, n);
  const listen = o.listen ?? '127.0.0.1:0';
  const host = listen.slice(0, listen.lastIndexOf(':'));
  try {
    const [srcVmm, dst] = await Promise.all([
      (async () => {
        const { devices, args } = await startDevices(
          'src-device',
          o.source,
          (i) => path(deviceSocketName('src', i, '')),
          o.sourceWrap ?? [],
          o,
          all,
        );
        procs.srcDevices = devices;
        const vmm = await startProcess(
          'src-vmm',
          vfioMigrate('vmm', ...args, '--qmp', path('src.qmp'), '--mem', o.memSize, ...(o.source.vmmArgs ?? [])),
          /vmm ready/,
          o.sourceWrap ?? [],
          o.log,
          o.startTimeoutMs,
          all,
        );
        return vmm;
      })(),
      startDestination(o, o.destination, o.paused ?? false, path, '', all),
    ]);
    procs.srcVmm = srcVmm;
    procs.dstDevices = dst.devices;
    procs.dstVmm = dst.vmm;
    const [src, dstQmp] = await Promise.all([QmpClient.connect(path('src.qmp')), QmpClient.connect(path('dst.qmp'))]);
    if (o.multifd) {
      await setMultifd(src, o.multifd);
      dst.vmm.match = await deferredIncoming(dstQmp, dst.vmm.child, o.multifd, listen);
    }
    let generation = 0;
    let prepared: Promise<{ host: DestinationHost; tag: string }> | null = null;
    const pair: LocalPair = {
      dir,
      src,
      dst: dstQmp,
      uri: o.incoming ?? `tcp:${host}:${dst.vmm.match[1]}`,
      procs: procs as LocalPair['procs'],
      freshDestination: async (overrides) => {
        if (prepared && overrides) {
          // Asked for a different host than the one prepared: that one goes.
          const stale = prepared;
          prepared = null;
          void stale
            .then(({ host: d }) => Promise.all([stopProcess(d.vmm), ...d.devices.map((p) => stopProcess(p))]))
            .catch(() => {});
        }
        if (!prepared) pair.prepareDestination(overrides);
        const next = prepared!;
        prepared = null;
        const { host: h, tag } = await next;
        pair.dst.close();
        await Promise.all([stopProcess(pair.procs.dstVmm), ...pair.procs.dstDevices.map((p) => stopProcess(p))]);
        pair.procs.dstDevices = h.devices;
        pair.procs.dstVmm = h.vmm;
        pair.dst = await QmpClient.connect(path(`dst${tag}.qmp`));
        if (o.multifd) h.vmm.match = await deferredIncoming(pair.dst, h.vmm.child, o.multifd, listen);
        pair.uri = o.incoming ?? `tcp:${host}:${h.vmm.match[1]}`;
      },
      prepareDestination: (overrides = {}) => {
        if (prepared) throw new Error('a destination is already being prepared');
        const tag = `-${++generation}`;
        const h = overridden(o.destination, overrides);
        prepared = startDestination(o, h, overrides.paused ?? o.paused ?? false, path, tag, all).then((d) => ({
          host: d,
          tag,
        }));
        prepared.catch(() => {}); // reported by freshDestination(); stop() must not see it unhandled
      },
      stop: async () => {
        await prepared?.catch(() => {});
        src.close();
        pair.dst.close();
        await Promise.all(all.map((p) => stopProcess(p)));
        rmSync(dir, { recursive: true, force: true });
      },
    };
    return pair;
  } catch (err) {
    await Promise.all(all.map((p) => stopProcess(p)));
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

/** Polls query-migrate until the migration ends; returns the last answer. */
export async function waitForMigration(
  qmp: QmpClient,
  options: { timeoutMs?: number; onInfo?: (info: Record<string, unknown>) => void; intervalMs?: number } = {},
): Promise<Record<string, unknown>> {
  const deadline = Date.now() + (options.timeoutMs ?? 120_000);
  for (;;) {
    const info = await qmp.execute<Record<string, unknown>>('query-migrate');
    options.onInfo?.(info);
    if (['completed', 'failed', 'cancelled'].includes(info.status as string)) return info;
    if (Date.now() > deadline)
      throw new Error(`migration still ${info.status} after ${options.timeoutMs ?? 120_000} ms`);
    await new Promise((r) => setTimeout(r, options.intervalMs ?? 100));
  }
}
