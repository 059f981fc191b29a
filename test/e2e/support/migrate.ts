// One migration of a local pair run to its end: both sides must report completed, and both sides'
// digests (x-query-digests) are read afterwards for the caller to compare. `migrateToEnd` starts it;
// a test that steers the migration while it runs starts it itself and calls `finishMigration`.
import assert from 'node:assert/strict';
import { type LocalPair, waitForMigration } from '../../../src/harness/local-hosts.ts';

export type Digests = { ram: string; devices: { name: string; digest: string | null }[] };
type Info = Record<string, unknown>;

export interface FinishOptions {
  /** How long each side may take to end, and the digests to be read (slow devices); defaults otherwise. */
  timeoutMs?: number;
  /** x-query-digests' arguments (`{ pages: true }` for a digest per page). */
  digestArgs?: Record<string, unknown>;
  /** More to say when the source did not complete (the peers' last log lines). */
  context?: () => string;
}

export interface Finished<D> {
  info: Info;
  dstInfo: Info;
  src: D;
  dst: D;
}

/** Waits for both sides to complete, then reads both sides' digests. */
export async function finishMigration<D = Digests>(pair: LocalPair, o: FinishOptions = {}): Promise<Finished<D>> {
  const wait = o.timeoutMs === undefined ? {} : { timeoutMs: o.timeoutMs };
  const info = await waitForMigration(pair.src, wait);
  const why = `migration ended ${info.status}: ${info['error-desc'] ?? ''}`;
  assert.equal(info.status, 'completed', o.context ? `${why}\n${o.context()}` : why);
  const dstInfo = await waitForMigration(pair.dst, wait);
  assert.equal(dstInfo.status, 'completed', String(dstInfo['error-desc'] ?? ''));
  const [src, dst] = await Promise.all([
    pair.src.execute<D>('x-query-digests', o.digestArgs, wait),
    pair.dst.execute<D>('x-query-digests', o.digestArgs, wait),
  ]);
  return { info, dstInfo, src, dst };
}

/** Migrates the pair (to `uri`, by default its own) and finishes as finishMigration does. */
export async function migrateToEnd<D = Digests>(
  pair: LocalPair,
  o: FinishOptions & { uri?: string } = {},
): Promise<Finished<D>> {
  await pair.src.execute('migrate', { uri: o.uri ?? pair.uri });
  return finishMigration<D>(pair, o);
}
