// npm run bench: RAM migration between two VMM processes (bench/ram.ts), then the throughput of device
// migration data through the migration region over vfio-user, as
// ratios to a raw UNIX socket stream between two processes measured in the same run (these machines are
// noisy, so only ratios within one run mean anything). Each figure is the median of several rounds. First,
// a command's start-up time against bare node (bench/startup.ts).
//
//   raw-unix      a child process writes into a UNIX stream socket, this process reads and counts
//   device        the sample device producing its state in-process (no transport): the device's own ceiling
//   trapped       stop-and-copy of the device through the region, data read with REGION_READ messages
//   mmapped       the same, data read through the mmapped data section (zero copies on the VMM side)

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { DeviceState } from '../src/abi/migration.ts';
import { bytes } from '../src/cli/format.ts';
import { LargeMemoryDevice } from '../src/device/samples/large-memory.ts';
import { VfioUserClient } from '../src/vfio-user/client.ts';
import { findMigrationRegion, openRegionPort } from '../src/vfio-user/region-port.ts';
import { SeedRegionClient } from '../src/vmm/vfio/seed-region-client.ts';
import { startServer } from '../test/support/server-process.ts';
import { ramBench, rawStream } from './ram.ts';
import { startupBench } from './startup.ts';

const { values } = parseArgs({
  options: {
    'device-mem': { type: 'string', default: '256' },
    rounds: { type: 'string', default: '3' },
    'ram-mem': { type: 'string', default: '1024' },
    'ram-rounds': { type: 'string', default: '1' },
    only: { type: 'string' },
  },
});
if (values.only && !['ram', 'device', 'startup'].includes(values.only))
  throw new Error('--only takes ram, device or startup');
const MEM = Number(values['device-mem']) << 20;
const ROUNDS = Number(values.rounds);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function rounds(name: string, fn: () => Promise<{ bytes: number; ms: number }>): Promise<number> {
  const rates: number[] = [];
  let moved = 0;
  for (let i = 0; i < ROUNDS; i++) {
    const r = await fn();
    moved = r.bytes;
    rates.push(r.bytes / r.ms / 1000);
  }
  const m = median(rates);
  console.log(
    `${name.padEnd(10)} ${m.toFixed(0).padStart(6)} MB/s   (${bytes(moved)} per round, rounds ${rates.map((r) => r.toFixed(0)).join(' ')})`,
  );
  return m;
}

async function rawUnix(total: number): Promise<{ bytes: number; ms: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-migrate-bench-'));
  try {
    return await rawStream(total, { path: join(dir, 'raw.sock') });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function deviceProduce(): Promise<{ bytes: number; ms: number }> {
  const dev = new LargeMemoryDevice({ memSize: MEM, workRate: 0, fill: 'random' });
  const out = new Uint8Array(1 << 20);
  dev.transition(DeviceState.RUNNING, DeviceState.SAVING);
  let n = 0;
  const t0 = performance.now();
  for (let k = dev.produce(out); k > 0; k = dev.produce(out)) n += k;
  const ms = performance.now() - t0;
  dev.close();
  return { bytes: n, ms };
}

async function throughRegion(
  dataSection: 'trapped' | 'mmapped',
): Promise<() => Promise<{ bytes: number; ms: number }>> {
  const srv = await startServer([
    '--device',
    'large-memory',
    '--device-mem',
    `${MEM >> 20}M`,
    '--device-fill',
    'random',
    '--work-rate',
    '0',
    '--data-section',
    dataSection,
    '--quiet',
  ]);
  const client = await VfioUserClient.connect(srv.path);
  const found = await findMigrationRegion(client);
  if (!found) throw new Error('no migration region');
  const port = await openRegionPort(client, found.index);
  const region = new SeedRegionClient(port);
  rounds_cleanup.push(async () => {
    port.close();
    client.close();
    await srv.stop();
  });
  return async () => {
    // Straight to stop-and-copy: the whole device state, then cancel back to running for the next round.
    await region.writeField('device_state', BigInt(DeviceState.SAVING));
    let n = 0;
    const t0 = performance.now();
    await region.drain((chunk) => {
      n += chunk.byteLength;
    });
    const ms = performance.now() - t0;
    await region.writeField('device_state', BigInt(DeviceState.RUNNING));
    return { bytes: n, ms };
  };
}

const rounds_cleanup: (() => Promise<void>)[] = [];

if (!values.only || values.only === 'startup') {
  startupBench();
  console.log('');
  if (values.only) process.exit(0);
}
if (values.only !== 'device') {
  await ramBench(Number(values['ram-mem']), ROUNDS, Number(values['ram-rounds']));
  console.log('');
}
if (values.only === 'ram') process.exit(0);

console.log(`vfio-migrate bench: large-memory device of ${bytes(MEM)} (random contents), ${ROUNDS} rounds each`);
const raw = await rounds('raw-unix', () => rawUnix(MEM));
const dev = await rounds('device', deviceProduce);
const trapped = await rounds('trapped', await throughRegion('trapped'));
const mmapped = await rounds('mmapped', await throughRegion('mmapped'));
for (const c of rounds_cleanup) await c();
const ceiling = Math.min(raw, dev);
console.log('');
console.log(`mmapped / raw-unix      ${(mmapped / raw).toFixed(2)}`);
console.log(`trapped / raw-unix      ${(trapped / raw).toFixed(2)}`);
console.log(
  `mmapped / min(raw, device) ${(mmapped / ceiling).toFixed(2)}   (transport efficiency against the slower of the two ends)`,
);
console.log(`trapped / min(raw, device) ${(trapped / ceiling).toFixed(2)}`);
