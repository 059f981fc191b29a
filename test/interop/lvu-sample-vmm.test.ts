// Our two VMM processes migrate a VM whose device is libvfio-user's sample on one side and our model of
// it (`serve --device lvu-sample`) on the other, both directions, in each era's flavor (flavor forced on
// the VMMs, so a fallback cannot pass for the flavor under test). QMP `migrate` over TCP, then: guest RAM
// equal page by page, the device data that moved (v2: stop-copy only, BAR1 + BAR0 = 12296 bytes), the
// destination started (`cont` takes its device to RUNNING, which both implementations accept only with a
// future BAR0: the migrated BAR0 arrived, a fresh device has 0), and a BAR1 pattern written through the
// source VMM read back through the destination VMM. Then lvu-sample as the source with its timer firing
// during pre-copy (see the second loop).
//
// What the C sample needs (its quirks, see libvfio-user.test.ts): v2 resumes only its stop-copy data, so
// both VMMs leave PRE_COPY unused for the device (`precopy=off`; our model would take either); its timer
// DMAs through two DMA regions and raises INTx, so guest RAM is mapped as two regions and INTx wired.
// BAR1 is read from offset 0 in one access (both implementations read BAR1 from its base).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import { type HostOptions, type LocalPair, startLocalPair } from '../../src/harness/local-hosts.ts';
import { finishMigration, migrateToEnd } from '../e2e/support/migrate.ts';
import { buildPeers, ERAS, type Era } from '../support/libvfio-user-peers.ts';

const WRAPPER = new URL('./support/peer-server.mjs', import.meta.url).pathname;
const BIN = new URL('../../bin/vfio-migrate.js', import.meta.url).pathname;
const DEVICE = '0000:00:05.0';
const BAR1_SIZE = 0x3000;

type Digests = { ram: string; pages: string };
type VfioInfo = { flavor: string; 'device-state-name': string; transferred: number }[];

const peers = buildPeers();

const VMM_ARGS = (era: Era) => [
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
];

function theirs(era: Era): HostOptions {
  return {
    deviceCommand: (socket) => [process.execPath, WRAPPER, peers.servers[era]!, socket],
    deviceProps: era === 'v2' ? 'precopy=off' : undefined,
    vmmArgs: VMM_ARGS(era),
  };
}

function ours(era: Era): HostOptions {
  return {
    device: 'lvu-sample',
    deviceArgs: ['--flavor', era],
    deviceProps: era === 'v2' ? 'precopy=off' : undefined,
    vmmArgs: VMM_ARGS(era),
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

/** BAR0 of the sample: a time in seconds since the epoch (little-endian time_t). */
function epochSeconds(fromNow: number): Uint8Array {
  const b = Buffer.alloc(8);
  b.writeBigInt64LE(BigInt(Math.floor(Date.now() / 1000) + fromNow));
  return b;
}

/** Polls `cond` (a safety net of `ms`, never the thing tested). */
async function until(cond: () => boolean, what: string, lines: string[], ms = 120_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`no ${what} within ${ms} ms:\n${lines.slice(-30).join('\n')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('interop: a VM moves between libvfio-user’s sample device and lvu-sample', { skip: peers.skip }, () => {
  for (const era of ERAS) {
    for (const [from, to] of [
      ['theirs', 'ours'],
      ['ours', 'theirs'],
    ] as const) {
      test(`${era}: ${from === 'theirs' ? 'libvfio-user sample → lvu-sample' : 'lvu-sample → libvfio-user sample'}`, async () => {
        assert.ok(peers.servers[era], `the build printed no ${era} server`);
        const lines: string[] = [];
        const pair = await startLocalPair({
          memSize: '16M',
          paused: true,
          source: from === 'ours' ? ours(era) : theirs(era),
          destination: to === 'ours' ? ours(era) : theirs(era),
          log: (l) => lines.push(l),
        });
        const context = () => lines.slice(-30).join('\n');
        try {
          const pattern = randomBytes(BAR1_SIZE);
          await regionWrite(pair, 1, pattern);
          // The destination takes its device to RUNNING from the migrated BAR0: a day ahead.
          await regionWrite(pair, 0, epochSeconds(86_400));
          assert.equal((await pair.src.execute<VfioInfo>('x-query-vfio'))[0]!.flavor, era);

          const {
            info,
            src: a,
            dst: b,
          } = await migrateToEnd<Digests>(pair, { timeoutMs: 120_000, digestArgs: { pages: true }, context });
          assert.ok(b.pages === a.pages, 'every page of guest RAM arrived equal');
          assert.equal(b.ram, a.ram);

          const moved = (info.vfio as { transferred: number }).transferred;
          if (era === 'v2') assert.equal(moved, BAR1_SIZE + 8, 'stop-copy only: BAR1 + BAR0');
          else
            assert.ok(moved >= BAR1_SIZE + 8 && (moved - 8) % BAR1_SIZE === 0, `v1 data: BAR1 images + BAR0, ${moved}`);

          await pair.dst.execute('cont');
          assert.equal((await pair.dst.execute<{ status: string }>('query-status')).status, 'running', context());
          const dev = await pair.dst.execute<VfioInfo>('x-query-vfio');
          assert.equal(dev[0]!.flavor, era);
          assert.equal(dev[0]!['device-state-name'].toUpperCase(), 'RUNNING');
          assert.equal(dev[0]!.transferred, moved, 'the destination loaded every byte the source sent');

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
  }

  // lvu-sample as the source with its timer firing in pre-copy: its direct DMA must reach the VMM's dirty
  // log through the device's own log (v2 DMA_LOGGING_REPORT, v1 DIRTY_PAGES), its message DMA is served by
  // the VMM, and the pages arrive. Pre-copy is held as in libvfio-user.test.ts: 16 MiB of random guest RAM
  // at 1 MiB/s lasts at least 16 s, lifted once the device's dirty pages were seen. The timer is armed
  // while the device runs: v2 (precopy=off: RUNNING until stop-copy) once the VMM queried its dirty log,
  // v1 (not armed in pre-copy) 20 s ahead just before `migrate`.
  for (const era of ERAS) {
    test(`${era}: lvu-sample's timer DMA during pre-copy is logged dirty and migrated`, async () => {
      const lines: string[] = [];
      // Our sample device, its log not quieted (the test reads its DMA lines): serve without --quiet.
      const source: HostOptions = {
        deviceProps: ours(era).deviceProps,
        deviceCommand: (socket) => [
          process.execPath,
          BIN,
          'serve',
          '--device',
          'lvu-sample',
          '--flavor',
          era,
          '--socket',
          socket,
        ],
        vmmArgs: [...VMM_ARGS(era), '--trace', 'vfio_get_dirty_bitmap'],
      };
      const pair = await startLocalPair({
        memSize: '16M',
        paused: true,
        source,
        destination: theirs(era),
        log: (l) => lines.push(l),
      });
      try {
        const pattern = randomBytes(BAR1_SIZE);
        await regionWrite(pair, 1, pattern);
        await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 1 << 20 });
        if (era === 'v1') await regionWrite(pair, 0, epochSeconds(20));
        await pair.src.execute('migrate', { uri: pair.uri });
        if (era === 'v2') {
          await until(() => lines.some((l) => /^src-vmm: .*vfio_get_dirty_bitmap/.test(l)), 'a dirty log query', lines);
          await regionWrite(pair, 0, epochSeconds(2));
        }
        const dev = (needle: string) => () => lines.some((l) => l.startsWith('src-device:') && l.includes(needle));
        await until(dev('do_dma_io: DIRECT success'), 'direct DMA by the device', lines);
        await until(dev('do_dma_io: MESSAGE success'), 'DMA by messages (served by our VMM)', lines);
        // The direct DMA wrote the first page of the second DMA region (iova 8 MiB): the device's log says so.
        await until(
          () => lines.some((l) => /^src-vmm: .*vfio_get_dirty_bitmap .*iova=0x800000 .*dirty_pages=0x[1-9a-f]/.test(l)),
          "the device's dirty log reporting its DMA",
          lines,
        );
        assert.equal((await pair.src.execute<{ status: string }>('query-migrate')).status, 'active', 'still pre-copy');
        await regionWrite(pair, 0, epochSeconds(86_400));
        await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 1 << 30, 'downtime-limit': 60_000 });
        const { src: a, dst: b } = await finishMigration<Digests>(pair, {
          timeoutMs: 120_000,
          digestArgs: { pages: true },
          context: () => lines.slice(-30).join('\n'),
        });
        assert.ok(b.pages === a.pages, 'every page of guest RAM, the DMA-written ones included, arrived equal');
        await pair.dst.execute('cont');
        assert.equal((await pair.dst.execute<{ status: string }>('query-status')).status, 'running');
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
});
