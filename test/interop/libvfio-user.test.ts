// Our VMM against real, independently written device servers: libvfio-user's sample server (C, the
// reference vfio-user implementation), built from upstream sources by ../shared/peers/build-libvfio-user.sh
// in its two eras: 1569a37a (the Linux 5.8 "v1" migration region, DIRTY_PAGES) and efd091bc (the 5.18+
// "v2" DEVICE_FEATURE state machine, MIG_DATA_READ/WRITE, DMA logging). Per era: two sample servers, our
// two VMM processes (flavor forced, so a fallback cannot pass for the flavor under test), QMP `migrate`
// between them over TCP, then: guest RAM equal page by page, the device's BAR1 pattern (written through
// the source VMM before migrating) read back through the destination VMM after it started the VM, and the
// sample's DMA timer firing during pre-copy: its direct DMA reported by the device's dirty log at a log
// sync, its message DMA served (and logged) by our VMM. The destination starts paused so RAM is compared
// before its guest runs; `cont` then takes the device to RUNNING, which the sample accepts only with a
// future BAR0 time: the migrated BAR0 arrived.
//
// How pre-copy is held while the timer fires: guest RAM is random (every page costs 4 KiB on the wire)
// and max-bandwidth is 1 MiB/s, so the first pass over 16 MiB lasts at least 16 s whatever the machine's
// speed, and the guest's writes keep it from converging after that; the test lifts the limit once the
// device's dirty pages were seen. The timer (BAR0: a time in epoch seconds, armed by a write while the
// device runs) is set 2 s ahead (v2: once the migration is active) or 20 s ahead just before `migrate` (v1:
// its sample arms only in RUNNING, which pre-copy is not; the lead covers the VMM's start of the migration
// and its dirty logging on a busy machine, and pre-copy is held for as long as the test needs), then moved a
// day ahead for the destination.
//
// What the sample needs (its quirks, not the protocol's): v2 resumes only its stop-copy data, so the v2
// VMMs leave PRE_COPY unused for it (`precopy=off`); its timer does DMA through two DMA regions, the first
// by DMA_WRITE/DMA_READ messages, and raises INTx, so the VMMs map guest RAM as two regions and wire INTx
// (`--dma-regions 2 --intx`).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import { type HostOptions, type LocalPair, startLocalPair, waitForMigration } from '../../src/harness/local-hosts.ts';
import { finishMigration } from '../e2e/support/migrate.ts';
import { buildPeers, type Era } from '../support/libvfio-user-peers.ts';

const WRAPPER = new URL('./support/peer-server.mjs', import.meta.url).pathname;
const DEVICE = '0000:00:05.0';
const BAR1_SIZE = 0x3000;

type Digests = { ram: string; pages: string };
type VfioInfo = { flavor: string; 'device-state-name': string; transferred: number; chunks: number }[];

const peers = buildPeers();

function host(server: string, era: Era): HostOptions {
  return {
    deviceCommand: (socket) => [process.execPath, WRAPPER, server, socket],
    deviceProps: era === 'v2' ? 'precopy=off' : undefined,
    vmmArgs: [
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
      // The sample device DMAs into the first page of each DMA region and reads it back to check: its driver's
      // buffers, which the synthetic guest leaves alone (16 MiB guest: regions at 0 and 8 MiB).
      '--dma-buffers',
      '0+4K,8M+4K',
      '--trace',
      'vfio_get_dirty_bitmap,vfio_save_*',
    ],
  };
}

async function regionWrite(pair: LocalPair, region: number, data: Uint8Array): Promise<void> {
  await pair.src.execute('x-vfio-region-write', {
    device: DEVICE,
    region,
    offset: 0,
    data: Buffer.from(data).toString('hex'),
  });
}

/** Polls `cond` (a safety net of `ms`, never the thing tested). */
async function until(cond: () => boolean, what: string, lines: string[], ms = 120_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`no ${what} within ${ms} ms:\n${lines.slice(-30).join('\n')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** BAR0 of the sample: a time in seconds since the epoch (little-endian time_t). */
function epochSeconds(fromNow: number): Uint8Array {
  const b = Buffer.alloc(8);
  b.writeBigInt64LE(BigInt(Math.floor(Date.now() / 1000) + fromNow));
  return b;
}

describe('interop: our VMM drives libvfio-user sample servers', { skip: peers.skip }, () => {
  for (const era of ['v1', 'v2'] as const) {
    test(`${era}: a VM owning libvfio-user's ${era}-era sample device live-migrates between two VMM processes`, async () => {
      const server = peers.servers[era];
      assert.ok(server, `the build printed no ${era} server`);
      const lines: string[] = [];
      const pair = await startLocalPair({
        memSize: '16M',
        paused: true,
        source: host(server, era),
        destination: host(server, era),
        log: (l) => lines.push(l),
      });
      try {
        const pattern = randomBytes(BAR1_SIZE);
        await regionWrite(pair, 1, pattern);
        const before = await pair.src.execute<VfioInfo>('x-query-vfio');
        assert.equal(before[0]!.flavor, era);

        // Pre-copy held (see the header), the timer armed to fire inside it.
        await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 1 << 20 });
        if (era === 'v1') await regionWrite(pair, 0, epochSeconds(20));
        await pair.src.execute('migrate', { uri: pair.uri });
        if (era === 'v2') {
          await until(() => lines.some((l) => l.includes('dirty pages: started logging')), 'DMA logging', lines);
          await regionWrite(pair, 0, epochSeconds(2));
        }
        const src = (needle: string | RegExp) => () =>
          lines.some(
            (l) => l.startsWith('src-device:') && (typeof needle === 'string' ? l.includes(needle) : needle.test(l)),
          );
        await until(src('do_dma_io: DIRECT success'), 'direct DMA by the device', lines);
        const devLines = lines.filter((l) => l.startsWith('src-device:'));
        const logStart = devLines.findIndex((l) => l.includes('dirty pages: started logging'));
        const dmaAt = devLines.findIndex((l) => l.includes('do_dma_io: DIRECT WRITE'));
        assert.ok(
          logStart >= 0 && logStart < dmaAt,
          'the timer fired before dirty logging started (the VMM took longer than the lead to start migrating)',
        );
        await until(src('do_dma_io: MESSAGE success'), 'DMA by messages (served by our VMM)', lines);
        // The direct DMA wrote the first page of the second DMA region (iova 8 MiB): the device's log says so.
        await until(
          () => lines.some((l) => /^src-vmm: .*vfio_get_dirty_bitmap .*iova=0x800000 .*dirty_pages=0x[1-9a-f]/.test(l)),
          "the device's dirty log reporting its DMA",
          lines,
        );
        assert.equal((await pair.src.execute<{ status: string }>('query-migrate')).status, 'active', 'still pre-copy');
        // The destination starts the device from BAR0: a day ahead. Then let the migration converge.
        await regionWrite(pair, 0, epochSeconds(86_400));
        await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 1 << 30, 'downtime-limit': 60_000 });
        // RAM, page by page, while both guests are stopped (source: postmigrate; destination: paused).
        const {
          info,
          src: a,
          dst: b,
        } = await finishMigration<Digests>(pair, {
          timeoutMs: 120_000,
          digestArgs: { pages: true },
          context: () => lines.slice(-30).join('\n'),
        });
        assert.equal(b.pages.length, a.pages.length);
        assert.ok(b.pages === a.pages, 'every page of guest RAM arrived equal');
        assert.equal(b.ram, a.ram);

        // The device's state moved: at least its stop-copy image (BAR1 + BAR0, 12296 bytes).
        const moved = (info.vfio as { transferred: number }).transferred;
        assert.ok(moved >= BAR1_SIZE + 8, `device data sent: ${moved} bytes`);
        if (era === 'v2') assert.equal(moved, BAR1_SIZE + 8, 'stop-copy only: BAR1 + BAR0');

        // The destination runs the VM: the device goes to RUNNING, which the sample refuses unless the
        // migrated BAR0 holds a future time (a fresh device has 0 there).
        await pair.dst.execute('cont');
        const status = await pair.dst.execute<{ status: string }>('query-status');
        assert.equal(status.status, 'running');
        const dev = await pair.dst.execute<VfioInfo>('x-query-vfio');
        assert.equal(dev[0]!.flavor, era);
        assert.equal(dev[0]!['device-state-name'].toUpperCase(), 'RUNNING');
        assert.equal(dev[0]!.transferred, moved, 'the destination loaded every byte the source sent');

        // BAR1 read back through the destination VMM (from 0, in one access: the v1 sample ignores the offset).
        const back = await pair.dst.execute<{ data: string }>('x-vfio-region-read', {
          device: DEVICE,
          region: 1,
          offset: 0,
          size: BAR1_SIZE,
        });
        assert.ok(Buffer.from(back.data, 'hex').equals(pattern), 'BAR1 holds the pattern written on the source');
      } finally {
        await pair.stop();
      }
    });
  }

  test('a destination whose device speaks another flavor refuses the stream, naming both', async () => {
    const [v1, v2] = [peers.servers.v1, peers.servers.v2];
    assert.ok(v1 && v2, 'both eras built');
    const lines: string[] = [];
    const pair = await startLocalPair({
      memSize: '16M',
      paused: true,
      source: host(v2, 'v2'),
      destination: host(v1, 'v1'),
      log: (l) => lines.push(l),
    });
    try {
      await pair.src.execute('migrate', { uri: pair.uri });
      const info = await waitForMigration(pair.src, { timeoutMs: 120_000 });
      assert.equal(info.status, 'failed');
      assert.match(
        String(info['error-desc']),
        /saved through the v2 migration interface, but this device is driven as v1/,
        lines.slice(-20).join('\n'),
      );
      // Refused before any device data reached the destination's device, and its VM does not start.
      const dst = await pair.dst.execute<VfioInfo>('x-query-vfio');
      assert.equal(dst[0]!.transferred, 0, 'no v2 state was fed to the v1 device');
      assert.equal((await pair.dst.execute<{ status: string }>('query-status')).status, 'inmigrate');
      // (The source's sample device is not checked: it aborts when a failed migration returns it to RUNNING
      // after the switch-over began, one of its documented quirks.)
    } finally {
      await pair.stop();
    }
  });
});
