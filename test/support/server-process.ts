// Starts `vfio-migrate serve` as a separate process (a real device server on a real socket) for tests.
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const BIN = new URL('../../bin/vfio-migrate.js', import.meta.url).pathname;

export interface ServerProcess {
  path: string;
  proc: ChildProcess;
  /** stderr lines so far (the server's log). */
  log: string[];
  stop(): Promise<void>;
}

export async function startServer(args: string[]): Promise<ServerProcess> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-migrate-test-'));
  const path = join(dir, 'device.sock');
  const proc = spawn(process.execPath, [BIN, 'serve', '--socket', path, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log: string[] = [];
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => log.push(...d.split('\n').filter(Boolean)));
  await new Promise<void>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`server did not start: ${out} ${log.join('\n')}`)), 15_000);
    proc.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (out.includes('serving')) {
        clearTimeout(timer);
        resolve();
      }
    });
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}: ${log.join('\n')}`));
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
