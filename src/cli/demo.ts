// `vfio-migrate demo` (npm start): two device servers, a source VMM with a live guest and a device doing
// DMA, and a destination VMM, as four processes on this machine; a live migration over loopback TCP with a
// progress bar; then proof: the digest of every guest page and of the device at the destination equals
// the source's at the stop point, and the guest goes on at the destination.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { MIGRATION_FLAVORS, type MigrationFlavor } from '../abi/migration.ts';
import { startLocalPair, waitForMigration } from '../harness/local-hosts.ts';
import type { Verification } from '../report/report-data.ts';
import { differingPages } from '../vmm/guest/guest-memory.ts';
import { type DeviceDigest, deviceMismatches } from './device-verdict.ts';
import { bytes, ms, parseSize } from './format.ts';
import { MigrationProgress, snapshotOf } from './migration-progress.ts';

export const demoUsage = `usage: vfio-migrate demo [options]            (npm start)
  --mem SIZE            guest RAM (default 1G)
  --dirty-rate N        guest page writes per second (default 20000)
  --device NAME         large-memory (default) or register-file
  --device-mem SIZE     large-memory device memory (default 256M)
  --device-rate N       device writes per second while running, each also a DMA write (default 5000)
  --downtime-limit MS   switch-over downtime budget (default 300)
  --data-section KIND   mmapped (default) or trapped
  --flavor F            the devices' migration interface: seed (default; the 2019 region), v1 (Linux 5.8's
                        region) or v2 (Linux 5.18+'s DEVICE_FEATURE state machine); both VMMs drive it
  --report FILE         record the source VMM and write an HTML report of the migration and its
                        verification (vfio-migrate report; docs/report.md)`;

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

export async function runDemo(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      mem: { type: 'string', default: '1G' },
      'dirty-rate': { type: 'string', default: '20000' },
      device: { type: 'string', default: 'large-memory' },
      'device-mem': { type: 'string', default: '256M' },
      'device-rate': { type: 'string', default: '5000' },
      'downtime-limit': { type: 'string', default: '300' },
      'data-section': { type: 'string', default: 'mmapped' },
      flavor: { type: 'string', default: 'seed' },
      verbose: { type: 'boolean', default: false },
      report: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(demoUsage);
    return 0;
  }
  if (!MIGRATION_FLAVORS.includes(values.flavor as MigrationFlavor))
    throw new Error(`--flavor must be one of ${MIGRATION_FLAVORS.join(', ')}`);
  parseSize(values.mem!);
  const deviceArgs = [
    '--flavor',
    values.flavor!,
    '--data-section',
    values['data-section']!,
    ...(values.device === 'large-memory'
      ? ['--device-mem', values['device-mem']!, '--work-rate', values['device-rate']!]
      : []),
  ];
  // The flavor is forced on the VMMs too, so that a fallback cannot pass for the flavor asked for.
  const vmmArgs = ['--dirty-rate', values['dirty-rate']!, '--flavor', values.flavor!];
  // The recording lives outside the pair's directory: it is read once the source VMM has exited.
  const recordDir = values.report ? mkdtempSync(join(tmpdir(), 'vfio-migrate-record-')) : undefined;
  const recording = recordDir ? join(recordDir, 'source.jsonl') : undefined;
  const verification: Verification = { ok: false, checks: [] };
  console.log(
    `vfio-migrate demo: a ${values.mem} guest writing ${values['dirty-rate']} pages/s, with a ${values.device} device` +
      `${values.device === 'large-memory' ? ` (${values['device-mem']}, ${values['device-rate']} writes/s, each also a DMA write into the guest)` : ''}` +
      `, migrating live over loopback TCP (flavor ${values.flavor}, ${values['data-section']} data section)`,
  );
  const t0 = performance.now();
  const pair = await startLocalPair({
    memSize: values.mem!,
    paused: true,
    source: {
      device: values.device!,
      deviceArgs,
      vmmArgs: [...vmmArgs, ...(recording ? ['--record', recording] : [])],
    },
    destination: { device: values.device!, deviceArgs, vmmArgs },
    log: values.verbose ? (l) => process.stderr.write(`${l}\n`) : undefined,
  });
  try {
    console.log(
      `started: source device server, source VMM, destination device server, destination VMM (${ms(performance.now() - t0)})`,
    );
    await new Promise((r) => setTimeout(r, 1000)); // let the guest and the device run for a moment
    await pair.src.execute('migrate-set-parameters', { 'downtime-limit': Number(values['downtime-limit']) });
    await pair.src.execute('migrate', { uri: pair.uri });
    const bar = new MigrationProgress(process.stderr, { everyMs: 500 });
    const info = (await waitForMigration(pair.src, {
      intervalMs: 100,
      onInfo: (raw) => {
        const snapshot = snapshotOf(raw);
        if (snapshot) bar.update(snapshot);
      },
    })) as Info;
    bar.done();
    if (info.status !== 'completed') {
      console.error(`FAILED: the migration ended ${info.status}: ${info['error-desc'] ?? ''}`);
      verification.checks.push({ name: 'migration', ok: false, detail: `ended ${info.status}` });
      return 1;
    }
    await waitForMigration(pair.dst);
    // Both sides are stopped now: the source in postmigrate, the destination loaded and paused.
    const [a, b] = await Promise.all([
      pair.src.execute<Digests>('x-query-digests'),
      pair.dst.execute<Digests>('x-query-digests'),
    ]);
    let ok = true;
    if (a.ram !== b.ram) {
      ok = false;
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
    for (const problem of problems) {
      ok = false;
      console.error(`FAILED: ${problem}`);
    }
    verification.checks.push({
      name: a.devices.length === 1 ? `device ${a.devices[0]!.name}` : `${a.devices.length} devices`,
      ok: problems.length === 0,
      detail: problems.length === 0 ? 'state digest equal at the stop point' : problems.join('; '),
    });
    if (!ok) return 1;
    // The guest goes on at the destination.
    await pair.dst.execute('cont');
    // Until its guest has written memory: seconds on a busy machine, so the wait is long (a safety net).
    let status = await pair.dst.execute<{ status: string }>('query-status');
    let goesOn = false;
    for (const end = performance.now() + 60_000; status.status === 'running' && performance.now() < end; ) {
      await new Promise((r) => setTimeout(r, 200));
      if ((await pair.dst.execute<Digests>('x-query-digests', undefined, { timeoutMs: 60_000 })).ram !== b.ram) {
        goesOn = true;
        break;
      }
      status = await pair.dst.execute<{ status: string }>('query-status');
    }
    verification.checks.push({
      name: 'destination',
      ok: goesOn,
      detail: goesOn ? 'running on, its guest writing memory' : `not running on (${status.status})`,
    });
    verification.ok = verification.checks.every((c) => c.ok);
    const ram = info.ram!;
    const sent = ram.transferred + (info.vfio?.transferred ?? 0);
    const totalMs = info['total-time'] ?? 0;
    console.log('');
    console.log(
      `status:        completed in ${ms(totalMs)}, downtime ${info.downtime} ms (limit ${values['downtime-limit']} ms)`,
    );
    const sw = info['x-switchover'];
    if (sw) {
      console.log(
        `switch-over:   expected ${sw.expected ?? '-'} ms; took: stop ${sw.stop}, final sync ${sw.sync}, stop-and-copy ${sw.complete}, ` +
          `device config + EOF ${sw.state}, destination validation + READY/GO ${sw.finish} ms`,
      );
    }
    console.log(
      `passes:        ${ram['dirty-sync-count']} dirty-log syncs (bulk pass, then the pages the guest and the device's DMA dirtied)`,
    );
    console.log(
      `sent:          ${bytes(sent)}: RAM ${bytes(ram.transferred)} (${ram.normal} pages, ${ram.duplicate} zero pages as flags), device state ${bytes(info.vfio?.transferred ?? 0)}`,
    );
    console.log(`throughput:    ${bytes((sent / Math.max(1, totalMs)) * 1000)}/s overall`);
    console.log(
      `verified:      all ${bytes(ram.total)} of guest RAM (page digests) and the device state equal the source's at the stop point`,
    );
    console.log(
      `destination:   ${goesOn ? 'running, its guest and device writing memory' : `NOT running on (${status.status})`}`,
    );
    return goesOn ? 0 : 1;
  } finally {
    // The source VMM has flushed its recording once it has exited.
    await pair.stop();
    if (values.report && recording) {
      try {
        const { writeReport } = await import('./report.ts');
        writeReport(recording, values.report, { verification });
        console.log(`report:        ${values.report}`);
      } finally {
        rmSync(recordDir!, { recursive: true, force: true });
      }
    }
  }
}
