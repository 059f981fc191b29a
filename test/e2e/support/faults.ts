// Shared by the fault-injection tests: a source whose guest has written some memory and then gone idle
// (so page digests before and after an attempt must be equal, not merely similar), the checks every
// fault test ends with (the source runs, every page and the device state unchanged, the device in
// RUNNING), a fresh destination for a retry, and the FAULT-MATRIX line each test prints for
// docs/reliability.md.

import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  type Destination,
  type HostOptions,
  type LocalPair,
  type LocalPairOptions,
  startDestination,
  startLocalPair,
  waitForMigration,
} from '../../../src/vmm/local-hosts.ts';
import type { QmpClient } from '../../../src/vmm/qmp/client.ts';

export const MEM = '64M';
/** A device with state worth checking (random memory) and no background work: its digest only changes if
 * a migration attempt changed it. */
export const DEVICE_ARGS = ['--device-mem', '4M', '--work-rate', '0', '--device-fill', 'random'];
export const DEVICE: HostOptions = { device: 'large-memory', deviceArgs: DEVICE_ARGS };
export const RUNNING = 1;

export type DeviceDigest = { name: string; digest: string | null; lost?: string };
export type Digests = { ram: string; devices: DeviceDigest[]; pages: string };
export type VfioInfo = { name: string; 'device-state': number | null; lost?: string };
export type MigrateInfo = { status: string; 'error-desc'?: string };

/** A pair whose processes' stderr lines are kept (to check that an injected fault really fired). */
export interface FaultPair extends LocalPair {
  lines: string[];
  options: LocalPairOptions;
}

/**
 * Starts a pair with a busy-then-idle guest: it dirties pages for a moment (so RAM is not all zero) and is
 * then set to 0 pages/s; returns once two digests in a row agree.
 */
export async function startFaultPair(o: {
  sourceDeviceArgs?: string[];
  destination?: HostOptions;
}): Promise<FaultPair> {
  const lines: string[] = [];
  const options: LocalPairOptions = {
    memSize: MEM,
    paused: true,
    source: {
      device: 'large-memory',
      deviceArgs: [...DEVICE_ARGS, ...(o.sourceDeviceArgs ?? [])],
      vmmArgs: ['--dirty-rate', '20000'],
    },
    destination: o.destination ?? DEVICE,
    log: (l) => lines.push(l),
  };
  const pair = await startLocalPair(options);
  try {
    // The vCPU threads take a moment to start: wait until they have written something, then idle them.
    const blank = await digests(pair.src);
    for (let i = 0; (await digests(pair.src)).pages === blank.pages; i++) {
      if (i > 200) throw new Error('the guest wrote no memory');
      await sleep(50);
    }
    await pair.src.execute('x-set-dirty-rate', { rate: 0 });
    let last = await digests(pair.src);
    for (let i = 0; ; i++) {
      await sleep(50);
      const now = await digests(pair.src);
      if (now.pages === last.pages) break;
      if (i > 100) throw new Error('the guest did not go idle');
      last = now;
    }
  } catch (err) {
    await pair.stop();
    throw err;
  }
  return Object.assign(pair, { lines, options });
}

export function digests(qmp: QmpClient): Promise<Digests> {
  return qmp.execute<Digests>('x-query-digests', { pages: true });
}

/** Pages whose digest differs between two x-query-digests answers (16 bytes per page). */
export function pagesDiffering(a: Digests, b: Digests): number {
  const x = Buffer.from(a.pages, 'base64');
  const y = Buffer.from(b.pages, 'base64');
  assert.equal(x.byteLength, y.byteLength);
  let n = 0;
  for (let at = 0; at < x.byteLength; at += 16) if (x.compare(y, at, at + 16, at, at + 16) !== 0) n++;
  return n;
}

/** Starts a migration and waits for its end; returns the source's final query-migrate. */
export async function attempt(pair: LocalPair, uri: string): Promise<MigrateInfo> {
  await pair.src.execute('migrate', { uri });
  return (await waitForMigration(pair.src, { timeoutMs: 60_000, intervalMs: 25 })) as MigrateInfo;
}

/**
 * What every fault test checks on the source afterwards: the guest runs, every page and the device state
 * equal their values before the attempt, and the device is back in RUNNING. Returns pages lost (0).
 */
export async function assertSourceIntact(pair: LocalPair, before: Digests): Promise<number> {
  assert.deepEqual(await pair.src.execute('query-status'), { running: true, singlestep: false, status: 'running' });
  const vfio = await pair.src.execute<VfioInfo[]>('x-query-vfio');
  assert.deepEqual(
    vfio.map((d) => d['device-state']),
    [RUNNING],
    'the device is back in RUNNING',
  );
  const after = await digests(pair.src);
  const lost = pagesDiffering(before, after);
  assert.equal(lost, 0, 'every guest page as before the attempt');
  assert.equal(after.ram, before.ram);
  assert.deepEqual(after.devices, before.devices, 'the device state as before the attempt');
  return lost;
}

/** A destination whose incoming migration failed: it says why, and its VM never started. */
export async function assertDestinationRefused(dst: QmpClient, why: RegExp): Promise<string> {
  const info = (await waitForMigration(dst, { timeoutMs: 60_000, intervalMs: 25 })) as MigrateInfo;
  assert.equal(info.status, 'failed');
  assert.match(info['error-desc'] ?? '', why);
  // Never a half-loaded VM: the destination stays waiting for a migration, stopped.
  assert.deepEqual(await dst.execute('query-status'), { running: false, singlestep: false, status: 'inmigrate' });
  await assert.rejects(dst.execute('cont'), /not finalized/);
  return info['error-desc']!;
}

/** A fresh destination for `pair` (same devices as the pair's own unless given). */
export function freshDestination(pair: FaultPair, destination: HostOptions = DEVICE): Promise<Destination> {
  return startDestination(pair, { ...pair.options, destination });
}

/**
 * The retry every fault test ends with: a migration to a fresh destination completes, and the destination
 * holds exactly the source's pages and device state.
 */
export async function assertRetrySucceeds(pair: FaultPair, via?: (dst: Destination) => Promise<string>): Promise<void> {
  const dst = await freshDestination(pair);
  try {
    const info = await attempt(pair, via ? await via(dst) : dst.uri);
    assert.equal(info.status, 'completed', info['error-desc']);
    const [a, b] = await Promise.all([digests(pair.src), digests(dst.qmp)]);
    assert.equal(pagesDiffering(a, b), 0);
    assert.deepEqual(
      b.devices.map((d) => d.digest),
      a.devices.map((d) => d.digest),
    );
  } finally {
    await dst.stop();
  }
}

/** The stderr line a device server prints when an injected fault fires. */
export async function faultFired(pair: FaultPair, role: string, pattern: RegExp): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (pair.lines.some((l) => l.startsWith(`${role}:`) && pattern.test(l))) return;
    await sleep(20);
  }
  assert.fail(`no "${pattern}" from ${role}; its lines: ${pair.lines.filter((l) => l.startsWith(role)).join('\n')}`);
}

/** One line for docs/reliability.md's fault matrix. */
export function matrixLine(f: { fault: string; phase: string; outcome: string; pagesLost: number | string }): void {
  console.log(`FAULT-MATRIX fault=${f.fault} phase=${f.phase} outcome=${f.outcome} pages_lost=${f.pagesLost}`);
}
