// libvfio-user's sample server and client of each era, for the interop and conform tests: built by
// ../shared/peers/build-libvfio-user.sh (it prints "ERA SERVER CLIENT" lines and returns at once when its
// build is cached), or why there are none.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

export type Era = 'v1' | 'v2';
export const ERAS: readonly Era[] = ['v1', 'v2'];

export interface Peers {
  servers: Partial<Record<Era, string>>;
  clients: Partial<Record<Era, string>>;
  /** Why the peers are unavailable (the tests skip, saying so); undefined when built. */
  skip?: string;
}

const ROOT = new URL('../..', import.meta.url).pathname;
const BUILD = `${ROOT}../shared/peers/build-libvfio-user.sh`;

export function buildPeers(): Peers {
  if (!existsSync(BUILD))
    return { servers: {}, clients: {}, skip: `${BUILD} is not there (no shared/ beside the checkout)` };
  const r = spawnSync('bash', [BUILD], { encoding: 'utf8', timeout: 600_000 });
  if (r.status !== 0) {
    const why = (r.stderr || r.error?.message || '').trim().split('\n').slice(-3).join(' / ');
    return { servers: {}, clients: {}, skip: `building libvfio-user failed (exit ${r.status}): ${why}` };
  }
  const peers: Peers = { servers: {}, clients: {} };
  for (const line of r.stdout.trim().split('\n')) {
    const [era, server, client] = line.split(' ');
    if (era !== 'v1' && era !== 'v2') continue;
    if (server) peers.servers[era] = server;
    if (client) peers.clients[era] = client;
  }
  return peers;
}
