// `serve --flavor v2` through a real socket with our client: 9 regions and no migration region,
// DEVICE_FEATURE MIGRATION (STOP_COPY|PRE_COPY) and MIG_DEVICE_STATE GET/SET/PROBE, a save read with
// MIG_DATA_READ on one server process resumed with MIG_DATA_WRITE in other chunk sizes on another (digests
// equal), the data state rules, and libvfio-user HEAD's command gating while STOP_COPY.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Errno } from '../../src/abi/errno.ts';
import { FeatureId, MigState } from '../../src/abi/migration-v2.ts';
import {
  decodeMigrationData,
  decodeMigStateData,
  encodeMigStateData,
} from '../../src/abi/vfio-user/feature-migration.ts';
import { CONTROL_WORK, LargeMemoryRegs } from '../../src/device/samples/large-memory.ts';
import { VfioError } from '../../src/errors.ts';
import { VfioUserClient } from '../../src/vfio-user/client.ts';
import { type ServeProcess, startServe } from './client-support.ts';

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
      await assert.rejects(
        a.deviceFeature({ feature: FeatureId.DMA_LOGGING_STOP, set: true }),
        errno(Errno.EINVAL),
        'DMA logging is not served',
      );
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
      for (;;) {
        const chunk = await a.migDataRead(a.maxMigData);
        if (chunk.byteLength === 0) break;
        stream.push(chunk);
      }
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
