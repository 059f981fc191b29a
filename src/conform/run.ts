// A conformance run: connect to two devices of the same kind (A saves, B resumes), find the migration
// interface they offer (the flavor chosen as the VMM chooses it: src/vmm/vfio/attach.ts), and check it
// against its flavor's rules (seed.ts, v1.ts, v2.ts), one result per rule. The devices are driven
// only through vfio-user, as a VMM would; the run leaves both running (or reset) when it ends.

import { Errno } from '../abi/errno.ts';
import { VfioError } from '../errors.ts';
import { native } from '../native/addon.ts';
import { VfioUserClient } from '../vfio-user/client.ts';
import { describeOffered, discoverMigration, type OfferedMigration } from '../vfio-user/migration-discovery.ts';
import { openRegionPort } from '../vfio-user/region-port.ts';
import { bootGuestDriver } from '../vmm/guest/guest-driver.ts';
import { GuestMemory } from '../vmm/guest/guest-memory.ts';
import { chooseFlavor, type FlavorChoice } from '../vmm/vfio/attach.ts';
import { SeedRegionClient } from '../vmm/vfio/seed-region-client.ts';
import { type Rule, readableBars } from './checks.ts';
import { type ConformReport, RuleFailure, type RuleResult, RuleSkipped, summarize } from './report.ts';
import { SEED_RULES, type SeedContext, type SeedTarget } from './seed.ts';
import { V1_RULES, type V1Context, type V1Target } from './v1.ts';
import { V2_RULES, type V2Context, type V2Target } from './v2.ts';

export interface ConformOptions {
  /** Two sockets of devices of the same kind: A is saved, B resumes A's state. */
  sockets: readonly [string, string];
  flavor?: FlavorChoice;
  /** Guest memory mapped into A for the dirty-page rule (default 16 MiB). */
  guestBytes?: number;
  /** How long the dirty-page rule waits for the device to write guest memory (default 3000 ms). */
  dmaWaitMs?: number;
  /**
   * Called once per device right after connecting, before any rule: for a device that needs something set
   * up first as its guest driver would (libvfio-user's sample runs only with a future time in BAR0).
   */
  prepare?: (client: VfioUserClient, which: 'A' | 'B') => Promise<void>;
  /** Called with each result as it is decided. */
  onResult?: (r: RuleResult) => void;
}

/** Which device's connection closed during which rule: later failures then say the device is gone. */
type Losses = Map<string, string>;

async function runRules<C>(
  rules: readonly Rule<C>[],
  ctx: C,
  losses: Losses,
  current: { id: string },
  onResult?: (r: RuleResult) => void,
): Promise<RuleResult[]> {
  const results: RuleResult[] = [];
  for (const r of rules) {
    current.id = r.id;
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
      const gone = [...losses].map(([who, during]) => `device ${who} is gone (its connection closed during ${during})`);
      if (!skipped && gone.length) result.detail += `; ${gone.join('; ')}`;
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
    const losses: Losses = new Map();
    const current = { id: 'connecting' };
    ca.on('close', () => losses.has('A') || losses.set('A', current.id));
    cb.on('close', () => losses.has('B') || losses.set('B', current.id));
    await o.prepare?.(ca, 'A');
    await o.prepare?.(cb, 'B');
    const offered = await discoverMigration(ca);
    const pick = chooseFlavor(o.sockets[0], offered, o.flavor ?? 'auto');
    const offeredB = await discoverMigration(cb);
    const pickB = offeredB.find((x) => x.flavor === pick.flavor);
    if (!pickB) {
      throw new VfioError(
        Errno.EINVAL,
        `${o.sockets[1]} offers ${describeOffered(offeredB)}, not ${pick.flavor} as ${o.sockets[0]} does`,
      );
    }
    const guest = GuestMemory.create(o.guestBytes ?? 16 << 20, 'vfio-migrate-conform');
    cleanup.push(() => guest.close());
    await ca.dmaMap({ iova: 0n, size: BigInt(guest.size), fd: guest.fd });
    const ring = BigInt(Math.min(1 << 20, guest.size));
    const common = {
      guest,
      startDma: async () => (await bootGuestDriver(ca, BigInt(guest.size) - ring, ring)) !== null,
      dmaWaitMs: o.dmaWaitMs ?? 3000,
    };
    const closeFd = (fd: number) => native().close(fd);
    const sockets = [...o.sockets];
    switch (pick.flavor) {
      case 'seed': {
        const target = async (client: VfioUserClient): Promise<SeedTarget> => {
          const found = (await discoverMigration(client)).find((x) => x.flavor === 'seed');
          if (found?.flavor !== 'seed') throw new Error('no seed region');
          const port = await openRegionPort(client, found.region.index);
          cleanup.push(() => port.close());
          const bars = await readableBars(client, closeFd);
          return { client, found: found.region, port, region: new SeedRegionClient(port), bars };
        };
        const ctx: SeedContext = { a: await target(ca), b: await target(cb), ...common };
        return summarize('seed', sockets, await runRules(SEED_RULES, ctx, losses, current, o.onResult));
      }
      case 'v1': {
        const target = async (client: VfioUserClient, found: OfferedMigration): Promise<V1Target> => {
          if (found.flavor !== 'v1') throw new Error('no v1 region');
          return { client, found: found.region, bars: await readableBars(client, closeFd) };
        };
        const ctx: V1Context = { a: await target(ca, pick), b: await target(cb, pickB), ...common };
        return summarize('v1', sockets, await runRules(V1_RULES, ctx, losses, current, o.onResult));
      }
      case 'v2': {
        const target = async (client: VfioUserClient, found: OfferedMigration): Promise<V2Target> => {
          if (found.flavor !== 'v2') throw new Error('no v2 feature');
          return { client, flags: found.flags, bars: await readableBars(client, closeFd) };
        };
        const ctx: V2Context = { a: await target(ca, pick), b: await target(cb, pickB), ...common };
        return summarize('v2', sockets, await runRules(V2_RULES, ctx, losses, current, o.onResult));
      }
      default:
        throw new VfioError(Errno.ENOTSUP, `no conformance rules for the ${String(pick satisfies never)} flavor`);
    }
  } finally {
    for (const c of cleanup.reverse()) c();
    for (const c of clients) c.close();
  }
}
