// A VM with guest RAM and no device at all (QEMU's `-machine none` guest, the one the bench compares
// against): the harness starts no device server, the VMMs attach none, and the migration carries RAM
// only, over the one stream and over multifd channels, while the guest writes. Real processes and TCP.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { startLocalPair } from '../../src/harness/local-hosts.ts';
import { migrateToEnd } from './support/migrate.ts';

for (const channels of [0, 2]) {
  test(`a VM without devices migrates ${channels ? `over ${channels} multifd channels` : 'over one stream'}, the guest writing`, async () => {
    const pair = await startLocalPair({
      memSize: '32M',
      paused: true,
      multifd: channels ? { channels } : undefined,
      source: { vmmArgs: ['--dirty-rate', '5000', '--fill', 'random'] },
      destination: {},
    });
    try {
      assert.deepEqual(pair.procs.srcDevices, [], 'no device server on the source host');
      assert.deepEqual(pair.procs.dstDevices, [], 'no device server on the destination host');
      const { info, dstInfo, src: a, dst: b } = await migrateToEnd(pair);
      assert.deepEqual([a.devices, b.devices], [[], []], 'neither VMM has a device');
      assert.equal(b.ram, a.ram, 'every guest page at the destination equals the source at the stop point');
      const ram = info.ram as Record<string, number>;
      assert.ok(ram.normal! >= (32 << 20) / 4096, `${ram.normal} pages sent`);
      assert.equal((dstInfo['x-incoming'] as Record<string, number>)['device-bytes'], 0, 'no device bytes');
    } finally {
      await pair.stop();
    }
  });
}
