// `vfio-migrate demo` (npm start): two device servers, a source VMM with a live guest and a device doing
// DMA, and a destination VMM, as four processes on this machine; a live migration over loopback TCP with a
// progress bar; then proof: the digest of every guest page and of the device at the destination equals
// the source's at the stop point, and the guest goes on at the destination.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type DeviceOptions, startLocalPair, waitForMigration } from '../harness/local-hosts.ts';
import type { Verification } from '../report/report-data.ts';
import { differingPages } from '../vmm/guest/guest-memory.ts';
import { type DeviceDigest, deviceMismatches } from './device-verdict.ts';
import { bytes, ms } from './format.ts';
import { MigrationProgress, snapshotOf } from './migration-progress.ts';
import type { DemoOptions } from './options/demo.ts';

type Digests = { ram: string; devices: DeviceDigest[]; pages?: string };
type Info = {
  status: string;
  'total-time'?: number;
  downtime?: number;
  'expected-downtime'?: number;
  'x-switchover'?: Record<string, number>;
  ram?: {
    transferred: number;
    remaining: number;
    total: number;
    duplicate: number;
    normal: number;
    mbps: number;
    'dirty-sync-count': number;
    'dirty-pages-rate': number;
  };
  vfio?: { transferred: number };
  'error-desc'?: string;
};

/** What `demo --json` prints: one object, once the migration and its checks are over. */
export interface DemoResult {
  /** verified: RAM and device digests equal at the stop point and the guest went on at the destination. */
  verdict: 'verified' | 'failed';
  /** The source's final migration status (completed, failed, cancelled). */
  status: string;
  error?: string;
  /** null: not compared (the migration did not complete). */
  ramDigestsEqual: boolean | null;
  deviceDigestsEqual: boolean | null;
  destinationRunsOn: boolean | null;
  downtimeMs: number | null;
  downtimeLimitMs: number;
  totalTimeMs: number | null;
  /** Dirty-log syncs: the bulk pass, then one per round of pages dirtied meanwhile. */
  passes: number | null;
  bytes: { total: number; ram: number; device: number } | null;
  ramPages: { normal: number; zero: number } | null;
  throughputBytesPerSecond: number | null;
  /** Where the downtime went, in ms (stop, sync, complete, state, finish, expected). */
  switchover: Record<string, number> | null;
  checks: Verification['checks'];
  report?: string;
}

export async function runDemo(o: DemoOptions): Promise<number> {
  // Under --json stdout carries the one JSON object only; the story goes to stderr.
  const say = o.json ? (line: string) => process.stderr.write(`${line}\n`) : (line: string) => console.log(line);
  const mixed = o.flavor === 'mixed';
  const argsFor = (flavor: string, device: string) => [
    '--flavor',
    flavor,
    '--data-section',
    o.dataSection,
    ...(device === 'large-memory' ? ['--device-mem', String(o.deviceMem), '--work-rate', String(o.deviceRate)] : []),
  ];
  const deviceArgs = argsFor(o.flavor, o.device);
  // Mixed: one device per flavor in one VM, each VMM choosing every device's flavor from what it offers.
  const devices: DeviceOptions[] | undefined = mixed
    ? [
        { device: o.device, deviceArgs: argsFor('seed', o.device) },
        { device: 'register-file', deviceArgs: argsFor('v1', 'register-file') },
        { device: o.device, deviceArgs: argsFor('v2', o.device) },
      ]
    : undefined;
  // A single flavor is forced on the VMMs too, so that a fallback cannot pass for the flavor asked for.
  const vmmArgs = ['--dirty-rate', String(o.dirtyRate), '--flavor', mixed ? 'auto' : o.flavor];
  // The recording lives outside the pair's directory: it is read once the source VMM has exited.
  const recordDir = o.report ? mkdtempSync(join(tmpdir(), 'vfio-migrate-record-')) : undefined;
  const recording = recordDir ? join(recordDir, 'source.jsonl') : undefined;
  const verification: Verification = { ok: false, checks: [] };
  const result: DemoResult = {
    verdict: 'failed',
    status: 'setup',
    ramDigestsEqual: null,
    deviceDigestsEqual: null,
    destinationRunsOn: null,
    downtimeMs: null,
    downtimeLimitMs: o.downtimeLimit,
    totalTimeMs: null,
    passes: null,
    bytes: null,
    ramPages: null,
    throughputBytesPerSecond: null,
    switchover: null,
    checks: verification.checks,
  };
  say(
    `vfio-migrate demo: a ${bytes(o.mem)} guest writing ${o.dirtyRate} pages/s, with ${mixed ? `three devices (seed ${o.device}, v1 register-file, v2 ${o.device})` : `a ${o.device} device`}` +
      `${o.device === 'large-memory' ? ` (${bytes(o.deviceMem)}, ${o.deviceRate} writes/s, each also a DMA write into the guest)` : ''}` +
      `, migrating live over loopback TCP (${mixed ? 'mixed flavors' : `flavor ${o.flavor}`}, ${o.dataSection} data section)`,
  );
  const t0 = performance.now();
  const pair = await startLocalPair({
    memSize: String(o.mem),
    paused: true,
    source: {
      device: o.device,
      deviceArgs: o.xPrecopyQuota > 0 ? [...deviceArgs, '--x-precopy-quota', String(o.xPrecopyQuota)] : deviceArgs,
      devices,
      vmmArgs: [...vmmArgs, ...(recording ? ['--record', recording] : [])],
    },
    destination: { device: o.device, deviceArgs, devices, vmmArgs },
    log: o.verbose ? (l) => process.stderr.write(`${l}\n`) : undefined,
  });
  let code: number;
  try {
    say(
      `started: source device server${mixed ? 's' : ''}, source VMM, destination device server${mixed ? 's' : ''}, destination VMM (${ms(performance.now() - t0)})`,
    );
    code = await migrateAndVerify(pair, o, say, result, verification);
  } finally {
    // The source VMM has flushed its recording once it has exited.
    await pair.stop();
    if (o.report && recording) {
      try {
        const { writeReport } = await import('./report.ts');
        writeReport(recording, o.report, { verification });
        say(`report:        ${o.report}`);
        result.report = o.report;
      } finally {
        rmSync(recordDir!, { recursive: true, force: true });
      }
    }
  }
  result.verdict = code === 0 ? 'verified' : 'failed';
  if (o.json) console.log(JSON.stringify(result, null, 2));
  return code;
}

/** The migration, the comparison at the stop point, the destination going on: fills `result` as it goes. */
async function migrateAndVerify(
  pair: Awaited<ReturnType<typeof startLocalPair>>,
  o: DemoOptions,
  say: (line: string) => void,
  result: DemoResult,
  verification: Verification,
): Promise<number> {
  await new Promise((r) => setTimeout(r, 1000)); // let the guest and the device run for a moment
  await pair.src.execute('migrate-set-parameters', { 'downtime-limit': o.downtimeLimit });
  await pair.src.execute('migrate', { uri: pair.uri });
  const bar = new MigrationProgress(process.stderr, { everyMs: 500 });
  let last: Info | undefined;
  let info: Info;
  try {
    info = (await waitForMigration(pair.src, {
      intervalMs: 100,
      timeoutMs: o.convergeWithin * 1000,
      onInfo: (raw) => {
        last = raw as Info;
        const snapshot = snapshotOf(raw);
        if (snapshot) bar.update(snapshot);
      },
    })) as Info;
  } catch (err) {
    if (last?.status !== 'active') throw err;
    bar.done();
    return notConverged(pair, o, last, result, verification);
  }
  bar.done();
  result.status = info.status;
  if (info.status !== 'completed') {
    result.error = info['error-desc'];
    console.error(`FAILED: the migration ended ${info.status}: ${info['error-desc'] ?? ''}`);
    verification.checks.push({ name: 'migration', ok: false, detail: `ended ${info.status}` });
    return 1;
  }
  const ram = info.ram!;
  const device = info.vfio?.transferred ?? 0;
  const sent = ram.transferred + device;
  const totalMs = info['total-time'] ?? 0;
  Object.assign(result, {
    downtimeMs: info.downtime ?? null,
    totalTimeMs: totalMs,
    passes: ram['dirty-sync-count'],
    bytes: { total: sent, ram: ram.transferred, device },
    ramPages: { normal: ram.normal, zero: ram.duplicate },
    throughputBytesPerSecond: Math.round((sent / Math.max(1, totalMs)) * 1000),
    switchover: info['x-switchover'] ?? null,
  });
  await waitForMigration(pair.dst);
  // Both sides are stopped now: the source in postmigrate, the destination loaded and paused.
  const [a, b] = await Promise.all([
    pair.src.execute<Digests>('x-query-digests'),
    pair.dst.execute<Digests>('x-query-digests'),
  ]);
  result.ramDigestsEqual = a.ram === b.ram;
  if (a.ram !== b.ram) {
    const [pa, pb] = await Promise.all([
      pair.src.execute<Digests>('x-query-digests', { pages: true }),
      pair.dst.execute<Digests>('x-query-digests', { pages: true }),
    ]);
    const diff = differingPages(Buffer.from(pa.pages!, 'base64'), Buffer.from(pb.pages!, 'base64'));
    console.error(`FAILED: guest RAM differs at the destination, first differing pages: ${diff.join(', ')}`);
  }
  verification.checks.push({
    name: 'guest RAM',
    ok: a.ram === b.ram,
    detail: a.ram === b.ram ? 'page digests equal at the stop point' : 'differs at the destination',
  });
  const problems = deviceMismatches(a.devices, b.devices);
  for (const problem of problems) console.error(`FAILED: ${problem}`);
  result.deviceDigestsEqual = problems.length === 0;
  verification.checks.push({
    name: a.devices.length === 1 ? `device ${a.devices[0]!.name}` : `${a.devices.length} devices`,
    ok: problems.length === 0,
    detail: problems.length === 0 ? 'state digest equal at the stop point' : problems.join('; '),
  });
  if (!result.ramDigestsEqual || !result.deviceDigestsEqual) return 1;
  // The guest goes on at the destination.
  await pair.dst.execute('cont');
  // Until its guest has written memory: seconds on a busy machine, so the wait is long (a safety net).
  // A guest and devices that write nothing (rates of 0) cannot show it: then running is all there is to see.
  const writes = o.dirtyRate > 0 || (o.device === 'large-memory' && o.deviceRate > 0);
  let status = await pair.dst.execute<{ status: string }>('query-status');
  let goesOn = !writes && status.status === 'running';
  for (const end = performance.now() + 60_000; writes && status.status === 'running' && performance.now() < end; ) {
    await new Promise((r) => setTimeout(r, 200));
    if ((await pair.dst.execute<Digests>('x-query-digests', undefined, { timeoutMs: 60_000 })).ram !== b.ram) {
      goesOn = true;
      break;
    }
    status = await pair.dst.execute<{ status: string }>('query-status');
  }
  result.destinationRunsOn = goesOn;
  verification.checks.push({
    name: 'destination',
    ok: goesOn,
    detail: goesOn ? runsOn(writes) : `not running on (${status.status})`,
  });
  verification.ok = verification.checks.every((c) => c.ok);
  say('');
  say(`status:        completed in ${ms(totalMs)}, downtime ${info.downtime} ms (limit ${o.downtimeLimit} ms)`);
  const sw = info['x-switchover'];
  if (sw) {
    say(
      `switch-over:   expected ${sw.expected ?? '-'} ms; took: stop ${sw.stop}, final sync ${sw.sync}, stop-and-copy ${sw.complete}, ` +
        `device config + EOF ${sw.state}, destination validation + READY/GO ${sw.finish} ms`,
    );
  }
  say(
    `passes:        ${ram['dirty-sync-count']} dirty-log syncs (bulk pass, then the pages the guest and the device's DMA dirtied)`,
  );
  say(
    `sent:          ${bytes(sent)}: RAM ${bytes(ram.transferred)} (${ram.normal} pages, ${ram.duplicate} zero pages as flags), device state ${bytes(device)}`,
  );
  say(`throughput:    ${bytes((sent / Math.max(1, totalMs)) * 1000)}/s overall`);
  say(
    `verified:      all ${bytes(ram.total)} of guest RAM (page digests) and ${a.devices.length === 1 ? 'the device state' : `the state of all ${a.devices.length} devices`} equal the source's at the stop point`,
  );
  say(`destination:   ${goesOn ? runsOn(writes) : `NOT running on (${status.status})`}`);
  return goesOn ? 0 : 1;
}

/**
 * The migration kept iterating: what is dirtied between passes never fit in the downtime limit at the
 * link's measured rate. Cancelled (the source VM runs on, as QEMU leaves it), said plainly, exit 1.
 */
async function notConverged(
  pair: Awaited<ReturnType<typeof startLocalPair>>,
  o: DemoOptions,
  last: Info,
  result: DemoResult,
  verification: Verification,
): Promise<number> {
  await pair.src.execute('migrate_cancel');
  const end = (await waitForMigration(pair.src)) as Info;
  const run = await pair.src.execute<{ status: string }>('query-status');
  const expected = last['expected-downtime'];
  const detail =
    `did not converge in ${o.convergeWithin} s: the guest and the device dirtied memory faster than the link ` +
    `moved it within the ${o.downtimeLimit} ms downtime limit (expected downtime ${expected ?? 'unknown'} ms at the ` +
    `last pass); cancelled (${end.status}), the source VM ${run.status === 'running' ? 'runs on' : `is ${run.status}`}`;
  console.error(
    `FAILED: the migration ${detail}. Try a larger --downtime-limit, or a lower --dirty-rate or --device-rate.`,
  );
  result.status = end.status;
  result.error = `the migration ${detail}`;
  verification.checks.push({ name: 'migration', ok: false, detail });
  return 1;
}

function runsOn(writes: boolean): string {
  return writes
    ? 'running on, its guest writing memory'
    : 'running (its guest and device write no memory at these rates, so only its run state was checked)';
}
