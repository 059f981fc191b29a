// One migration of a local pair run to its end: both sides must report completed, and both sides'
// digests (x-query-digests) are read afterwards for the caller to compare.
import assert from 'node:assert/strict';
import { type LocalPair, waitForMigration } from '../../../src/harness/local-hosts.ts';

export type Digests = { ram: string; devices: { name: string; digest: string }[] };
type Info = Record<string, unknown>;

export async function migrateToEnd(
  pair: LocalPair,
): Promise<{ info: Info; dstInfo: Info; src: Digests; dst: Digests }> {
  await pair.src.execute('migrate', { uri: pair.uri });
  const info = await waitForMigration(pair.src);
  assert.equal(info.status, 'completed', `migration ended ${info.status}: ${info['error-desc'] ?? ''}`);
  const dstInfo = await waitForMigration(pair.dst);
  assert.equal(dstInfo.status, 'completed', String(dstInfo['error-desc'] ?? ''));
  const [src, dst] = await Promise.all([
    pair.src.execute<Digests>('x-query-digests'),
    pair.dst.execute<Digests>('x-query-digests'),
  ]);
  return { info, dstInfo, src, dst };
}
