// Our VMMs and our device servers in each migration flavor: a live guest with a large-memory device doing
// DMA during pre-copy, migrated with the flavor forced on both device servers and both VMMs (so a fallback
// cannot pass for it), then every guest page and the device state compared at the stop point, and the
// destination's driver reporting the flavor it drove.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { startLocalPair } from '../../src/harness/local-hosts.ts';
import { migrateToEnd } from './support/migrate.ts';

type VfioInfo = { flavor: string; transferred: number; 'device-state-name': string }[];

describe('live migration in every flavor, our VMMs and our device servers', () => {
  for (const flavor of ['v1', 'v2']) {
    for (const section of flavor === 'v1' ? ['mmapped', 'trapped'] : ['trapped']) {
      test(`${flavor}${flavor === 'v1' ? `, ${section} data section` : ''}: RAM and device equal at the destination`, async () => {
        const device = ['--flavor', flavor, '--data-section', section, '--device-mem', '8M', '--work-rate', '5000'];
        const pair = await startLocalPair({
          memSize: '64M',
          paused: true,
          source: { device: 'large-memory', deviceArgs: device, vmmArgs: ['--flavor', flavor, '--dirty-rate', '5000'] },
          destination: { device: 'large-memory', deviceArgs: device, vmmArgs: ['--flavor', flavor] },
        });
        try {
          const { src: a, dst: b } = await migrateToEnd(pair, { timeoutMs: 300_000 });
          assert.equal(b.ram, a.ram, 'every guest page equal');
          assert.ok(a.devices[0]!.digest, 'the source device has a digest');
          assert.equal(b.devices[0]!.digest, a.devices[0]!.digest, 'device state equal');
          const vfio = await pair.dst.execute<VfioInfo>('x-query-vfio');
          assert.equal(vfio[0]!.flavor, flavor);
          assert.ok(vfio[0]!.transferred >= 8 << 20, `the device memory moved (${vfio[0]!.transferred} bytes)`);
        } finally {
          await pair.stop();
        }
      });
    }
  }
});
