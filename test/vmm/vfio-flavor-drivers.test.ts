// The v1 and v2 migration drivers against scripted vfio-user servers on real UNIX sockets: what they do
// when the device refuses a state change (v2: the recover state, or a reset when the device is left in
// ERROR; v1: a reset when device_state reads the error value), and how the device's dirty log is merged
// into the guest's at a log sync. The happy paths run against libvfio-user in test/interop/.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Errno } from '../../src/abi/errno.ts';
import { FeatureId, MigState } from '../../src/abi/migration-v2.ts';
import { Command } from '../../src/abi/vfio-user/commands.ts';
import { decodeDeviceFeatureRequest, encodeDeviceFeatureReply } from '../../src/abi/vfio-user/device-feature.ts';
import { decodeDirtyPagesRequest, encodeDirtyPagesBitmapReply } from '../../src/abi/vfio-user/dirty-pages.ts';
import {
  decodeDmaLoggingReportRequest,
  encodeDmaLoggingReportReply,
} from '../../src/abi/vfio-user/feature-dma-logging.ts';
import {
  decodeMigStateData,
  encodeMigDataSizeData,
  encodeMigStateData,
} from '../../src/abi/vfio-user/feature-migration.ts';
import { decodeMigDataReadRequest, encodeMigDataReadReply } from '../../src/abi/vfio-user/mig-data.ts';
import {
  decodeRegionReadRequest,
  decodeRegionWriteRequest,
  encodeRegionReadReply,
  encodeRegionWriteReply,
} from '../../src/abi/vfio-user/region-access.ts';
import { VfioError } from '../../src/errors.ts';
import { VfioUserClient } from '../../src/vfio-user/client.ts';
import { GuestDirtyBitmap } from '../../src/vmm/guest/dirty-bitmap.ts';
import { parseDeviceSpec } from '../../src/vmm/vfio/device-spec.ts';
import { V1MigrationDriver } from '../../src/vmm/vfio/v1-driver.ts';
import { V2MigrationDriver } from '../../src/vmm/vfio/v2-driver.ts';
import { ScriptedServer, type ScriptOptions } from '../vfio-user/client-support.ts';

type TestContext = { after: (fn: () => void | Promise<void>) => void };

async function connect(t: TestContext, script: ScriptOptions) {
  const srv = new ScriptedServer(script);
  const client = await VfioUserClient.connect(srv.path, { timeoutMs: 3000 });
  t.after(() => {
    client.close();
    srv.close();
  });
  return { srv, client };
}

function errno(e: number) {
  return (err: unknown) => err instanceof VfioError && err.errno === e;
}

/** A v2 device: MIG_DEVICE_STATE per `onSet`, DMA logging with a fixed report. */
function v2Device(state: { now: number; resets: number; sets: number[] }, onSet: (target: number) => number | null) {
  const bitmap = new Uint8Array(8);
  bitmap[0] = 0b0000_0101; // pages 0 and 2
  bitmap[1] = 0b1000_0000; // page 15
  return {
    [Command.DEVICE_FEATURE]: (m, conn) => {
      const r = decodeDeviceFeatureRequest(m.payload);
      if (r.feature === FeatureId.MIG_DEVICE_STATE && r.get) {
        return conn.reply(
          m,
          encodeDeviceFeatureReply({
            feature: r.feature,
            get: true,
            data: encodeMigStateData({ deviceState: state.now }),
          }),
        );
      }
      if (r.feature === FeatureId.MIG_DEVICE_STATE && r.set) {
        const target = decodeMigStateData(r.data).deviceState;
        state.sets.push(target);
        const err = onSet(target);
        if (err !== null) throw new VfioError(err, 'refused');
        state.now = target;
        return conn.reply(m, m.payload);
      }
      if (r.feature === FeatureId.DMA_LOGGING_START || r.feature === FeatureId.DMA_LOGGING_STOP)
        return conn.reply(m, m.payload);
      if (r.feature === FeatureId.DMA_LOGGING_REPORT) {
        const q = decodeDmaLoggingReportRequest(r.data.subarray(0, 24));
        return conn.reply(
          m,
          encodeDeviceFeatureReply({
            feature: r.feature,
            get: true,
            data: encodeDmaLoggingReportReply({ ...q, bitmap }),
          }),
        );
      }
      throw new VfioError(Errno.EINVAL, 'unexpected feature');
    },
    [Command.REGION_READ]: (m, conn) => {
      const r = decodeRegionReadRequest(m.payload);
      conn.reply(m, encodeRegionReadReply({ ...r, data: new Uint8Array(r.count) }));
    },
    [Command.DEVICE_RESET]: (m, conn) => {
      state.resets++;
      state.now = MigState.RUNNING;
      conn.reply(m);
    },
  } satisfies ScriptOptions['handlers'];
}

describe('v2 driver', () => {
  test('a refused SET falls back to the recover state; one that leaves ERROR resets the device', async (t) => {
    const state = { now: MigState.RUNNING as number, resets: 0, sets: [] as number[] };
    let failNext: 'recoverable' | 'error' | null = null;
    const { client } = await connect(t, {
      handlers: v2Device(state, (target) => {
        if (failNext === 'recoverable' && target === MigState.PRE_COPY) return Errno.EIO;
        if (failNext === 'error' && target === MigState.STOP_COPY) {
          state.now = MigState.ERROR; // the device broke on the way
          return Errno.EIO;
        }
        return null;
      }),
    });
    const driver = await V2MigrationDriver.open(client, 'dev0', 5n);
    failNext = 'recoverable';
    await assert.rejects(driver.saveSetup(), (e: unknown) => {
      assert.ok(e instanceof VfioError && e.errno === Errno.EIO);
      assert.match(e.message, /dev0: the device refused MIG_DEVICE_STATE RUNNING -> PRE_COPY/);
      return true;
    });
    assert.equal(state.now, MigState.RUNNING, 'still RUNNING: the recover state');
    assert.equal(state.resets, 0);

    failNext = 'error';
    await driver.vmStateChange(false, 'finish-migrate'); // RUNNING → STOP
    await assert.rejects(
      driver.saveComplete(() => {}),
      errno(Errno.EIO),
    );
    assert.equal(state.resets, 1, 'ERROR is left only by a reset');
    assert.equal(await driver.deviceState(), MigState.RUNNING);
    assert.deepEqual(state.sets, [MigState.PRE_COPY, MigState.STOP, MigState.STOP_COPY]);
  });

  test('precopy=off leaves PRE_COPY unused; the DMA log merges into the guest dirty bitmap', async (t) => {
    const state = { now: MigState.RUNNING as number, resets: 0, sets: [] as number[] };
    const { srv, client } = await connect(t, { handlers: v2Device(state, () => null) });
    const driver = await V2MigrationDriver.open(client, 'dev0', 5n, { precopy: false });
    await driver.saveSetup();
    assert.equal(state.now, MigState.RUNNING);
    assert.equal(await driver.saveIterate(1 << 20, () => {}), 0, 'nothing read outside PRE_COPY');
    const dirty = new GuestDirtyBitmap(64);
    const n = await driver.dirtySync([{ iova: 0n, size: 64n * 4096n }], dirty.sink);
    assert.equal(n, 3n);
    assert.equal(dirty.count(), 3);
    const features = srv
      .seenOf(Command.DEVICE_FEATURE)
      .map((s) => decodeDeviceFeatureRequest(s.payload).feature)
      .filter((f) => f !== FeatureId.MIG_DEVICE_STATE);
    assert.deepEqual(features, [FeatureId.DMA_LOGGING_START, FeatureId.DMA_LOGGING_REPORT]);
  });
});

describe('v2 driver: data', () => {
  test('pre-copy reads until a short read; the VM stop moves PRE_COPY to STOP_COPY, drained until 0 bytes', async (t) => {
    const state = { now: MigState.RUNNING as number, resets: 0, sets: [] as number[] };
    // PRE_COPY offers 2.5 reads' worth, then nothing more; STOP_COPY offers 1.5 reads' worth, then EOF.
    let left = 0;
    const handlers = {
      ...v2Device(state, (target) => {
        if (target === MigState.PRE_COPY) left = 4096 * 2 + 2048;
        if (target === MigState.STOP_COPY) left = 4096 + 2048;
        return null;
      }),
      [Command.MIG_DATA_READ]: (m, conn) => {
        const { size } = decodeMigDataReadRequest(m.payload);
        const n = Math.min(size, left);
        left -= n;
        conn.reply(m, encodeMigDataReadReply({ data: new Uint8Array(n).fill(state.now) }));
      },
    } satisfies ScriptOptions['handlers'];
    const { srv, client } = await connect(t, { offer: { maxDataXferSize: 4096 }, handlers });
    const driver = await V2MigrationDriver.open(client, 'dev0', 5n);
    await driver.saveSetup();
    assert.equal(state.now, MigState.PRE_COPY);
    assert.equal(await driver.savePending(), 4096n, 'more may come: one read');
    const got: number[] = [];
    assert.equal(await driver.saveIterate(1 << 20, (c) => void got.push(c.byteLength)), 4096 * 2 + 2048);
    assert.deepEqual(got, [4096, 4096, 2048]);
    assert.equal(await driver.savePending(), 0n, 'the short read said nothing more now');
    const sizeQueries = (await srv.seenOf(Command.DEVICE_FEATURE))
      .map((s) => decodeDeviceFeatureRequest(s.payload).feature)
      .filter((f) => f === FeatureId.MIG_DATA_SIZE);
    assert.equal(sizeQueries.length, 1, 'a device that refuses MIG_DATA_SIZE is asked once');
    await driver.vmStateChange(false, 'finish-migrate');
    assert.equal(state.now, MigState.STOP_COPY, 'the same transfer goes on');
    got.length = 0;
    const bytes: number[] = [];
    assert.equal(await driver.saveComplete((c) => void bytes.push(...c)), 4096 + 2048);
    assert.ok(bytes.every((b) => b === MigState.STOP_COPY));
    await driver.saveCleanup();
    assert.equal(state.now, MigState.STOP);
    assert.deepEqual(state.sets, [MigState.PRE_COPY, MigState.STOP_COPY, MigState.STOP]);
    assert.equal(driver.transferred, 4096 * 3 + 2048 * 2);
  });
});

test('v2 driver: pending counts the stop-copy size a device answers with MIG_DATA_SIZE (QEMU: pending exact)', async (t) => {
  const state = { now: MigState.RUNNING as number, resets: 0, sets: [] as number[] };
  const device = v2Device(state, () => null);
  const handlers = {
    ...device,
    [Command.DEVICE_FEATURE]: (m, conn) => {
      const r = decodeDeviceFeatureRequest(m.payload);
      if (r.feature !== FeatureId.MIG_DATA_SIZE) return device[Command.DEVICE_FEATURE](m, conn);
      conn.reply(m, encodeDeviceFeatureReply({ feature: r.feature, get: true, data: encodeMigDataSizeData(123_456n) }));
    },
  } satisfies ScriptOptions['handlers'];
  const { client } = await connect(t, { offer: { maxDataXferSize: 4096 }, handlers });
  const driver = await V2MigrationDriver.open(client, 'dev0', 5n);
  assert.equal(await driver.savePending(), 0n, 'not saving: nothing pending');
  await driver.saveSetup();
  assert.equal(await driver.savePending(), 4096n + 123_456n, 'one read of pre-copy data, then the stop-copy estimate');
});

describe('v2 driver: reads in flight', () => {
  test('stop-copy keeps 4 MIG_DATA_READs outstanding into reused buffers, chunks in stream order; data after the end is refused', async (t) => {
    const state = { now: MigState.RUNNING as number, resets: 0, sets: [] as number[] };
    const SIZE = 4096;
    const total = SIZE * 9 + 100; // 10 chunks, the last one short, then EOF
    let produced = 0;
    let seq = 0;
    // Second run: a broken device whose first read says the data ended, and whose next ones return data.
    let broken = false;
    let brokenReads = 0;
    const held: (() => void)[] = [];
    let mostHeld = 0;
    const handlers = {
      ...v2Device(state, () => null),
      [Command.MIG_DATA_READ]: (m, conn) => {
        const { size } = decodeMigDataReadRequest(m.payload);
        const n = produced < total ? Math.min(size, total - produced) : broken && brokenReads++ > 0 ? 16 : 0;
        const data = new Uint8Array(n).fill(seq++ & 0xff);
        produced += n;
        // Padded to the size asked for, as libvfio-user and ours reply: the client receives it in place.
        held.push(() => conn.reply(m, encodeMigDataReadReply({ data, padTo: size })));
        mostHeld = Math.max(mostHeld, held.length);
        // Replies are held until four requests are outstanding (or the stream is over): a client that
        // waited for each reply before the next request would never get one.
        if (held.length >= 4 || produced >= total) for (const r of held.splice(0)) r();
      },
    } satisfies ScriptOptions['handlers'];
    const { client } = await connect(t, { offer: { maxDataXferSize: SIZE }, handlers });
    const driver = await V2MigrationDriver.open(client, 'dev0', 1n); // STOP_COPY only
    await driver.vmStateChange(false, 'finish-migrate');
    const chunks: number[][] = [];
    const buffers = new Set<ArrayBufferLike>();
    assert.equal(
      await driver.saveComplete((c) => {
        chunks.push([c.byteLength, c[0]!, c[c.byteLength - 1]!]);
        buffers.add(c.buffer);
      }),
      total,
    );
    assert.equal(mostHeld, 4, 'four requests were outstanding at once');
    assert.deepEqual(
      chunks,
      Array.from({ length: 10 }, (_, k) => [k < 9 ? SIZE : 100, k, k]),
      'every chunk whole and in order',
    );
    assert.ok(buffers.size <= 4, `chunks came in ${buffers.size} reused buffers`);

    // A device that returns data after its end (a 0-byte read) breaks the protocol: EIO, nothing more passed on.
    state.now = MigState.STOP;
    broken = true;
    const again = await V2MigrationDriver.open(client, 'dev0', 1n);
    let passed = 0;
    await assert.rejects(
      again.saveComplete((c) => {
        passed += c.byteLength;
      }),
      (e: unknown) => e instanceof VfioError && e.errno === Errno.EIO && /after the end of the data/.test(e.message),
    );
    assert.equal(passed, 0, 'nothing after the end reached the stream');
    assert.equal(passed, 0);
  });
});

describe('v1 driver', () => {
  /** A v1 region at index 9: device_state at 0, a write of `refuse` fails and leaves the error state (6). */
  function v1Device(regs: { state: number; resets: number }, refuse: number) {
    return {
      [Command.REGION_READ]: (m, conn) => {
        const r = decodeRegionReadRequest(m.payload);
        const data = new Uint8Array(r.count);
        if (r.region === 9 && r.offset === 0n) new DataView(data.buffer).setUint32(0, regs.state, true);
        conn.reply(m, encodeRegionReadReply({ ...r, data }));
      },
      [Command.REGION_WRITE]: (m, conn) => {
        const r = decodeRegionWriteRequest(m.payload);
        const v = new DataView(r.data.buffer, r.data.byteOffset).getUint32(0, true);
        if (v === refuse) {
          regs.state = 6;
          throw new VfioError(Errno.EIO, 'device broke');
        }
        regs.state = v;
        conn.reply(m, encodeRegionWriteReply({ offset: r.offset, region: r.region, count: r.data.byteLength }));
      },
      [Command.DIRTY_PAGES]: (m, conn) => {
        const r = decodeDirtyPagesRequest(m.payload);
        if (!r.range) return conn.reply(m);
        const bitmap = new Uint8Array(Number(r.range.bitmapSize));
        bitmap[0] = 0b1000_0001; // pages 0 and 7
        conn.reply(m, encodeDirtyPagesBitmapReply({ range: r.range, bitmap }));
      },
      [Command.DEVICE_RESET]: (m, conn) => {
        regs.resets++;
        regs.state = 1;
        conn.reply(m);
      },
    } satisfies ScriptOptions['handlers'];
  }
  const found = {
    flavor: 'v1' as const,
    index: 9,
    info: { index: 9, flags: 3, size: 0x5000n, offset: 0n, caps: [] },
  } as unknown as Parameters<typeof V1MigrationDriver.open>[2];

  test('(old & mask) | value, an unchanged state not written, a write that leaves the error state resets', async (t) => {
    const regs = { state: 1, resets: 0 };
    const { srv, client } = await connect(t, { handlers: v1Device(regs, 2) });
    const driver = await V1MigrationDriver.open(client, 'dev1', found);
    await driver.vmStateChange(true, 'boot'); // already RUNNING: nothing written
    assert.equal(srv.seenOf(Command.REGION_WRITE).length, 0);
    await driver.saveSetup(); // 1 → 3 (pre-copy)
    assert.equal(regs.state, 3);
    const dirty = new GuestDirtyBitmap(64);
    assert.equal(await driver.dirtySync([{ iova: 0n, size: 64n * 4096n }], dirty.sink), 2n);
    assert.equal(dirty.count(), 2);
    // VM stop: RUNNING cleared, 3 → 2, which this device fails into the error state.
    await assert.rejects(driver.vmStateChange(false, 'finish-migrate'), (e: unknown) => {
      assert.ok(e instanceof VfioError && e.errno === Errno.EIO);
      assert.match(e.message, /dev1: the device refused device_state pre-copy -> stop-and-copy/);
      return true;
    });
    assert.equal(regs.resets, 1, 'the error state is left only by a reset');
    assert.equal(regs.state, 1);
  });
});

describe('v1 driver: register reads in flight', () => {
  test('data_size is sent with data_offset: a device that answers data_offset only once data_size has arrived', async (t) => {
    // pending_bytes @8, data_offset @16, data_size @24; the data section at 0x1000.
    const SIZE = 6000;
    const data = Uint8Array.from({ length: SIZE }, (_, i) => (i * 7) & 0xff);
    let pending = BigInt(SIZE);
    let held: (() => void) | null = null;
    const sizeReads: boolean[] = [];
    const u64 = (v: bigint) => {
      const b = new Uint8Array(8);
      new DataView(b.buffer).setBigUint64(0, v, true);
      return b;
    };
    const { client } = await connect(t, {
      handlers: {
        [Command.REGION_READ]: (m, conn) => {
          const r = decodeRegionReadRequest(m.payload);
          const reply = (bytes: Uint8Array) => conn.reply(m, encodeRegionReadReply({ ...r, data: bytes }));
          const at = Number(r.offset);
          if (at === 8) return reply(u64(pending));
          if (at === 16) {
            // Held: a driver that waits for this answer before asking data_size times out (3 s).
            held = () => reply(u64(0x1000n));
            return;
          }
          if (at === 24) {
            sizeReads.push(held !== null);
            const release = held;
            held = null;
            release?.();
            const size = pending;
            pending = 0n;
            return reply(u64(size));
          }
          if (at >= 0x1000) return reply(data.subarray(at - 0x1000, at - 0x1000 + r.count));
          reply(new Uint8Array(r.count));
        },
      } satisfies ScriptOptions['handlers'],
    });
    const driver = await V1MigrationDriver.open(client, 'dev1', {
      flavor: 'v1',
      index: 9,
      info: { index: 9, flags: 3, size: 0x5000n, offset: 0n, caps: [] },
    } as unknown as Parameters<typeof V1MigrationDriver.open>[2]);
    const got: Uint8Array[] = [];
    assert.equal(await driver.saveIterate(1 << 20, (c) => void got.push(c.slice())), SIZE);
    assert.deepEqual(sizeReads, [true], 'the one data_size read arrived while data_offset was unanswered');
    assert.deepEqual(Buffer.concat(got), Buffer.from(data));
  });
});

describe('--device-socket properties', () => {
  test('PATH[,precopy=on|off], commas in the path doubled; unknown properties refused', () => {
    assert.deepEqual(parseDeviceSpec('/tmp/a.sock'), { path: '/tmp/a.sock', precopy: true });
    assert.deepEqual(parseDeviceSpec('/tmp/a.sock,precopy=off'), { path: '/tmp/a.sock', precopy: false });
    assert.deepEqual(parseDeviceSpec('/tmp/a,,b.sock,precopy=on'), { path: '/tmp/a,b.sock', precopy: true });
    assert.throws(() => parseDeviceSpec('/tmp/a.sock,pre=off'), /unknown property "pre"/);
    assert.throws(() => parseDeviceSpec('/tmp/a.sock,precopy=maybe'), /precopy must be on or off/);
    assert.throws(() => parseDeviceSpec(',precopy=off'), /no socket path/);
  });

  test('max-write=SIZE in bytes, K or M; anything else refused', () => {
    assert.deepEqual(parseDeviceSpec('/tmp/a.sock,max-write=32K'), {
      path: '/tmp/a.sock',
      precopy: true,
      maxWrite: 32768,
    });
    assert.equal(parseDeviceSpec('/tmp/a.sock,precopy=off,max-write=4096').maxWrite, 4096);
    assert.equal(parseDeviceSpec('/tmp/a.sock,max-write=1m').maxWrite, 1 << 20);
    for (const bad of ['0', '', '32Q', '-1', '1.5K']) {
      assert.throws(() => parseDeviceSpec(`/tmp/a.sock,max-write=${bad}`), /max-write must be a size/, bad);
    }
  });
});
