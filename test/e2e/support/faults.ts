// Helpers shared by the fault-injection tests (test/e2e/faults-*.test.ts, run by support/fault-table.ts):
// start a pair whose guest and device can be held still, wait for a migration phase, and take a snapshot
// (every page's digest, the device's digest and device_state).

import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import {
  type LocalPair,
  type LocalPairOptions,
  startLocalPair,
  waitForMigration,
} from '../../../src/harness/local-hosts.ts';
import type { QmpClient } from '../../../src/vmm/qmp/client.ts';

export type Info = {
  status: string;
  'error-desc'?: string;
  ram?: { transferred: number; total: number; 'dirty-sync-count': number; normal: number };
  vfio?: { transferred: number };
};

export interface Snapshot {
  ram: string;
  /** 16 bytes per guest page */
  pages: Buffer;
  /** null: a device that is lost (its server gone) */
  devices: (string | null)[];
  deviceStates: (number | null)[];
}

/** Device-state value RUNNING (DeviceState.RUNNING). */
export const DEVICE_RUNNING = 1;

export interface FaultPairOptions {
  memSize?: string;
  /** large-memory device memory (random contents; default 8M) */
  deviceMem?: string;
  /** Source VMM extra arguments (e.g. --stall-timeout). */
  sourceArgs?: string[];
  /** Destination VMM extra arguments. */
  destinationArgs?: string[];
  /** Keep every process's stderr (trace lines) here. */
  lines?: string[];
  /** The destination starts the VM after GO (default: it stays paused, to be compared). */
  autostart?: boolean;
  /** Start the retry's fresh destination at once, in the background (default true). */
  spare?: boolean;
  /** Multifd on both sides with this many channels (startLocalPair's `multifd`). */
  multifd?: { channels: number };
}

/**
 * A pair for fault tests: an idle guest with random RAM (dirty rate 0, the `random` pattern for when a
 * test turns it on) on 1 vCPU, and a large-memory device with random contents and no background work, so the source's
 * state changes only when a test makes it. Destinations stay paused after loading so they can be
 * compared with the source.
 */
export async function startFaultPair(o: FaultPairOptions = {}): Promise<LocalPair> {
  const device = {
    device: 'large-memory',
    deviceArgs: ['--device-mem', o.deviceMem ?? '8M', '--work-rate', '0', '--device-fill', 'random'],
  };
  const guest = ['--dirty-rate', '0', '--pattern', 'random', '--vcpus', '1'];
  // The source's RAM starts random (every pass carries real pages); the destination's is overwritten.
  const options: LocalPairOptions = {
    memSize: o.memSize ?? '64M',
    paused: !o.autostart,
    source: { ...device, vmmArgs: [...guest, '--fill', 'random', ...(o.sourceArgs ?? [])] },
    destination: { ...device, vmmArgs: [...guest, ...(o.destinationArgs ?? [])] },
    log: o.lines ? (l) => o.lines!.push(l) : undefined,
    multifd: o.multifd,
  };
  const pair = await startLocalPair(options);
  // The retry's destination starts while the first attempt runs (it waits on throttled links and faults).
  if (o.spare !== false) pair.prepareDestination();
  return pair;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function query(qmp: QmpClient): Promise<Info> {
  return qmp.execute<Info>('query-migrate');
}

/** Polls query-migrate until `pred` holds; returns that answer. Fails if the migration ended first. */
export async function waitForPhase(qmp: QmpClient, pred: (i: Info) => boolean, what: string, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = await query(qmp);
    if (process.env.FAULT_DEBUG) console.log('phase?', JSON.stringify(info));
    if (pred(info)) return info;
    if (['completed', 'failed', 'cancelled'].includes(info.status))
      throw new Error(`migration ended ${info.status} before ${what}: ${info['error-desc'] ?? ''}`);
    if (Date.now() > deadline) throw new Error(`no ${what} within ${timeoutMs} ms (status ${info.status})`);
    await sleep(15);
  }
}

export async function snapshot(qmp: QmpClient): Promise<Snapshot> {
  // Hashing every page and a device's memory can take long on a loaded machine (2 cores, many processes).
  const d = await qmp.execute<{ ram: string; pages: string; devices: { digest: string | null }[] }>(
    'x-query-digests',
    { pages: true },
    { timeoutMs: 120_000 },
  );
  const vfio = await qmp.execute<{ 'device-state': number | null }[]>('x-query-vfio');
  return {
    ram: d.ram,
    pages: Buffer.from(d.pages, 'base64'),
    devices: d.devices.map((x) => x.digest),
    deviceStates: vfio.map((x) => x['device-state']),
  };
}

/** Pages whose digest differs between two snapshots of the same guest. */
export function pagesDiffering(a: Snapshot, b: Snapshot): number {
  assert.equal(a.pages.byteLength, b.pages.byteLength);
  let n = 0;
  for (let at = 0; at < a.pages.byteLength; at += 16) if (a.pages.compare(b.pages, at, at + 16, at, at + 16) !== 0) n++;
  return n;
}

/** Stops the guest's writes (rate 0) and returns a snapshot once two in a row agree. */
export async function quiesce(qmp: QmpClient): Promise<Snapshot> {
  await qmp.execute('x-guest-dirty-rate', { 'pages-per-second': 0 });
  let last = await snapshot(qmp);
  for (let i = 0; i < 50; i++) {
    await sleep(50);
    const next = await snapshot(qmp);
    if (next.ram === last.ram && next.devices.join() === last.devices.join()) return next;
    last = next;
  }
  throw new Error('the guest did not become idle');
}

/**
 * Waits until `cond` holds (e.g. a proxy saw the source's EOF); fails at once, with the migration's own
 * error, if the migration ended first.
 */
export async function waitUntil(qmp: QmpClient, cond: () => boolean, what: string, timeoutMs = 90_000) {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    const info = await query(qmp);
    if (cond()) return;
    if (['completed', 'failed', 'cancelled'].includes(info.status))
      throw new Error(`migration ended ${info.status} before ${what}: ${info['error-desc'] ?? ''}`);
    if (Date.now() > deadline) throw new Error(`no ${what} within ${timeoutMs} ms (status ${info.status})`);
    await sleep(15);
  }
}

/** Resolves once a line matching `re` has been logged (the pair's `lines`). */
export async function waitForLine(lines: string[], re: RegExp, timeoutMs = 30_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const hit = lines.find((l) => re.test(l));
    if (hit) return hit;
    if (Date.now() > deadline) throw new Error(`no line matching ${re} within ${timeoutMs} ms`);
    await sleep(10);
  }
}

/** Waits for the migration to end and returns its final answer. */
export async function ended(qmp: QmpClient, timeoutMs = 60_000): Promise<Info> {
  return (await waitForMigration(qmp, { timeoutMs, intervalMs: 20 })) as Info;
}

export async function kill(p: { child: ChildProcess }, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  const gone = p.child.exitCode !== null || p.child.signalCode !== null;
  const exited = gone ? Promise.resolve() : once(p.child, 'exit');
  p.child.kill(signal);
  if (signal === 'SIGKILL') await exited;
}

export { sleep };
