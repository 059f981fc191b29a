// Starts a device server as a separate process on a real socket for tests: `vfio-migrate serve`, or any
// program that prints "serving" once its socket listens (the libvfio-user samples' wrapper).
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const BIN = new URL('../../bin/vfio-migrate.js', import.meta.url).pathname;

export interface ServerProcess {
  path: string;
  proc: ChildProcess;
  /** stderr lines so far (the server's log), and stdout's where asked (ServingOptions.logStdout). */
  log: string[];
  stop(): Promise<void>;
}

/** How a device server process is told to start. */
export interface ServingOptions {
  /** Who it is, in errors. */
  what: string;
  /** How long it may take to say "serving" (a safety net). */
  startMs: number;
  /** Its stdout lines go into `log` too (a program whose own output the test reads). */
  logStdout?: boolean;
}

/**
 * Spawns `argv(socketPath)` (after node) on a socket path in a fresh directory, and resolves once it printed
 * "serving" on stdout. Its stderr lines (and stdout's, with logStdout) are kept in `log`.
 */
export async function startServing(argv: (path: string) => string[], o: ServingOptions): Promise<ServerProcess> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-migrate-test-'));
  const path = join(dir, 'device.sock');
  const proc = spawn(process.execPath, argv(path), { stdio: ['ignore', 'pipe', 'pipe'] });
  const log: string[] = [];
  const lines = (d: string) => log.push(...d.split('\n').filter(Boolean));
  proc.stderr!.setEncoding('utf8').on('data', lines);
  await new Promise<void>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`${o.what} did not start: ${out} ${log.join('\n')}`)), o.startMs);
    proc.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (o.logStdout) lines(d);
      if (out.includes('serving')) {
        clearTimeout(timer);
        resolve();
      }
    });
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${o.what} exited with ${code}: ${log.join('\n')}`));
    });
  });
  return {
    path,
    proc,
    log,
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        const exited = new Promise((r) => proc.once('exit', r));
        proc.kill('SIGTERM');
        // A server that cannot take SIGTERM (its event loop stuck) must not hang the test run.
        const kill = setTimeout(() => proc.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(kill);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** `vfio-migrate serve ARGS` on a fresh socket. */
export function startServer(args: string[]): Promise<ServerProcess> {
  return startServing((path) => [BIN, 'serve', '--socket', path, ...args], { what: 'server', startMs: 15_000 });
}
