// The save/resume of issue 3, now across processes through vfio-user: a large-memory device doing DMA into
// guest memory (memfd-backed, or reached by DMA_WRITE messages) is saved live from one `serve` process
// (pre-copy, then stop-and-copy) and resumed in another, for both data-section kinds. The resumed device
// equals the source at its stop point, and every guest page its DMA changed was reported dirty.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { DeviceState } from '../../src/abi/migration.ts';
import { CONTROL_DMA, CONTROL_WORK, LargeMemoryRegs } from '../../src/device/samples/large-memory.ts';
import { native } from '../../src/native/addon.ts';
import { VfioUserClient } from '../../src/vfio-user/client.ts';
import { findMigrationRegion, openRegionPort } from '../../src/vfio-user/region-port.ts';
import { GuestDirtyBitmap } from '../../src/vmm/guest/dirty-bitmap.ts';
import { resumeDevice, saveDeviceLive } from '../../src/vmm/vfio/device-live-save.ts';
import { SeedRegionClient } from '../../src/vmm/vfio/seed-region-client.ts';
import { type ServerProcess, startServer } from '../support/server-process.ts';
import { until } from '../support/until.ts';

const PAGE = 4096;
const GUEST = 1 << 20;
const IOVA = 0x1_0000_0000n;

function le(v: bigint, width: 4 | 8): Uint8Array {
  const b = new Uint8Array(width);
  const dv = new DataView(b.buffer);
  if (width === 4) dv.setUint32(0, Number(v), true);
  else dv.setBigUint64(0, v, true);
  return b;
}

for (const kind of ['trapped', 'mmapped'] as const) {
  describe(`live save across processes, ${kind} data section`, () => {
    let src: ServerProcess;
    let dst: ServerProcess;
    const args = [
      '--device',
      'large-memory',
      '--device-mem',
      '2M',
      '--work-rate',
      '20000',
      '--data-section',
      kind,
      // 1 MiB per pre-copy round of a 2 MiB state: a second iteration is certain, however fast the machine.
      '--x-precopy-quota',
      '1M',
      '--quiet',
    ];
    before(async () => {
      [src, dst] = await Promise.all([startServer(args), startServer(args)]);
    });
    after(async () => {
      await Promise.all([src.stop(), dst.stop()]);
    });

    for (const dma of ['memfd', 'messages'] as const) {
      test(`DMA through ${dma}: resumed device identical, no DMA-dirtied page missed`, async () => {
        const a = await VfioUserClient.connect(src.path);
        const b = await VfioUserClient.connect(dst.path);
        let memfd = -1;
        let guest: Uint8Array;
        if (dma === 'memfd') {
          memfd = native().memfdCreate('live-save-guest', GUEST);
          guest = new Uint8Array(native().mmap(memfd, 0, GUEST, true));
          await a.dmaMap({ iova: IOVA, size: BigInt(GUEST), fd: memfd });
        } else {
          guest = new Uint8Array(GUEST);
          a.registerDmaMemory(IOVA, guest);
          await a.dmaMap({ iova: IOVA, size: BigInt(GUEST), read: true, write: true });
        }
        const srcRegion = await findMigrationRegion(a);
        const dstRegion = await findMigrationRegion(b);
        assert.equal(srcRegion?.flavor, 'seed');
        const srcPort = await openRegionPort(a, srcRegion!.index);
        const dstPort = await openRegionPort(b, dstRegion!.index);
        assert.equal(srcPort.areas.length > 0, kind === 'mmapped', 'mapped exactly when the server offers it');
        try {
          await a.regionWrite(0, LargeMemoryRegs.DMA_BASE, le(IOVA, 8));
          await a.regionWrite(0, LargeMemoryRegs.DMA_SIZE, le(BigInt(GUEST), 8));
          await a.regionWrite(0, LargeMemoryRegs.CONTROL, le(BigInt(CONTROL_WORK | CONTROL_DMA), 4));
          await new Promise((r) => setTimeout(r, 50));
          const dmaCount = async () => {
            const b = await a.regionRead(0, LargeMemoryRegs.DMA_COUNT, 8);
            return new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0, true);
          };
          const client = new SeedRegionClient(srcPort);
          const dirty = new GuestDirtyBitmap(GUEST / PAGE, IOVA / BigInt(PAGE));
          let guestAtStart: Uint8Array = new Uint8Array(0);
          let guestAtStop: Uint8Array = new Uint8Array(0);
          let digestAtStop: Uint8Array = new Uint8Array(0);
          const chunks: Uint8Array[] = [];
          const save = await saveDeviceLive(client, {
            switchoverBytes: 0,
            maxIterations: 3,
            onChunk: (c) => void chunks.push(c.slice()),
            // The device does DMA on its own ticker (another process): wait until it did some since the
            // last sync, so that a page changed after the first sync is certain rather than hoped for.
            between: async () => {
              const before = await dmaCount();
              await until(async () => (await dmaCount()) > before, 'device DMA between pre-copy iterations');
            },
            logSync: async () => {
              if (guestAtStart.byteLength === 0) guestAtStart = guest.slice();
              await client.dirtyBitmap(IOVA / BigInt(PAGE), BigInt(PAGE), BigInt(GUEST / PAGE), dirty.sink);
            },
            onStopped: async () => {
              guestAtStop = guest.slice();
              digestAtStop = await a.regionRead(0, LargeMemoryRegs.DIGEST, 32);
            },
          });
          assert.ok(save.iterations >= 2, `${save.iterations} pre-copy iterations`);
          const dstClient = new SeedRegionClient(dstPort);
          await resumeDevice(dstClient, chunks);
          assert.deepEqual(
            await b.regionRead(0, LargeMemoryRegs.DIGEST, 32),
            digestAtStop,
            'resumed device = source at stop',
          );
          let changed = 0;
          for (let p = 0; p < GUEST / PAGE; p++) {
            const x = guestAtStart.subarray(p * PAGE, (p + 1) * PAGE);
            const y = guestAtStop.subarray(p * PAGE, (p + 1) * PAGE);
            if (Buffer.compare(x, y) !== 0) {
              changed++;
              assert.ok(dirty.has(p), `guest page ${p} changed by DMA after the first sync was not reported`);
            }
          }
          assert.ok(changed > 0, 'the device did DMA during the save');
          await client.setDeviceState(~DeviceState.MASK, DeviceState.RUNNING);
        } finally {
          srcPort.close();
          dstPort.close();
          await a.dmaUnmap({ all: true }).catch(() => {});
          a.close();
          b.close();
          if (memfd >= 0) {
            native().munmap(guest.buffer as ArrayBuffer);
            native().close(memfd);
          }
        }
      });
    }
  });
}
