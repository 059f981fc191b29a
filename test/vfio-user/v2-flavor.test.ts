// `serve --flavor v2` through a real socket with our client: 9 regions and no migration region,
// DEVICE_FEATURE MIGRATION (STOP_COPY|PRE_COPY) and MIG_DEVICE_STATE GET/SET/PROBE, a save read with
// MIG_DATA_READ on one server process resumed with MIG_DATA_WRITE in other chunk sizes on another (digests
// equal), the data state rules, libvfio-user HEAD's command gating while STOP_COPY, and DMA logging
// (START/STOP/REPORT) reporting exactly the pages the device wrote by DMA.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Errno } from '../../src/abi/errno.ts';
import { FeatureId, MigState } from '../../src/abi/migration-v2.ts';
import {
  decodeDmaLoggingReportReply,
  encodeDmaLoggingControl,
  encodeDmaLoggingReportRequest,
} from '../../src/abi/vfio-user/feature-dma-logging.ts';
import {
  decodeMigDataSizeData,
  decodeMigrationData,
  decodeMigStateData,
  encodeMigStateData,
} from '../../src/abi/vfio-user/feature-migration.ts';
import { CONTROL_DMA, CONTROL_WORK, LargeMemoryRegs } from '../../src/device/samples/large-memory.ts';
import { VfioError } from '../../src/errors.ts';
import { native } from '../../src/native/addon.ts';
import { VfioUserClient } from '../../src/vfio-user/client.ts';
import { until } from '../support/until.ts';
import { type ServeProcess, startServe } from './client-support.ts';

function u64(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, true);
  return b;
}
function errno(e: number) {
  return (err: unknown) => err instanceof VfioError && err.errno === e;
}
async function getState(c: VfioUserClient): Promise<number> {
  const r = await c.deviceFeature({ feature: FeatureId.MIG_DEVICE_STATE, get: true });
  return decodeMigStateData(r.data).deviceState;
}
async function setState(c: VfioUserClient, s: number): Promise<void> {
  await c.deviceFeature({
    feature: FeatureId.MIG_DEVICE_STATE,
    set: true,
    data: encodeMigStateData({ deviceState: s }),
  });
}

describe('serve --flavor v2: save on one server, resume on another', () => {
  let src: ServeProcess;
  let dst: ServeProcess;
  before(async () => {
    const args = ['--flavor', 'v2', '--device', 'large-memory', '--device-mem', '2M', '--quiet'];
    [src, dst] = await Promise.all([startServe(args), startServe(args)]);
  });
  after(async () => {
    await Promise.all([src?.stop(), dst?.stop()]);
  });

  test('features, states, gating, and a resumed device with the saved digest', async () => {
    const a = await VfioUserClient.connect(src.path);
    const b = await VfioUserClient.connect(dst.path);
    try {
      assert.equal((await a.deviceInfo()).numRegions, 9);
      await assert.rejects(a.regionInfo(9), errno(Errno.EINVAL));
      const mig = await a.deviceFeature({ feature: FeatureId.MIGRATION, get: true });
      assert.equal(decodeMigrationData(mig.data).flags, 5n, 'STOP_COPY | PRE_COPY, no P2P');
      await a.deviceFeature({ feature: FeatureId.MIG_DEVICE_STATE, probe: true, set: true });
      // MIG_DATA_SIZE (beyond libvfio-user): in RUNNING, what saving the whole device now would send.
      await a.deviceFeature({ feature: FeatureId.MIG_DATA_SIZE, probe: true, get: true });
      await assert.rejects(
        a.deviceFeature({ feature: FeatureId.MIG_DATA_SIZE, set: true, data: u64(0n) }),
        errno(Errno.EINVAL),
      );
      const whole = decodeMigDataSizeData(
        (await a.deviceFeature({ feature: FeatureId.MIG_DATA_SIZE, get: true })).data,
      );
      assert.ok(whole > 32n * 24n, `a whole 2 MiB device: ${whole} bytes, at least a header per 64 KiB block`);
      assert.equal(await getState(a), MigState.RUNNING);
      await assert.rejects(a.migDataRead(4096), errno(Errno.EINVAL), 'no data while RUNNING');
      await assert.rejects(setState(a, MigState.RUNNING_P2P), errno(Errno.EINVAL), 'P2P is not offered');
      await a.regionWrite(0, LargeMemoryRegs.CONTROL, Uint8Array.of(CONTROL_WORK, 0, 0, 0));
      await setState(a, MigState.PRE_COPY);
      const stream: Uint8Array[] = [];
      const first = await a.migDataRead(a.maxMigData);
      stream.push(first);
      await setState(a, MigState.STOP_COPY);
      assert.equal(await getState(a), MigState.STOP_COPY);
      // libvfio-user HEAD gate: in STOP_COPY only DEVICE_FEATURE and MIG_DATA_READ (no region access).
      await assert.rejects(a.regionRead(0, LargeMemoryRegs.ID, 4), errno(Errno.EINVAL));
      await assert.rejects(a.dmaMap({ iova: 0x1000n, size: 0x1000n }), errno(Errno.EINVAL));
      await assert.rejects(setState(a, MigState.PRE_COPY), errno(Errno.EINVAL), 'STOP_COPY -> PRE_COPY');
      const stopCopy = decodeMigDataSizeData(
        (await a.deviceFeature({ feature: FeatureId.MIG_DATA_SIZE, get: true })).data,
      );
      let stopCopyRead = 0;
      for (;;) {
        const chunk = await a.migDataRead(a.maxMigData);
        if (chunk.byteLength === 0) break;
        stream.push(chunk);
        stopCopyRead += chunk.byteLength;
      }
      assert.equal(stopCopy, BigInt(stopCopyRead), 'MIG_DATA_SIZE in STOP_COPY is exactly what the reads then gave');
      await setState(a, MigState.STOP);
      const digest = await a.regionRead(0, LargeMemoryRegs.DIGEST, 32);
      const all = Buffer.concat(stream);
      await setState(b, MigState.RESUMING);
      assert.equal(await getState(b), MigState.RESUMING, 'RUNNING -> STOP -> RESUMING walked');
      await assert.rejects(b.migDataRead(16), errno(Errno.EINVAL), 'no reads while RESUMING');
      for (let at = 0; at < all.byteLength; at += 250_001) await b.migDataWrite(all.subarray(at, at + 250_001));
      await setState(b, MigState.STOP);
      assert.deepEqual(await b.regionRead(0, LargeMemoryRegs.DIGEST, 32), digest);
      await setState(b, MigState.RUNNING);
      assert.equal(await getState(b), MigState.RUNNING);
      await setState(a, MigState.RUNNING);
    } finally {
      a.close();
      b.close();
    }
  });

  test('an incomplete resume is refused and leaves the state at the last completed step', async () => {
    const b = await VfioUserClient.connect(dst.path);
    try {
      await setState(b, MigState.RESUMING);
      await b.migDataWrite(new Uint8Array(16));
      await assert.rejects(setState(b, MigState.RUNNING), (e) => e instanceof VfioError);
      assert.equal(await getState(b), MigState.RESUMING, 'RESUMING -> STOP failed: still RESUMING');
      await b.reset();
      assert.equal(await getState(b), MigState.RUNNING, 'reset returns to RUNNING');
    } finally {
      b.close();
    }
  });
});

describe('serve --flavor v2: DMA logging', () => {
  let srv: ServeProcess;
  before(async () => {
    srv = await startServe(['--flavor', 'v2', '--device', 'large-memory', '--device-mem', '1M', '--quiet']);
  });
  after(async () => srv?.stop());

  async function report(c: VfioUserClient, iova: bigint, length: bigint, pageSize = 4096n): Promise<Uint8Array> {
    const r = await c.deviceFeature({
      feature: FeatureId.DMA_LOGGING_REPORT,
      get: true,
      data: encodeDmaLoggingReportRequest({ iova, length, pageSize }),
    });
    return decodeDmaLoggingReportReply(r.data).bitmap.slice();
  }
  const bit = (b: Uint8Array, p: number) => ((b[p >> 3]! >> (p & 7)) & 1) === 1;

  test('START/STOP/REPORT: exactly the pages the device wrote, read-and-clear, with the checks', async () => {
    const c = await VfioUserClient.connect(srv.path);
    const size = 1 << 20;
    const memfd = native().memfdCreate('guest', size);
    const guest = new Uint8Array(native().mmap(memfd, 0, size, true));
    const iova = 0x4000_0000n;
    try {
      await c.dmaMap({ iova, size: BigInt(size), fd: memfd });
      await c.dmaMap({ iova: 0x8000_0000n, size: 0x10000n });
      await c.deviceFeature({ feature: FeatureId.DMA_LOGGING_START, probe: true, set: true });
      await assert.rejects(report(c, iova, BigInt(size)), errno(Errno.EINVAL), 'not started');
      const start = { feature: FeatureId.DMA_LOGGING_START, set: true };
      await c.deviceFeature({ ...start, data: encodeDmaLoggingControl({ pageSize: 4096n, ranges: [] }) });
      await c.deviceFeature({ ...start, data: encodeDmaLoggingControl({ pageSize: 4096n, ranges: [] }) });
      await assert.rejects(
        c.deviceFeature({ ...start, data: encodeDmaLoggingControl({ pageSize: 8192n, ranges: [] }) }),
        errno(Errno.EINVAL),
        'another page size while logging',
      );
      await assert.rejects(report(c, iova, 0x1000n), errno(Errno.ENOTSUP), 'part of a region');
      await assert.rejects(report(c, 0x1000n, 0x1000n), errno(Errno.ENOENT), 'no region');
      await assert.rejects(report(c, 0x8000_0000n, 0x10000n), errno(Errno.EINVAL), 'no fd');
      assert.ok(
        (await report(c, iova, BigInt(size))).every((x) => x === 0),
        'nothing written yet',
      );
      await c.regionWrite(0, LargeMemoryRegs.DMA_BASE, u64(iova));
      await c.regionWrite(0, LargeMemoryRegs.DMA_SIZE, u64(65536n));
      await c.regionWrite(0, LargeMemoryRegs.CONTROL, Uint8Array.of(CONTROL_WORK | CONTROL_DMA, 0, 0, 0));
      await until(() => guest.subarray(0, 65536).some((x) => x !== 0), 'a DMA by the device');
      await setState(c, MigState.STOP); // no DMA after this returns
      const written = (p: number) => guest.subarray(p * 4096, (p + 1) * 4096).some((x) => x !== 0);
      const fine = await report(c, iova, BigInt(size), 2048n); // smaller than the log's pages: repeated
      assert.equal(fine.byteLength, 64);
      for (let p = 0; p < 512; p++) assert.equal(bit(fine, p), written(p >> 1), `2 KiB page ${p}`);
      assert.ok(
        (await report(c, iova, BigInt(size))).every((x) => x === 0),
        'read-and-clear',
      );
      await setState(c, MigState.RUNNING);
      const before = guest.slice(0, 65536);
      await until(() => guest.subarray(0, 65536).some((x, i) => x !== before[i]), 'more DMA by the device');
      await setState(c, MigState.STOP);
      const coarse = await report(c, iova, BigInt(size), 8192n); // larger: OR-merged
      assert.equal(coarse.byteLength, 16);
      assert.ok(coarse.some((x) => x !== 0));
      for (let p = 8; p < 128; p++) assert.ok(!bit(coarse, p), `8 KiB page ${p} lies outside the 64 KiB ring`);
      await c.deviceFeature({ feature: FeatureId.DMA_LOGGING_STOP, set: true });
      await assert.rejects(report(c, iova, BigInt(size)), errno(Errno.EINVAL), 'stopped');
      await setState(c, MigState.RUNNING);
    } finally {
      c.close();
      native().munmap(guest.buffer as ArrayBuffer);
      native().close(memfd);
    }
  });
});
