// Helpers for the native tests: real fds, real sockets, real files; nothing mocked.
import { once } from 'node:events';
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FdSocket } from '../../src/native/fd-socket.ts';

/** This process's open fds and what each refers to (the listing's own directory fd left out). */
export function openFds(): Map<number, string> {
  const out = new Map<number, string>();
  for (const name of readdirSync('/proc/self/fd')) {
    try {
      const target = readlinkSync(`/proc/self/fd/${name}`);
      if (!/^\/proc\/\d+\/fd$/.test(target)) out.set(Number(name), target);
    } catch {
      // closed while we looked: the listing's own fd, or one another part of the process just closed
    }
  }
  return out;
}

/**
 * The fds open now that were not open (to the same thing) in `before`: what a test left behind. Fds the
 * test runner or the loader close meanwhile do not count, which a bare count would mistake for a change.
 */
export function fdsOpenedSince(before: Map<number, string>): string[] {
  const left: string[] = [];
  for (const [fd, target] of openFds()) if (before.get(fd) !== target) left.push(`${fd} -> ${target}`);
  return left;
}

/** The open-file flags of fd, from /proc (O_CLOEXEC is 0o2000000, O_NONBLOCK 0o4000). */
export function fdFlags(fd: number): number {
  const line = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('flags:'));
  if (!line) throw new Error(`no flags for fd ${fd}`);
  return Number.parseInt(line.slice('flags:'.length).trim(), 8);
}
export const O_CLOEXEC = 0o2000000;
export const O_NONBLOCK = 0o4000;

/** A fresh private directory (short, so socket paths fit sun_path) and its cleanup. */
export function tempDir(): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'vn-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface Received {
  bytes: Uint8Array;
  /** Each fd batch with the stream offset of the chunk it came with and that chunk's length. */
  fds: { fds: number[]; chunkStart: number; chunkLength: number }[];
}

/** Collects everything a socket receives until it has `total` bytes. */
export async function receive(socket: FdSocket, total: number): Promise<Received> {
  const parts: Uint8Array[] = [];
  const fds: Received['fds'] = [];
  let got = 0;
  await new Promise<void>((resolve, reject) => {
    const onData = (chunk: Uint8Array, chunkFds: number[]) => {
      if (chunkFds.length > 0) fds.push({ fds: chunkFds, chunkStart: got, chunkLength: chunk.length });
      parts.push(chunk.slice());
      got += chunk.length;
      if (got >= total) {
        socket.off('data', onData);
        socket.off('error', reject);
        resolve();
      }
    };
    socket.on('data', onData);
    socket.on('error', reject);
  });
  const bytes = new Uint8Array(got);
  let off = 0;
  for (const p of parts) {
    bytes.set(p, off);
    off += p.length;
  }
  return { bytes, fds };
}

/** Resolves on 'close', rejects if 'error' comes first: a clean close. */
export async function cleanClose(socket: FdSocket): Promise<void> {
  const errors: Error[] = [];
  socket.on('error', (e) => errors.push(e));
  await once(socket, 'close');
  if (errors.length > 0) throw errors[0];
}

/** A deterministic byte pattern, distinct per seed. */
export function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}
