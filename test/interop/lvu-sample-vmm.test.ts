// Our two VMM processes migrate a VM whose device is libvfio-user's sample on one side and our model of
// it (`serve --device lvu-sample`) on the other, both directions, in each era's flavor (flavor forced on
// the VMMs, so a fallback cannot pass for the flavor under test). QMP `migrate` over TCP, then: guest RAM
// equal page by page, the device data that moved (v2: stop-copy only, BAR1 + BAR0 = 12296 bytes), the
// destination started (`cont` takes its device to RUNNING, which both implementations accept only with a
// future BAR0: the migrated BAR0 arrived, a fresh device has 0), and a BAR1 pattern written through the
// source VMM read back through the destination VMM. Then lvu-sample as the source with its timer firing
// during pre-copy (see the second loop).
//
// What the C sample needs of the VMMs (its quirks; our model would take either): test/interop/support/lvu-vm.ts.
// BAR1 is read from offset 0 in one access (both implementations read BAR1 from its base).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import type { HostOptions } from '../../src/harness/local-hosts.ts';
import { startLocalPair } from '../../src/harness/local-hosts.ts';
import { finishMigration, migrateToEnd } from '../e2e/support/migrate.ts';
import { buildPeers, ERAS, type Era } from '../support/libvfio-user-peers.ts';
import {
  BAR1_SIZE,
  type Digests,
  destinationBar1,
  epochSeconds,
  migrateWhileSampleDmas,
  regionWrite,
  sampleHost,
  sampleProps,
  sampleVmmArgs,
  type VfioInfo,
} from './support/lvu-vm.ts';

const peers = buildPeers();

function theirs(era: Era): HostOptions {
  return sampleHost(peers.servers[era]!, era);
}

function ours(era: Era) {
  return {
    device: 'lvu-sample',
    deviceArgs: ['--flavor', era],
    deviceProps: sampleProps(era),
    vmmArgs: sampleVmmArgs(era),
  } satisfies HostOptions;
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

          assert.ok((await destinationBar1(pair)).equals(pattern), 'BAR1 holds the pattern written on the source');
        } finally {
          await pair.stop();
        }
      });
    }
  }

  // lvu-sample as the source with its timer firing in pre-copy: its direct DMA must reach the VMM's dirty
  // log through the device's own log (v2 DMA_LOGGING_REPORT, v1 DIRTY_PAGES), its message DMA is served by
  // the VMM, and the pages arrive. Pre-copy is held as support/lvu-vm.ts says; the v2 timer (precopy=off:
  // the device RUNNING until stop-copy) is armed once the VMM queried its dirty log.
  for (const era of ERAS) {
    test(`${era}: lvu-sample's timer DMA during pre-copy is logged dirty and migrated`, async () => {
      const lines: string[] = [];
      // Our sample device with its log (the test reads its DMA lines).
      const source: HostOptions = {
        ...ours(era),
        deviceLog: true,
        vmmArgs: [...sampleVmmArgs(era), '--trace', 'vfio_get_dirty_bitmap'],
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
        // Armed once the VMM queried the device's dirty log (support/lvu-vm.ts).
        await migrateWhileSampleDmas(pair, era, lines, /^src-vmm: .*vfio_get_dirty_bitmap/);
        const { src: a, dst: b } = await finishMigration<Digests>(pair, {
          timeoutMs: 120_000,
          digestArgs: { pages: true },
          context: () => lines.slice(-30).join('\n'),
        });
        assert.ok(b.pages === a.pages, 'every page of guest RAM, the DMA-written ones included, arrived equal');
        await pair.dst.execute('cont');
        assert.equal((await pair.dst.execute<{ status: string }>('query-status')).status, 'running');
        assert.ok((await destinationBar1(pair)).equals(pattern), 'BAR1 holds the pattern written on the source');
      } finally {
        await pair.stop();
      }
    });
  }
});
