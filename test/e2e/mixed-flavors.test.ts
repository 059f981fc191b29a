// One VM holding devices of different migration flavors (a seed, a v1 and a v2 device, each its own device
// server process), as a QEMU guest may hold vfio-pci devices whose drivers speak different kernel
// interfaces: each device's driver is chosen from what that device offers (`--flavor auto`), its state
// travels in its own section, and a destination whose device for one of them speaks another flavor refuses
// the stream, naming that device, while the source keeps running.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { DeviceOptions } from '../../src/harness/local-hosts.ts';
import { startLocalPair, waitForMigration } from '../../src/harness/local-hosts.ts';
import type { QmpClient } from '../../src/vmm/qmp/client.ts';
import { finishMigration } from './support/migrate.ts';

type VfioInfo = { name: string; flavor: string; transferred: number; 'precopy-rounds': number }[];

const MiB = 1 << 20;
// Offset of the large-memory device's DMA_COUNT register in BAR0 (src/device/samples/large-memory.ts).
const DMA_COUNT = 0x38;

/** Records the large-memory device at `device` has written into guest RAM by DMA so far. */
async function dmaCount(qmp: QmpClient, device: string): Promise<bigint> {
  const r = await qmp.execute<{ data: string }>('x-vfio-region-read', {
    device,
    region: 0,
    offset: DMA_COUNT,
    size: 8,
  });
  return Buffer.from(r.data, 'hex').readBigUInt64LE(0);
}

describe('a VM whose devices speak different migration flavors', () => {
  test('a seed (DMA on, pre-copy in several rounds), a v1 and a v2 device (with pre-copy) live-migrate together', async () => {
    // The seed device releases at most QUOTA per pre-copy round of its DEVICE_MEM of random memory while its
    // pending_bytes counts all of its state, and the source may switch over only once everything pending
    // fits THRESHOLD (avail-switchover-bandwidth × downtime-limit): while the seed device has more than
    // THRESHOLD left, pre-copy goes on, however fast or slow the machine. Its work, each unit also a DMA
    // write into guest RAM, only adds to that. Once the test has seen ROUNDS rounds it lifts the threshold.
    // (A v2 device cannot hold pre-copy this way: vfio-user has no pre-copy size query, so its pending
    // estimate is 0 after its first short read; its pre-copy data moves in the first pass.)
    const QUOTA = 2 * MiB;
    const DEVICE_MEM = 8 * MiB;
    const THRESHOLD = MiB; // 1 MiB/s × 1000 ms
    const ROUNDS = 2; // after 2 rounds at least 4 MiB is left: more than THRESHOLD, so pre-copy still runs
    const devices = (role: 'src' | 'dst'): DeviceOptions[] => [
      {
        device: 'large-memory',
        deviceArgs: [
          '--flavor',
          'seed',
          '--device-mem',
          String(DEVICE_MEM),
          '--work-rate',
          '2000',
          ...(role === 'src' ? ['--device-fill', 'random', '--x-precopy-quota', String(QUOTA)] : []),
        ],
      },
      { device: 'register-file', deviceArgs: ['--flavor', 'v1'] },
      {
        device: 'large-memory',
        deviceArgs: [
          '--flavor',
          'v2',
          '--device-mem',
          String(DEVICE_MEM),
          '--work-rate',
          '0',
          ...(role === 'src' ? ['--device-fill', 'random'] : []),
        ],
      },
    ];
    const pair = await startLocalPair({
      memSize: '64M',
      paused: true,
      source: { device: 'large-memory', devices: devices('src'), vmmArgs: ['--dirty-rate', '5000'] },
      destination: { device: 'large-memory', devices: devices('dst') },
    });
    try {
      assert.equal(pair.procs.srcDevices.length, 3, 'three device servers on the source host');
      assert.equal(pair.procs.dstDevices.length, 3, 'three device servers on the destination host');
      const before = await pair.src.execute<VfioInfo>('x-query-vfio');
      assert.deepEqual(
        before.map((d) => [d.name, d.flavor]),
        [
          ['0000:00:05.0', 'seed'],
          ['0000:00:06.0', 'v1'],
          ['0000:00:07.0', 'v2'],
        ],
        'the source drives each device in the flavor it offers',
      );
      // The seed device's DMA is on from boot (the guest driver programmed it): it keeps writing guest
      // pages while pre-copy runs, which the destination's RAM digest then has to match.
      const deadline = Date.now() + 60_000;
      while ((await dmaCount(pair.src, '0000:00:05.0')) === 0n) {
        assert.ok(Date.now() < deadline, 'the seed device wrote nothing by DMA within 60 s');
        await new Promise((r) => setTimeout(r, 50));
      }
      await pair.src.execute('migrate-set-parameters', {
        'downtime-limit': 1000,
        'avail-switchover-bandwidth': THRESHOLD,
      });
      await pair.src.execute('migrate', { uri: pair.uri });
      for (;;) {
        const rounds = (await pair.src.execute<VfioInfo>('x-query-vfio'))[0]!['precopy-rounds'];
        if (rounds >= ROUNDS) break;
        assert.ok(Date.now() < deadline + 240_000, `seed pre-copy still at round ${rounds} after minutes`);
        await new Promise((r) => setTimeout(r, 50));
      }
      const during = await pair.src.execute<{ status: string }>('query-migrate');
      assert.equal(during.status, 'active', 'still in pre-copy: the seed device has more than the threshold left');
      await pair.src.execute('migrate-set-parameters', {
        'avail-switchover-bandwidth': 1 << 30,
        'downtime-limit': 60_000,
      });
      const { src: a, dst: b } = await finishMigration(pair, { timeoutMs: 300_000 });
      assert.equal(b.ram, a.ram, 'every guest page equal');
      assert.equal(a.devices.length, 3);
      for (const d of a.devices) assert.ok(d.digest, `${d.name}: the source device has a digest`);
      assert.deepEqual(b.devices, a.devices, 'every device state equal, device by device');
      assert.ok((await dmaCount(pair.dst, '0000:00:05.0')) > 0n, 'the DMA count moved with the seed device');
      const [srcVfio, dstVfio] = await Promise.all([
        pair.src.execute<VfioInfo>('x-query-vfio'),
        pair.dst.execute<VfioInfo>('x-query-vfio'),
      ]);
      for (const side of [srcVfio, dstVfio]) {
        assert.deepEqual(
          side.map((d) => [d.name, d.flavor]),
          before.map((d) => [d.name, d.flavor]),
        );
      }
      const [seed, , v2] = srcVfio;
      assert.ok(seed!['precopy-rounds'] >= ROUNDS, `seed pre-copy took ${seed!['precopy-rounds']} rounds`);
      assert.ok(v2!['precopy-rounds'] >= 1, 'the v2 device sent pre-copy data');
      assert.ok(v2!.transferred >= DEVICE_MEM, `the v2 device memory moved (${v2!.transferred} bytes)`);
      for (const i of [0, 2])
        assert.equal(dstVfio[i]!.transferred, srcVfio[i]!.transferred, `${srcVfio[i]!.name}: all loaded`);
    } finally {
      await pair.stop();
    }
  });

  test("a destination whose device for one section speaks another flavor refuses the stream by that device's name; the source runs on", async () => {
    const lines: string[] = [];
    const pair = await startLocalPair({
      memSize: '16M',
      paused: true,
      log: (l) => lines.push(l),
      source: {
        device: 'large-memory',
        devices: [
          { device: 'register-file', deviceArgs: ['--flavor', 'seed'] },
          { device: 'large-memory', deviceArgs: ['--flavor', 'v2', '--device-mem', '1M'] },
        ],
      },
      destination: {
        device: 'large-memory',
        devices: [
          { device: 'register-file', deviceArgs: ['--flavor', 'seed'] },
          { device: 'large-memory', deviceArgs: ['--flavor', 'v1', '--device-mem', '1M'] },
        ],
      },
    });
    try {
      await pair.src.execute('migrate', { uri: pair.uri });
      const info = await waitForMigration(pair.src, { timeoutMs: 120_000 });
      assert.equal(info.status, 'failed');
      assert.match(
        String(info['error-desc']),
        /0000:00:06\.0\/vfio: the stream carries device state saved through the v2 migration interface, but this device is driven as v1/,
        lines.slice(-20).join('\n'),
      );
      // The source resumed its guest, and both its devices are back to running in their own flavors.
      assert.equal((await pair.src.execute<{ status: string }>('query-status')).status, 'running');
      const src = await pair.src.execute<(VfioInfo[number] & { 'device-state-name': string })[]>('x-query-vfio');
      assert.deepEqual(
        src.map((d) => [d.flavor, d['device-state-name']]),
        [
          ['seed', 'running'],
          ['v2', 'RUNNING'],
        ],
        'the seed region names its states in lower case, v2 as the kernel header does',
      );
      // The destination fed no v2 state to its v1 device and does not start the VM.
      const dst = await pair.dst.execute<VfioInfo>('x-query-vfio');
      assert.equal(dst[1]!.flavor, 'v1');
      assert.equal(dst[1]!.transferred, 0, 'no v2 state was fed to the v1 device');
      assert.equal((await pair.dst.execute<{ status: string }>('query-status')).status, 'inmigrate');
    } finally {
      await pair.stop();
    }
  });
});
