// A VM whose device is libvfio-user's sample (or our model of it, lvu-sample), as the interop tests run
// one between our two VMM processes: the VMM arguments the sample needs, the device's BAR access through
// QMP, and pre-copy held while the sample's timer DMAs into guest RAM.
//
// What the sample needs (its quirks, not the protocol's): its timer DMAs through two DMA regions, the
// first by DMA_WRITE/DMA_READ messages, and raises INTx, so the VMMs map guest RAM as two regions and wire
// INTx (`--dma-regions 2 --intx`); v2 resumes only its stop-copy data, so v2 VMMs leave PRE_COPY unused for
// it (`precopy=off`); BAR0 holds a time in epoch seconds, and the device goes to RUNNING only with a future
// one there (a fresh device has 0).
import assert from 'node:assert/strict';
import { LVU_BAR1_SIZE } from '../../../src/device/samples/lvu-sample.ts';
import type { HostOptions, LocalPair } from '../../../src/harness/local-hosts.ts';
import type { Era } from '../../support/libvfio-user-peers.ts';
import { until } from '../../support/until.ts';

/** Runs a libvfio-user sample server on the socket a VMM names (test/interop/support/peer-server.mjs). */
export const PEER_WRAPPER = new URL('./peer-server.mjs', import.meta.url).pathname;
export const DEVICE = '0000:00:05.0';
/** The sample's BAR1, a plain memory area (our model mirrors its size). */
export const BAR1_SIZE = LVU_BAR1_SIZE;

export type Digests = { ram: string; pages: string };
export type VfioInfo = { flavor: string; 'device-state-name': string; transferred: number }[];

/** Device properties for the sample in this era (v2: PRE_COPY unused, see the header). */
export function sampleProps(era: Era): string | undefined {
  return era === 'v2' ? 'precopy=off' : undefined;
}

/** The VMM's arguments for a 16 MiB guest with the sample device: flavor forced, so a fallback cannot pass. */
export function sampleVmmArgs(era: Era): string[] {
  return [
    '--flavor',
    era,
    '--dirty-rate',
    '500',
    '--vcpus',
    '1',
    '--fill',
    'random',
    '--dma-regions',
    '2',
    '--intx',
    // The sample DMAs into the first page of each DMA region and reads it back to check: its driver's
    // buffers, which the synthetic guest leaves alone (16 MiB guest: regions at 0 and 8 MiB).
    '--dma-buffers',
    '0+4K,8M+4K',
  ];
}

/** A host whose device is libvfio-user's sample server `server` (a path the peers' build printed). */
export function sampleHost(server: string, era: Era, extraVmmArgs: string[] = []): HostOptions {
  return {
    deviceCommand: (socket) => [process.execPath, PEER_WRAPPER, server, socket],
    deviceProps: sampleProps(era),
    vmmArgs: [...sampleVmmArgs(era), ...extraVmmArgs],
  };
}

/** Writes a device region through the source VMM (from offset 0: the v1 sample ignores the offset). */
export async function regionWrite(pair: LocalPair, region: number, data: Uint8Array): Promise<void> {
  await pair.src.execute('x-vfio-region-write', {
    device: DEVICE,
    region,
    offset: 0,
    data: Buffer.from(data).toString('hex'),
  });
}

/** BAR1 read back through the destination VMM, from 0 in one access. */
export async function destinationBar1(pair: LocalPair): Promise<Buffer> {
  const back = await pair.dst.execute<{ data: string }>('x-vfio-region-read', {
    device: DEVICE,
    region: 1,
    offset: 0,
    size: BAR1_SIZE,
  });
  return Buffer.from(back.data, 'hex');
}

/** BAR0 of the sample: a time in seconds since the epoch (little-endian time_t). */
export function epochSeconds(fromNow: number): Uint8Array {
  const b = Buffer.alloc(8);
  b.writeBigInt64LE(BigInt(Math.floor(Date.now() / 1000) + fromNow));
  return b;
}

/** Waits for `cond` (up to 120 s: a safety net) with the pair's last log lines said on timeout. */
function untilLogged(cond: () => boolean, what: string, lines: string[]): Promise<void> {
  return until(cond, what, { ms: 120_000, everyMs: 50, context: () => lines.slice(-30).join('\n') });
}

/**
 * Starts the migration with pre-copy held while the source's sample device DMAs, and lets it converge once
 * the device's dirty log reported that DMA. Held: guest RAM is random (every page costs 4 KiB on the wire)
 * and max-bandwidth 1 MiB/s, so the first pass over 16 MiB lasts at least 16 s whatever the machine's
 * speed, and the guest's writes keep it from converging after that. The timer (BAR0, armed by a write
 * while the device runs) is set 2 s ahead once a line matching `v2Armed` shows the device's dirty logging
 * under way (v2), or 20 s ahead just before `migrate` (v1: its sample arms only in RUNNING, which pre-copy
 * is not; the lead covers the VMM's start of the migration on a busy machine). Then: the device's direct
 * DMA and its DMA by messages (served by our VMM) both done, the VMM's log sync reporting a dirty page at
 * iova 8 MiB (the first page of the second DMA region, which the direct DMA writes), the migration still
 * in pre-copy; BAR0 moved a day ahead for the destination, and the limits lifted. `lines` is the pair's log.
 * The source VMM must trace vfio_get_dirty_bitmap.
 */
export async function migrateWhileSampleDmas(pair: LocalPair, era: Era, lines: string[], v2Armed: RegExp) {
  await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 1 << 20 });
  if (era === 'v1') await regionWrite(pair, 0, epochSeconds(20));
  await pair.src.execute('migrate', { uri: pair.uri });
  if (era === 'v2') {
    await untilLogged(() => lines.some((l) => v2Armed.test(l)), `a line matching ${v2Armed}`, lines);
    await regionWrite(pair, 0, epochSeconds(2));
  }
  const device = (needle: string) => () => lines.some((l) => l.startsWith('src-device:') && l.includes(needle));
  await untilLogged(device('do_dma_io: DIRECT success'), 'direct DMA by the device', lines);
  await untilLogged(device('do_dma_io: MESSAGE success'), 'DMA by messages (served by our VMM)', lines);
  await untilLogged(
    () => lines.some((l) => /^src-vmm: .*vfio_get_dirty_bitmap .*iova=0x800000 .*dirty_pages=0x[1-9a-f]/.test(l)),
    "the device's dirty log reporting its DMA",
    lines,
  );
  assert.equal((await pair.src.execute<{ status: string }>('query-migrate')).status, 'active', 'still pre-copy');
  // The destination starts the device from BAR0: a day ahead. Then let the migration converge.
  await regionWrite(pair, 0, epochSeconds(86_400));
  await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 1 << 30, 'downtime-limit': 60_000 });
}
