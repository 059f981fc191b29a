// What the device-fault and stream-corruption tests add to support/faults.ts: a bench (one source for
// several rows of support/fault-table.ts) whose source device server carries injected faults
// (`serve --x-fault`) or whose destination device differs, with its processes' stderr kept (to check a
// fault really fired where it was meant to), and one attempt to an address.

import assert from 'node:assert/strict';
import { type HostOptions, type LocalPair, startLocalPair } from '../../../src/harness/local-hosts.ts';
import type { FaultBench } from './fault-table.ts';
import { ended, type Info, sleep, snapshot } from './faults.ts';

export const VFIO_NAME = '0000:00:05.0';
/** A device with state worth checking (random memory) and no background work: its digest changes only
 * if an attempt changed it. */
export const DEVICE_ARGS = ['--device-mem', '4M', '--work-rate', '0', '--device-fill', 'random'];
export const DEVICE = { device: 'large-memory', deviceArgs: DEVICE_ARGS } satisfies HostOptions;
const GUEST = ['--dirty-rate', '0', '--pattern', 'random', '--vcpus', '1'];

/** A 64 MiB guest with random contents, idle; `sourceFaults` go to the source's device server. */
export async function startDeviceBench(
  o: { sourceFaults?: string[]; destination?: HostOptions } = {},
): Promise<FaultBench> {
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
    return { pair, lines, start: await snapshot(pair.src), attempts: 0 };
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

/** Waits for the stderr line a device server prints when an injected fault fires. */
export async function faultFired(lines: string[], role: string, pattern: RegExp): Promise<void> {
  // The line may trail the migration's failure on a busy machine: 60 s is a safety net, not a measure.
  for (const end = performance.now() + 60_000; performance.now() < end; ) {
    if (lines.some((l) => l.startsWith(`${role}:`) && pattern.test(l))) return;
    await sleep(20);
  }
  assert.fail(`no "${pattern}" from ${role}; its lines:\n${lines.filter((l) => l.startsWith(role)).join('\n')}`);
}
