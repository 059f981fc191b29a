// Holding a migration in one phase for as long as a fault test needs, whatever the machine's speed: the
// TCP proxy between the VMMs stops taking the source's bytes at a chosen point of the stream (the source's
// writes then block), keeps them (the source finishes while the destination waits), or holds the
// destination's READY or the source's GO. Each returns once the phase is reached and checks it is the one
// meant (query-migrate, query-status). The fault tests' rows (support/fault-table.ts) inject from there.

import assert from 'node:assert/strict';
import { ReturnPathType } from '../../../src/stream/return-path.ts';
import type { FaultContext, FaultExpect, FaultRow } from './fault-table.ts';
import { type FaultPairOptions, query, quiesce, type Snapshot, waitForPhase, waitUntil } from './faults.ts';
import type { TcpProxy } from './tcp-proxy.ts';

export const MiB = 1 << 20;

/** Stall timeouts far beyond any test's need on both sides: in rows that hold a phase, only the injected
 * fault ends the migration (a safety net, never what is tested). */
const HOLD_STALL = ['--stall-timeout', '120000'];
export const HELD: FaultPairOptions = { sourceArgs: HOLD_STALL, destinationArgs: HOLD_STALL };

function proxyOf(ctx: FaultContext): TcpProxy {
  assert.ok(ctx.proxy, 'this phase is held by the proxy (row.proxy)');
  return ctx.proxy;
}

/** Starts the migration (to the proxy when the row has one). */
export async function startMigration(ctx: FaultContext): Promise<undefined> {
  await ctx.pair.src.execute('migrate', { uri: ctx.uri });
  return undefined;
}

/** The RAM bulk pass, held after 8 MiB of the 64 MiB guest: the proxy stops reading the source. */
export async function holdBulkPass(ctx: FaultContext): Promise<undefined> {
  const proxy = proxyOf(ctx);
  proxy.upAt(8 * MiB, 'pause');
  await startMigration(ctx);
  await waitUntil(ctx.pair.src, () => proxy.upReceived >= 8 * MiB, '8 MiB of the bulk pass');
  const at = await query(ctx.pair.src);
  assert.equal(at.status, 'active');
  assert.equal(at.ram?.['dirty-sync-count'], 1, 'still the first pass');
  assert.ok((at.ram?.transferred ?? 0) < (at.ram?.total ?? 0), 'the bulk pass has not finished');
  return undefined;
}

/**
 * Pre-copy iterations, on a pair with a 128 MiB device: its first helping (64 MiB) goes with the RAM bulk
 * pass, the other in the second pass; a downtime limit of 1 ms keeps the migration iterating, and the guest
 * dirties pages meanwhile. The proxy stops reading 8 MiB into the second pass (the source then waits on a
 * write with tens of MiB to go); the guest is quiesced and the snapshot taken then (pages had to change to
 * get here). Returns that snapshot.
 */
export async function holdPrecopyIterations(ctx: FaultContext): Promise<Snapshot> {
  const proxy = proxyOf(ctx);
  proxy.upAt(136 * MiB, 'pause');
  await ctx.pair.src.execute('migrate-set-parameters', { 'downtime-limit': 1 });
  await ctx.pair.src.execute('x-guest-dirty-rate', { 'pages-per-second': 20_000 });
  await startMigration(ctx);
  await waitUntil(ctx.pair.src, () => proxy.upReceived >= 136 * MiB, 'the second pass under way');
  const snap = await quiesce(ctx.pair.src);
  const at = await query(ctx.pair.src);
  assert.equal(at.status, 'active', 'still iterating');
  assert.ok((at.ram?.['dirty-sync-count'] ?? 0) >= 2, 'past the bulk pass');
  return snap;
}

/**
 * The device's stop-and-copy: a 128 MiB device sends half its state in the first pass (one helping per
 * pass), the downtime limit lets the rest go after the VM stops, and the proxy stops reading 16 MiB
 * into that rest (64 MiB of RAM + 64 MiB of device data before the stop).
 */
export async function holdDeviceStopAndCopy(ctx: FaultContext): Promise<undefined> {
  const proxy = proxyOf(ctx);
  proxy.upAt(144 * MiB, 'pause');
  await ctx.pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 96 * MiB, 'downtime-limit': 20_000 });
  await startMigration(ctx);
  const at = await waitForPhase(
    ctx.pair.src,
    (i) => i.status === 'device' && (i.vfio?.transferred ?? 0) > 68 * MiB && proxy.upReceived >= 144 * MiB,
    'device data moving after the stop',
  );
  assert.equal((await ctx.pair.src.execute<{ status: string }>('query-status')).status, 'finish-migrate');
  assert.ok((at.vfio?.transferred ?? 0) < 128 * MiB, 'the device has more to send');
  return undefined;
}

/** The destination loading: it gets the first 8 MiB, the proxy keeps the rest; the source has sent
 * everything (EOF) and waits, stopped, for READY. */
export async function holdLoad(ctx: FaultContext): Promise<undefined> {
  const proxy = proxyOf(ctx);
  proxy.upAt(8 * MiB, 'buffer');
  await startMigration(ctx);
  await waitUntil(ctx.pair.src, () => proxy.sawEof, 'the source wrote EOF');
  const at = await ctx.pair.src.execute<{ status: string }>('query-status');
  assert.equal(at.status, 'finish-migrate', 'the source is stopped, waiting for READY');
  assert.ok(proxy.upForwarded < proxy.upReceived, 'the destination has not had the whole stream');
  return undefined;
}

/** READY sent by the destination and held by the proxy: the source waits in the handshake. */
export async function holdReady(ctx: FaultContext): Promise<undefined> {
  const proxy = proxyOf(ctx);
  proxy.setDown('hold');
  await startMigration(ctx);
  await waitUntil(ctx.pair.src, () => readyHeld(proxy), 'the destination sent READY');
  assert.equal((await query(ctx.pair.src)).status, 'device', 'the source waits in the handshake');
  return undefined;
}

/** The destination's READY, decoded by the proxy, was held or dropped there (never forwarded). */
export function readyHeld(proxy: TcpProxy): boolean {
  const ready = proxy.downMessages.filter((m) => m.type === ReturnPathType.READY);
  return ready.length > 0 && ready.every((m) => m.fate !== 'forward');
}

/** The source's GO sent (it committed) and held by the proxy. */
export async function holdGo(ctx: FaultContext): Promise<undefined> {
  const proxy = proxyOf(ctx);
  proxy.afterEof = 'buffer';
  await startMigration(ctx);
  await waitUntil(ctx.pair.src, () => proxy.upAfterEof > 0, 'the source sent GO');
  return undefined;
}

/**
 * A row that holds a phase with the proxy (`hold`), then injects its fault there (`act`), on a pair with
 * long stall timeouts (HELD), so only the fault ends the migration.
 */
export function heldRow(o: {
  name: string;
  fault: string;
  phase: string;
  hold: (ctx: FaultContext) => Promise<Snapshot | undefined>;
  act: (ctx: FaultContext) => Promise<void>;
  expect: FaultExpect;
  pair?: FaultPairOptions;
  after?: FaultRow['after'];
}): FaultRow {
  return {
    name: o.name,
    fault: o.fault,
    phase: o.phase,
    pair: { ...HELD, ...o.pair },
    proxy: true,
    inject: async (ctx) => {
      const snap = await o.hold(ctx);
      await o.act(ctx);
      return snap;
    },
    after: o.after,
    expect: o.expect,
  };
}

/** One fault in each phase the proxy holds the same way: the RAM bulk pass, pre-copy iterations and the
 * device's stop-and-copy (the last two on a 128 MiB device, see their holds). */
export function inHeldPhases(base: {
  fault: string;
  act: (ctx: FaultContext) => Promise<void>;
  expect: FaultExpect;
}): FaultRow[] {
  const big = { deviceMem: '128M' };
  return [
    heldRow({ ...base, name: 'during the RAM bulk pass', phase: 'ram-bulk', hold: holdBulkPass }),
    heldRow({
      ...base,
      name: 'during pre-copy iterations (guest dirtying pages)',
      phase: 'precopy-iterations',
      hold: holdPrecopyIterations,
      pair: big,
    }),
    heldRow({
      ...base,
      name: "during the device's stop-and-copy",
      phase: 'device-stop-and-copy',
      hold: holdDeviceStopAndCopy,
      pair: big,
    }),
  ];
}
