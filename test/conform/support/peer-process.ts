// Starts one libvfio-user sample server as its own process on a fresh socket (through the interop tests'
// wrapper, which says "serving" once the socket exists), for conform to drive. Its output is kept.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const WRAPPER = new URL('../../interop/support/peer-server.mjs', import.meta.url).pathname;

export interface PeerProcess {
  path: string;
  /** Everything the sample printed. */
  log: string[];
  stop(): Promise<void>;
}

export async function startPeer(server: string): Promise<PeerProcess> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-migrate-conform-peer-'));
  const path = join(dir, 'device.sock');
  const proc = spawn(process.execPath, [WRAPPER, server, path], { stdio: ['ignore', 'pipe', 'pipe'] });
  const log: string[] = [];
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => log.push(...d.split('\n').filter(Boolean)));
  await new Promise<void>((resolve, reject) => {
    // A safety net: the wrapper polls for the socket every 20 ms.
    const timer = setTimeout(() => reject(new Error(`${server} did not start: ${log.join('\n')}`)), 60_000);
    proc.stdout!.setEncoding('utf8').on('data', (d: string) => {
      log.push(...d.split('\n').filter(Boolean));
      if (d.includes('serving')) {
        clearTimeout(timer);
        resolve();
      }
    });
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${server} exited with ${code}: ${log.join('\n')}`));
    });
  });
  return {
    path,
    log,
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        const exited = new Promise((r) => proc.once('exit', r));
        proc.kill('SIGTERM');
        const kill = setTimeout(() => proc.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(kill);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
