// What the device-fault and stream-corruption tests add to support/faults.ts: a pair whose source device
// server carries injected faults (`serve --x-fault`) or whose destination device differs, with its
// processes' stderr kept (to check a fault really fired where it was meant to), one attempt to an address,
// and the destination-side checks (it failed, says why, and never started a VM).

import assert from 'node:assert/strict';
import { type HostOptions, type LocalPair, startLocalPair } from '../../../src/harness/local-hosts.ts';
import type { QmpClient } from '../../../src/vmm/qmp/client.ts';
import { ended, type Info, pagesDiffering, type Snapshot, sleep, snapshot } from './faults.ts';

export const VFIO_NAME = '0000:00:05.0';
/** A device with state worth checking (random memory) and no background work: its digest changes only
 * if an attempt changed it. */
export const DEVICE_ARGS = ['--device-mem', '4M', '--work-rate', '0', '--device-fill', 'random'];
export const DEVICE: HostOptions = { device: 'large-memory', deviceArgs: DEVICE_ARGS };
const GUEST = ['--dirty-rate', '0', '--pattern', 'random', '--vcpus', '1'];

export interface DevicePair extends LocalPair {
  /** Every process's stderr lines, prefixed with its role (src-device, dst-vmm …). */
  lines: string[];
  /** The source after its guest wrote memory and went idle: what every attempt must leave. */
  start: Snapshot;
}

/** A 64 MiB guest with random contents, idle; `sourceFaults` go to the source's device server. */
export async function startDevicePair(
  o: { sourceFaults?: string[]; destination?: HostOptions } = {},
): Promise<DevicePair> {
  const lines: string[] = [];
  const pair = await startLocalPair({
    memSize: '64M',
    paused: true,
    source: {
      ...DEVICE,
      deviceArgs: [...DEVICE_ARGS, ...(o.sourceFaults ?? []).flatMap((f) => ['--x-fault', f])],
      // Guest RAM starts random (as the other fault tests' guests do), so every page carries data. The one
      // trace event these tests look for: a save session left over from a failed attempt.
      vmmArgs: [...GUEST, '--fill', 'random', '--trace', 'vfio_save_setup_stale_session'],
    },
    destination: { vmmArgs: GUEST, ...(o.destination ?? DEVICE) },
    log: (l) => lines.push(l),
  });
  try {
    const start = await snapshot(pair.src);
    return Object.assign(pair, { lines, start });
  } catch (err) {
    await pair.stop();
    throw err;
  }
}

/** Starts a migration to `uri` and waits for its end; returns the source's final query-migrate. */
export async function attempt(pair: LocalPair, uri: string): Promise<Info> {
  await pair.src.execute('migrate', { uri });
  return ended(pair.src);
}

/** A destination whose incoming migration failed: it says why, and its VM never started. */
export async function assertDestinationRefused(dst: QmpClient, why: RegExp): Promise<string> {
  const info = await ended(dst);
  assert.equal(info.status, 'failed');
  assert.match(info['error-desc'] ?? '', why);
  // Never a half-loaded VM: the destination still waits for its migration, stopped, and will not start.
  assert.deepEqual(await dst.execute('query-status'), { running: false, singlestep: false, status: 'inmigrate' });
  await assert.rejects(dst.execute('cont'), /not finalized/);
  return info['error-desc']!;
}

/** Waits for the stderr line a device server prints when an injected fault fires. */
export async function faultFired(pair: DevicePair, role: string, pattern: RegExp): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (pair.lines.some((l) => l.startsWith(`${role}:`) && pattern.test(l))) return;
    await sleep(20);
  }
  assert.fail(`no "${pattern}" from ${role}; its lines:\n${pair.lines.filter((l) => l.startsWith(role)).join('\n')}`);
}

/**
 * The retry after the faults: a migration to a fresh destination (with `destination` overrides, and
 * through `via` when given, e.g. a proxy) completes, and the destination holds exactly `expect`: the
 * source's pages and device state from before the failed attempts (an idle guest). Returns pages lost (0).
 */
export async function retryTo(
  pair: DevicePair,
  o: { destination?: Partial<HostOptions>; via?: (uri: string) => Promise<string> } = {},
): Promise<number> {
  await pair.freshDestination(o.destination);
  const info = await attempt(pair, o.via ? await o.via(pair.uri) : pair.uri);
  assert.equal(info.status, 'completed', `the retry ended ${info.status}: ${info['error-desc'] ?? ''}`);
  assert.equal((await ended(pair.dst)).status, 'completed');
  const got = await snapshot(pair.dst);
  const lost = pagesDiffering(pair.start, got);
  assert.equal(lost, 0, `${lost} pages differ at the retry's destination`);
  assert.equal(got.ram, pair.start.ram);
  assert.deepEqual(got.devices, pair.start.devices, 'device state equal at the retry destination');
  return lost;
}
