// Multifd end to end: RAM over 1, 2 and 4 extra TCP connections, each sent and received by its own
// thread, while the guest writes and a large-memory device does DMA. Both VMMs take the capability and
// the channel count over QMP (the destination with --incoming defer, as QEMU needs), and every guest page
// and the device state at the destination equal the source's at its stop point. The channel threads move
// pages staged (1 channel), as measured (2: the default) or direct (4), set by x-multifd-io on both sides,
// and query-migrate's x-multifd-io says which way the packets went.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { startLocalPair } from '../../src/harness/local-hosts.ts';
import type { MultifdIoCounts } from '../../src/vmm/migration/multifd-channel.ts';
import { migrateToEnd } from './support/migrate.ts';

describe('multifd migration across processes', () => {
  const ways = [
    [1, 'staged'],
    [2, undefined],
    [4, 'direct'],
  ] as const;
  for (const [channels, io] of ways) {
    test(`${channels} channel(s) moving pages ${io ?? 'as measured'}, the guest writing, a large-memory device doing DMA`, async () => {
      const device = { device: 'large-memory', deviceArgs: ['--device-mem', '8M', '--work-rate', '5000'] };
      const pair = await startLocalPair({
        memSize: '64M',
        paused: true,
        multifd: { channels, io },
        source: {
          ...device,
          deviceArgs: [...device.deviceArgs, '--device-fill', 'random'],
          vmmArgs: ['--dirty-rate', '5000', '--fill', 'random'],
        },
        // With 4 channels the destination is prefaulted: its guest RAM in huge pages too (as the source's,
        // filled at boot), where the kernel can collapse them.
        destination: channels === 4 ? { ...device, vmmArgs: ['--prefault'] } : device,
      });
      try {
        const caps = await pair.dst.execute<{ capability: string; state: boolean }[]>('query-migrate-capabilities');
        assert.deepEqual(
          caps.find((c) => c.capability === 'multifd'),
          { capability: 'multifd', state: true },
        );
        const params = await pair.src.execute<Record<string, unknown>>('query-migrate-parameters');
        assert.equal(params['multifd-channels'], channels);
        assert.equal(params['x-multifd-io'], io ?? 'auto');
        if (channels === 1) {
          // Multifd is tcp-only here (QEMU 9 needs mapped-ram for a file): refused by name, nothing starts.
          await assert.rejects(pair.src.execute('migrate', { uri: `file:${pair.dir}/vm.mig` }), /multifd needs a tcp:/);
          assert.deepEqual(await pair.src.execute('query-migrate'), {});
        }
        const { info, dstInfo, src: a, dst: b } = await migrateToEnd(pair);
        assert.equal(b.ram, a.ram, 'every guest page at the destination equals the source at the stop point');
        assert.deepEqual(
          b.devices.map((d) => d.digest),
          a.devices.map((d) => d.digest),
          'device state equal',
        );
        const ram = info.ram as Record<string, number>;
        // A random guest: every page went with its contents, on the channels, not in the main stream.
        assert.ok(ram.normal! >= (64 << 20) / 4096, `${ram.normal} pages sent`);
        assert.ok(ram['multifd-bytes']! > 64 << 20, `multifd-bytes ${ram['multifd-bytes']}`);
        const incoming = dstInfo['x-incoming'] as Record<string, number>;
        assert.ok(incoming['ram-bytes']! < 64 << 10, `${incoming['ram-bytes']} RAM bytes in the main stream`);
        assert.ok(incoming['device-bytes']! > 8 << 20, 'the device state went in the main stream');
        for (const [side, got] of [
          ['source', info],
          ['destination', dstInfo],
        ] as const) {
          const c = got['x-multifd-io'] as MultifdIoCounts;
          const what = `${side}: ${c.staged} packets staged, ${c.direct} direct`;
          // 64 MiB of pages is 128 packets: auto's first packets on each channel go each way.
          if (io === 'staged') assert.ok(c.staged >= 128 && c.direct === 0, what);
          if (io === 'direct') assert.ok(c.direct >= 128 && c.staged === 0, what);
          if (io === undefined) assert.ok(c.staged > 0 && c.direct > 0 && c.staged + c.direct >= 128, what);
        }
      } finally {
        await pair.stop();
      }
    });
  }
});
