// A conformance run: connect to two devices of the same kind (A saves, B resumes), find the migration
// interface they offer, and check it against its flavor's rules, one result per rule. The devices are driven
// only through vfio-user, as a VMM would; the run leaves both running (or reset) when it ends.

import { Errno } from '../abi/errno.ts';
import type { MigrationFlavor } from '../abi/migration.ts';
import { VfioError } from '../errors.ts';
import { native } from '../native/addon.ts';
import { VfioUserClient } from '../vfio-user/client.ts';
import { describeOffered, discoverMigration } from '../vfio-user/migration-discovery.ts';
import { openRegionPort } from '../vfio-user/region-port.ts';
import { bootGuestDriver } from '../vmm/guest/guest-driver.ts';
import { GuestMemory } from '../vmm/guest/guest-memory.ts';
import { chooseFlavor, type FlavorChoice } from '../vmm/vfio/attach.ts';
import { SeedRegionClient } from '../vmm/vfio/seed-region-client.ts';
import { type ConformReport, RuleFailure, type RuleResult, RuleSkipped, summarize } from './report.ts';
import { type Rule, SEED_RULES, type SeedContext, type SeedTarget } from './seed.ts';

export interface ConformOptions {
  /** Two sockets of devices of the same kind: A is saved, B resumes A's state. */
  sockets: readonly [string, string];
  flavor?: FlavorChoice;
  /** Guest memory mapped into A for the dirty-page rule (default 16 MiB). */
  guestBytes?: number;
  /** How long the dirty-page rule waits for the device to write guest memory (default 3000 ms). */
  dmaWaitMs?: number;
  /** Called with each result as it is decided. */
  onResult?: (r: RuleResult) => void;
}

/** The flavors whose rules are written. */
export const CONFORM_FLAVORS: readonly MigrationFlavor[] = ['seed'];

async function runRules<C>(
  rules: readonly Rule<C>[],
  ctx: C,
  onResult?: (r: RuleResult) => void,
): Promise<RuleResult[]> {
  const results: RuleResult[] = [];
  for (const r of rules) {
    let result: RuleResult;
    try {
      result = { id: r.id, rule: r.rule, outcome: 'pass', detail: await r.run(ctx) };
    } catch (err) {
      const skipped = err instanceof RuleSkipped;
      const msg = err instanceof Error ? err.message : String(err);
      result = {
        id: r.id,
        rule: r.rule,
        outcome: skipped ? 'skip' : 'fail',
        detail: err instanceof RuleFailure || skipped ? msg : `error: ${msg}`,
      };
    }
    results.push(result);
    onResult?.(result);
  }
  return results;
}

export async function conform(o: ConformOptions): Promise<ConformReport> {
  const clients: VfioUserClient[] = [];
  const cleanup: (() => void)[] = [];
  try {
    for (const path of o.sockets) clients.push(await VfioUserClient.connect(path));
    const [ca, cb] = clients as [VfioUserClient, VfioUserClient];
    const offered = await discoverMigration(ca);
    const pick = chooseFlavor(o.sockets[0], offered, o.flavor ?? 'auto');
    const offeredB = await discoverMigration(cb);
    if (!offeredB.some((x) => x.flavor === pick.flavor)) {
      throw new VfioError(
        Errno.EINVAL,
        `${o.sockets[1]} offers ${describeOffered(offeredB)}, not ${pick.flavor} as ${o.sockets[0]} does`,
      );
    }
    if (pick.flavor !== 'seed') {
      throw new VfioError(
        Errno.ENOTSUP,
        `conformance rules for the ${pick.flavor} flavor are not written yet (checked: ${CONFORM_FLAVORS.join(', ')})`,
      );
    }
    const target = async (client: VfioUserClient): Promise<SeedTarget> => {
      const found = (await discoverMigration(client)).find((x) => x.flavor === 'seed');
      if (found?.flavor !== 'seed') throw new Error('no seed region');
      const port = await openRegionPort(client, found.region.index);
      cleanup.push(() => port.close());
      const bars: SeedTarget['bars'] = [];
      for (let index = 0; index < 6; index++) {
        const info = await client.regionInfo(index);
        if (info.fd !== undefined) native().close(info.fd);
        if (info.readable && info.size > 0n) bars.push({ index, size: Number(info.size) });
      }
      return { client, found: found.region, port, region: new SeedRegionClient(port), bars };
    };
    const guest = GuestMemory.create(o.guestBytes ?? 16 << 20, 'vfio-migrate-conform');
    cleanup.push(() => guest.close());
    await ca.dmaMap({ iova: 0n, size: BigInt(guest.size), fd: guest.fd });
    const ring = BigInt(Math.min(1 << 20, guest.size));
    const ctx: SeedContext = {
      a: await target(ca),
      b: await target(cb),
      guest,
      startDma: async () => (await bootGuestDriver(ca, BigInt(guest.size) - ring, ring)) !== null,
      dmaWaitMs: o.dmaWaitMs ?? 3000,
    };
    return summarize(pick.flavor, [...o.sockets], await runRules(SEED_RULES, ctx, o.onResult));
  } finally {
    for (const c of cleanup.reverse()) c();
    for (const c of clients) c.close();
  }
}
