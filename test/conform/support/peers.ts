// libvfio-user's sample servers of both eras, built (or taken from the cache) by
// ../shared/peers/build-libvfio-user.sh, which prints one "ERA SERVER CLIENT" line per era; or why there are
// none, for a skip that says so.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

const BUILD = new URL('../../../../shared/peers/build-libvfio-user.sh', import.meta.url).pathname;

export type Era = 'v1' | 'v2';

export function buildPeers(): { servers: Partial<Record<Era, string>>; skip?: string } {
  if (!existsSync(BUILD)) return { servers: {}, skip: `${BUILD} is not there (no shared/ beside the checkout)` };
  const r = spawnSync('bash', [BUILD], { encoding: 'utf8', timeout: 600_000 });
  if (r.status !== 0) {
    const why = (r.stderr || r.error?.message || '').trim().split('\n').slice(-3).join(' / ');
    return { servers: {}, skip: `building libvfio-user failed (exit ${r.status}): ${why}` };
  }
  const servers: Partial<Record<Era, string>> = {};
  for (const line of r.stdout.trim().split('\n')) {
    const [era, server] = line.split(' ');
    if ((era === 'v1' || era === 'v2') && server) servers[era] = server;
  }
  return { servers };
}
