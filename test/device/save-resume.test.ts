// A VMM's view: save a running device through its migration region (pre-copy iterations while it keeps
// working and doing DMA, then stop-and-copy) into a fresh instance in RESUMING, and compare the two devices
// byte for byte. Only region reads/writes (and, for an mmapped data section, the mapped memory) are used.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { DeviceState } from '../../src/abi/migration.ts';
import type { DeviceModel } from '../../src/device/device-model.ts';
import type { DataSectionKind } from '../../src/device/region-layout.ts';
import { LargeMemoryDevice, LargeMemoryRegs } from '../../src/device/samples/large-memory.ts';
import { RegisterFileDevice, RegisterFileRegs } from '../../src/device/samples/register-file.ts';
import { SeedMigrationRegion } from '../../src/device/seed-region.ts';
import { recoverRunning, resumeDevice, saveDeviceLive } from '../../src/vmm/vfio/device-live-save.ts';
import { SeedRegionClient } from '../../src/vmm/vfio/seed-region-client.ts';
import { regionPort } from '../support/region-port.ts';

const GUEST_PAGES = 256;
const PAGE = 4096;

/** Guest memory the device DMAs into, and the VMM's record of which pages it learned were dirty. */
function guestMemory() {
  const mem = new Uint8Array(GUEST_PAGES * PAGE);
  return {
    mem,
    port: {
      write: (iova: bigint, data: Uint8Array) => mem.set(data, Number(iova)),
      read: (iova: bigint, n: number) => mem.slice(Number(iova), Number(iova) + n),
    },
  };
}

function splitRandomly(data: Uint8Array, sizes: number[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  let at = 0;
  let i = 0;
  while (at < data.byteLength) {
    const n = Math.max(1, sizes[i++ % sizes.length]!);
    out.push(data.subarray(at, at + n));
    at += n;
  }
  return out;
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.byteLength, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}

interface Case {
  name: string;
  make: () => DeviceModel & { step(n: number): void; close(): void };
  kind: DataSectionKind;
  dataSize: number;
  dma: boolean;
}

async function migrate(c: Case, resumeSplits: number[]) {
  const src = c.make();
  const dst = c.make();
  const guest = guestMemory();
  if (c.dma && src instanceof LargeMemoryDevice) {
    src.attachDma(guest.port);
    src.configureDma(0n, BigInt(guest.mem.byteLength));
  }
  const srcRegion = new SeedMigrationRegion({
    backend: src.migration,
    kind: c.kind,
    dataSize: c.dataSize,
    bitmapSize: c.kind === 'mmapped' ? 4096 : 8,
  });
  const dstRegion = new SeedMigrationRegion({
    backend: dst.migration,
    kind: c.kind,
    dataSize: c.dataSize,
    bitmapSize: c.kind === 'mmapped' ? 4096 : 8,
  });
  const stats = { trapped: 0, mappedBytes: 0 };
  const client = new SeedRegionClient(regionPort(srcRegion, stats));
  src.step(500); // the device has been running before the migration starts
  const guestBefore = guest.mem.slice();
  const reported = new Set<number>();
  const chunks: Uint8Array[] = [];
  let digestAtStop = '';
  const save = await saveDeviceLive(client, {
    switchoverBytes: 0,
    maxIterations: 4,
    onChunk: (chunk) => {
      chunks.push(chunk.slice()); // a mapped chunk is a view, valid only during the callback
    },
    between: async () => src.step(300),
    logSync: async () => {
      await client.dirtyBitmap(0n, BigInt(PAGE), BigInt(GUEST_PAGES), (first, count, bitmap) => {
        for (let i = 0; i < count; i++) {
          if (bitmap === 'all' || (bitmap[i >>> 3]! >> (i & 7)) & 1) reported.add(Number(first) + i);
        }
      });
    },
    onStopped: () => {
      digestAtStop = src.stateDigest();
    },
  });
  assert.equal(srcRegion.state, DeviceState.STOPPED);
  const stream = concat(chunks);
  const dstClient = new SeedRegionClient(regionPort(dstRegion));
  await resumeDevice(dstClient, splitRandomly(stream, resumeSplits));
  assert.equal(dstRegion.state, DeviceState.RUNNING);
  // Every guest page the device's DMA changed since SAVING began was reported dirty.
  for (let p = 0; p < GUEST_PAGES; p++) {
    const changed = !Buffer.from(guest.mem.subarray(p * PAGE, (p + 1) * PAGE)).equals(
      guestBefore.subarray(p * PAGE, (p + 1) * PAGE),
    );
    if (changed) assert.ok(reported.has(p), `guest page ${p} written by DMA was never reported dirty`);
  }
  src.close();
  dst.close();
  return { src, dst, save, stats, digestAtStop, streamBytes: stream.byteLength, reported };
}

function readBar(dev: DeviceModel, bar: number, off: number, len: number): Uint8Array {
  return dev.bars[bar]!.read(off, len);
}

const small: Case[] = [];
for (const kind of ['trapped', 'mmapped'] as const) {
  small.push({
    name: `large-memory (4 MiB), ${kind}`,
    make: () => new LargeMemoryDevice({ memSize: 4 << 20, blockSize: 64 << 10, workRate: 0 }),
    kind,
    dataSize: 64 << 10,
    dma: true,
  });
  if (kind === 'mmapped')
    small.push({
      name: 'large-memory (4 MiB), mmapped, double-buffered (512 KiB data area)',
      make: () => new LargeMemoryDevice({ memSize: 4 << 20, blockSize: 64 << 10, workRate: 0 }),
      kind,
      dataSize: 512 << 10,
      dma: true,
    });
  small.push({
    name: `register-file, ${kind}`,
    make: () => new RegisterFileDevice({ tickRate: 0 }),
    kind,
    dataSize: kind === 'mmapped' ? 4096 : 1000,
    dma: false,
  });
}

describe('save a running device and resume it in a fresh instance', () => {
  for (const c of small) {
    test(`${c.name}: identical device after pre-copy + stop-and-copy, random resume chunking`, async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.array(fc.integer({ min: 1, max: 200_000 }), { minLength: 1, maxLength: 8 }),
          async (splits) => {
            const r = await migrate(c, splits);
            assert.equal(r.dst.stateDigest(), r.digestAtStop, 'resumed device equals the source at its stop point');
            assert.equal(r.src.stateDigest(), r.digestAtStop, 'source unchanged after stopping');
            if (c.kind === 'mmapped') assert.ok(r.stats.mappedBytes > 0, 'data moved through the mapping');
            if (r.src instanceof LargeMemoryDevice) {
              assert.ok(r.save.iterations >= 2, 'a changing device needs several pre-copy rounds');
              assert.ok(r.save.precopyBytes >= 4 << 20, 'the whole memory went in pre-copy');
              assert.ok(r.save.stopCopyBytes < r.save.precopyBytes, 'stop-and-copy sends only what changed');
              assert.ok(r.reported.size > 0, 'device DMA dirtied guest pages');
              // Any client can compare: BAR0's digest register and BAR2's memory.
              assert.deepEqual(
                readBar(r.dst, 0, LargeMemoryRegs.DIGEST, 32),
                readBar(r.src, 0, LargeMemoryRegs.DIGEST, 32),
              );
              assert.deepEqual(readBar(r.dst, 2, 0, 4 << 20), readBar(r.src, 2, 0, 4 << 20));
            } else {
              // Only its BEGIN record can go early: the registers change until the device stops.
              assert.ok(r.save.precopyBytes < RegisterFileRegs.SIZE, 'registers are not sent in pre-copy');
              assert.ok(r.save.stopCopyBytes > RegisterFileRegs.SIZE, 'registers are sent in stop-and-copy');
              assert.deepEqual(
                readBar(r.dst, 0, 0, RegisterFileRegs.SIZE),
                readBar(r.src, 0, 0, RegisterFileRegs.SIZE),
              );
            }
          },
        ),
        { numRuns: c.name.startsWith('large') ? 3 : 10 },
      );
    });
  }

  test('the default 256 MiB large-memory device through an mmapped data section', async () => {
    const r = await migrate(
      {
        name: 'default',
        make: () => new LargeMemoryDevice({ workRate: 0 }),
        kind: 'mmapped',
        dataSize: 1 << 20,
        dma: true,
      },
      [3 << 20, 12345, 1 << 20],
    );
    assert.equal(r.dst.stateDigest(), r.digestAtStop);
    assert.ok(r.save.precopyBytes > 0);
  });

  test('register state written by the driver before migration survives it', async () => {
    const src = new RegisterFileDevice({ tickRate: 0 });
    const dst = new RegisterFileDevice({ tickRate: 0 });
    const bar = src.bars[0]!;
    bar.write(RegisterFileRegs.LCR, Uint8Array.of(3, 0, 0, 0));
    for (const ch of 'hello') bar.write(RegisterFileRegs.TX_DATA, Uint8Array.of(ch.charCodeAt(0), 0, 0, 0));
    src.step(42);
    const client = new SeedRegionClient(
      regionPort(new SeedMigrationRegion({ backend: src.migration, kind: 'trapped' })),
    );
    const chunks: Uint8Array[] = [];
    await saveDeviceLive(client, { switchoverBytes: 0, maxIterations: 1, onChunk: (c) => void chunks.push(c.slice()) });
    await resumeDevice(
      new SeedRegionClient(regionPort(new SeedMigrationRegion({ backend: dst.migration, kind: 'trapped' }))),
      chunks,
    );
    const read = (off: number, n: number) => dst.bars[0]!.read(off, n);
    assert.deepEqual(read(RegisterFileRegs.FIFO, 5), new TextEncoder().encode('hello'));
    assert.equal(new DataView(read(RegisterFileRegs.TICKS, 8).buffer).getBigUint64(0, true), 42n);
    assert.equal(new DataView(read(RegisterFileRegs.LCR, 4).buffer).getUint32(0, true), 3);
    src.close();
    dst.close();
  });
});

describe('a failed or cancelled save leaves the source running with its state intact', () => {
  test('an error in the middle of pre-copy returns the device to RUNNING and a retry succeeds', async () => {
    const src = new LargeMemoryDevice({ memSize: 1 << 20, blockSize: 65536, workRate: 0 });
    const region = new SeedMigrationRegion({ backend: src.migration, kind: 'trapped', dataSize: 65536, bitmapSize: 8 });
    const client = new SeedRegionClient(regionPort(region));
    src.step(100);
    const before = src.stateDigest();
    let n = 0;
    await assert.rejects(
      saveDeviceLive(client, {
        switchoverBytes: 0,
        maxIterations: 3,
        onChunk: () => {
          if (++n === 5) throw new Error('link down');
        },
      }),
      /link down/,
    );
    assert.equal(region.state, DeviceState.RUNNING);
    assert.equal(src.stateDigest(), before, 'saving never changes the device');
    src.step(10);
    assert.notEqual(src.stateDigest(), before, 'and the device runs again');
    const chunks: Uint8Array[] = [];
    await saveDeviceLive(client, { switchoverBytes: 0, maxIterations: 2, onChunk: (c) => void chunks.push(c.slice()) });
    const dst = new LargeMemoryDevice({ memSize: 1 << 20, blockSize: 65536, workRate: 0 });
    await resumeDevice(
      new SeedRegionClient(
        regionPort(
          new SeedMigrationRegion({ backend: dst.migration, kind: 'trapped', dataSize: 65536, bitmapSize: 8 }),
        ),
      ),
      chunks,
    );
    assert.equal(dst.stateDigest(), src.stateDigest());
    src.close();
    dst.close();
  });

  test('recoverRunning from stop-and-copy restarts the device', async () => {
    const src = new RegisterFileDevice({ tickRate: 0 });
    const region = new SeedMigrationRegion({ backend: src.migration, kind: 'trapped' });
    const client = new SeedRegionClient(regionPort(region));
    await client.setDeviceState(DeviceState.MASK, DeviceState.SAVING);
    await client.setDeviceState(~DeviceState.RUNNING, 0);
    assert.equal(region.state, DeviceState.SAVING);
    assert.equal(await recoverRunning(client), true);
    assert.equal(region.state, DeviceState.RUNNING);
    src.close();
  });
});
