// Two "hosts" on this machine: on each, a device server and a VMM, as separate processes talking over
// real sockets. The source boots a guest; the destination waits with --incoming. Used by the demo and the
// end-to-end tests; on real hosts the same commands run on two machines.

import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QmpClient } from './qmp/client.ts';

const BIN = new URL('../../bin/vfio-migrate.js', import.meta.url).pathname;

export interface HostOptions {
  device: string;
  deviceArgs?: string[];
  vmmArgs?: string[];
}

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
  procs: Record<'srcDevice' | 'dstDevice' | 'srcVmm' | 'dstVmm', Proc>;
  stop(): Promise<void>;
}

function startProcess(
  role: string,
  args: string[],
  ready: RegExp,
  wrap: string[],
  log?: (l: string) => void,
  timeoutMs = 30_000,
): Promise<Proc & { match: RegExpExecArray }> {
  const cmd = [...wrap, process.execPath, BIN, ...args];
  const child = spawn(cmd[0]!, cmd.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  const proc: Proc = { role, child, stdout: '' };
  let errText = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    errText += d;
    for (const line of d.split('\n').filter(Boolean)) log?.(`${role}: ${line}`);
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${role} did not start within ${timeoutMs} ms: ${errText}`)),
      timeoutMs,
    );
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

async function stopProcess(p: Proc | undefined): Promise<void> {
  if (!p || p.child.exitCode !== null || p.child.signalCode !== null) return;
  const exited = new Promise((r) => p.child.once('exit', r));
  p.child.kill('SIGTERM');
  const t = setTimeout(() => p.child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(t);
}

export async function startLocalPair(o: LocalPairOptions): Promise<LocalPair> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-migrate-'));
  const procs: Partial<LocalPair['procs']> = {};
  const path = (n: string) => join(dir, n);
  try {
    const [srcDevice, dstDevice] = await Promise.all([
      startProcess(
        'src-device',
        [
          'serve',
          '--device',
          o.source.device,
          '--socket',
          path('src-dev.sock'),
          '--quiet',
          ...(o.source.deviceArgs ?? []),
        ],
        /serving/,
        o.sourceWrap ?? [],
        o.log,
      ),
      startProcess(
        'dst-device',
        [
          'serve',
          '--device',
          o.destination.device,
          '--socket',
          path('dst-dev.sock'),
          '--quiet',
          ...(o.destination.deviceArgs ?? []),
        ],
        /serving/,
        o.destinationWrap ?? [],
        o.log,
      ),
    ]);
    procs.srcDevice = srcDevice;
    procs.dstDevice = dstDevice;
    const listen = o.listen ?? '127.0.0.1:0';
    const [srcVmm, dstVmm] = await Promise.all([
      startProcess(
        'src-vmm',
        [
          'vmm',
          '--device-socket',
          path('src-dev.sock'),
          '--qmp',
          path('src.qmp'),
          '--mem',
          o.memSize,
          ...(o.source.vmmArgs ?? []),
        ],
        /vmm ready/,
        o.sourceWrap ?? [],
        o.log,
      ),
      startProcess(
        'dst-vmm',
        [
          'vmm',
          '--device-socket',
          path('dst-dev.sock'),
          '--qmp',
          path('dst.qmp'),
          '--mem',
          o.memSize,
          '--incoming',
          o.incoming ?? `tcp:${listen}`,
          ...(o.paused ? ['--paused'] : []),
          ...(o.destination.vmmArgs ?? []),
        ],
        o.incoming ? /vmm ready/ : /listening on port (\d+)/,
        o.destinationWrap ?? [],
        o.log,
      ),
    ]);
    procs.srcVmm = srcVmm;
    procs.dstVmm = dstVmm;
    const host = listen.slice(0, listen.lastIndexOf(':'));
    const [src, dst] = await Promise.all([QmpClient.connect(path('src.qmp')), QmpClient.connect(path('dst.qmp'))]);
    return {
      dir,
      src,
      dst,
      uri: o.incoming ?? `tcp:${host}:${dstVmm.match[1]}`,
      procs: procs as LocalPair['procs'],
      stop: async () => {
        src.close();
        dst.close();
        await Promise.all(Object.values(procs).map((p) => stopProcess(p)));
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await Promise.all(Object.values(procs).map((p) => stopProcess(p)));
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

export interface Destination {
  qmp: QmpClient;
  uri: string;
  procs: Record<'device' | 'vmm', Proc>;
  stop(): Promise<void>;
}

/**
 * Another destination host (device server + VMM with --incoming) for `pair`, in the pair's directory:
 * a retry after a failed migration needs one, since a destination serves one incoming migration.
 */
export async function startDestination(
  pair: Pick<LocalPair, 'dir'>,
  o: Pick<LocalPairOptions, 'memSize' | 'listen' | 'destinationWrap' | 'paused' | 'log'> & { destination: HostOptions },
): Promise<Destination> {
  const tag = `dst${++destinations}`;
  const path = (n: string) => join(pair.dir, `${tag}-${n}`);
  const wrap = o.destinationWrap ?? [];
  const procs: Partial<Destination['procs']> = {};
  try {
    procs.device = await startProcess(
      `${tag}-device`,
      [
        'serve',
        '--device',
        o.destination.device,
        '--socket',
        path('dev.sock'),
        '--quiet',
        ...(o.destination.deviceArgs ?? []),
      ],
      /serving/,
      wrap,
      o.log,
    );
    const listen = o.listen ?? '127.0.0.1:0';
    const vmm = await startProcess(
      `${tag}-vmm`,
      [
        'vmm',
        '--device-socket',
        path('dev.sock'),
        '--qmp',
        path('qmp'),
        '--mem',
        o.memSize,
        '--incoming',
        `tcp:${listen}`,
        ...(o.paused ? ['--paused'] : []),
        ...(o.destination.vmmArgs ?? []),
      ],
      /listening on port (\d+)/,
      wrap,
      o.log,
    );
    procs.vmm = vmm;
    const qmp = await QmpClient.connect(path('qmp'));
    return {
      qmp,
      uri: `tcp:${listen.slice(0, listen.lastIndexOf(':'))}:${vmm.match[1]}`,
      procs: procs as Destination['procs'],
      stop: async () => {
        qmp.close();
        await Promise.all(Object.values(procs).map((p) => stopProcess(p)));
      },
    };
  } catch (err) {
    await Promise.all(Object.values(procs).map((p) => stopProcess(p)));
    throw err;
  }
}
let destinations = 0;
