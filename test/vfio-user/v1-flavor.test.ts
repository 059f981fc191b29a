// `serve --flavor v1` through a real socket with our client: the Linux 5.8 region at index 9 (TYPE 3/1),
// a stop-and-copy save on one server process resumed on another in other chunk sizes (digests equal, for
// the mmapped and the trapped data section), and v1 dirty pages: DIRTY_PAGES START/STOP/GET_BITMAP and the
// bitmap of DMA_UNMAP, with libvfio-user's checks and errnos and its command gating while stopped.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Errno } from '../../src/abi/errno.ts';
import { DeviceState, V1_MIGRATION_INFO } from '../../src/abi/migration.ts';
import { CONTROL_DMA, CONTROL_WORK, LargeMemoryRegs } from '../../src/device/samples/large-memory.ts';
import { VfioError } from '../../src/errors.ts';
import { native } from '../../src/native/addon.ts';
import { VfioUserClient } from '../../src/vfio-user/client.ts';
import { until } from '../support/until.ts';
import { type ServeProcess, startServe } from './client-support.ts';

const MIG = 9;
const OFF = Object.fromEntries(V1_MIGRATION_INFO.fields.map((f) => [f.name, f.offset])) as Record<string, number>;

function u32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, true);
  return b;
}
function u64(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, true);
  return b;
}
async function r64(c: VfioUserClient, name: string): Promise<bigint> {
  const b = await c.regionRead(MIG, OFF[name]!, 8);
  return new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0, true);
}
async function setState(c: VfioUserClient, s: number): Promise<void> {
  await c.regionWrite(MIG, OFF.device_state!, u32(s));
}
function errno(e: number) {
  return (err: unknown) => err instanceof VfioError && err.errno === e;
}

for (const kind of ['mmapped', 'trapped'] as const) {
  describe(`serve --flavor v1 (${kind} data section): save on one server, resume on another`, () => {
    let src: ServeProcess;
    let dst: ServeProcess;
    before(async () => {
      const args = [
        '--flavor',
        'v1',
        '--data-section',
        kind,
        '--device',
        'large-memory',
        '--device-mem',
        '2M',
        '--quiet',
      ];
      [src, dst] = await Promise.all([startServe(args), startServe(args)]);
    });
    after(async () => {
      await Promise.all([src?.stop(), dst?.stop()]);
    });

    test('region 9 is the 5.8 region; the saved state resumes in other chunk sizes with an equal digest', async () => {
      const a = await VfioUserClient.connect(src.path);
      const b = await VfioUserClient.connect(dst.path);
      try {
        const info = await a.regionInfo(MIG);
        assert.deepEqual(info.caps[0], { kind: 'type', type: 3, subtype: 1 });
        assert.equal(info.mmappable, kind === 'mmapped');
        assert.equal((await a.deviceInfo()).numRegions, 10);
        // Let the device run a while so its state is not the initial one.
        await a.regionWrite(0, LargeMemoryRegs.CONTROL, u32(CONTROL_WORK));
        await until(
          async () => (await a.regionRead(0, LargeMemoryRegs.WORK_COUNT, 8)).some((x) => x !== 0),
          'the device to work',
        );
        await setState(a, DeviceState.SAVING | DeviceState.RUNNING);
        await setState(a, DeviceState.SAVING);
        const digest = await a.regionRead(0, LargeMemoryRegs.DIGEST, 32);
        const stream: Uint8Array[] = [];
        let buffers = 0;
        for (;;) {
          if ((await r64(a, 'pending_bytes')) === 0n) break;
          const off = Number(await r64(a, 'data_offset'));
          assert.equal(off, 4096, 'data_offset: right after the one-page register area');
          const size = Number(await r64(a, 'data_size'));
          stream.push(await a.regionRead(MIG, off, size));
          buffers++;
        }
        assert.ok(buffers >= 1 && stream.some((s) => s.byteLength > 0), 'the device saved something');
        await setState(a, DeviceState.STOPPED);
        const all = Buffer.concat(stream);
        await setState(b, DeviceState.RESUMING);
        const piece = 300_007; // not the source's buffer size: the device takes its stream split anywhere
        for (let at = 0; at < all.byteLength; at += piece) {
          const off = Number(await r64(b, 'data_offset'));
          const chunk = all.subarray(at, at + piece);
          await b.regionWrite(MIG, off, chunk);
          await b.regionWrite(MIG, OFF.data_size!, u64(BigInt(chunk.byteLength)));
        }
        // Compared before the device runs (and its work changes its memory again).
        assert.deepEqual(await b.regionRead(0, LargeMemoryRegs.DIGEST, 32), digest);
        await setState(b, DeviceState.RUNNING);
        const st = await b.regionRead(MIG, OFF.device_state!, 4);
        assert.equal(new DataView(st.buffer, st.byteOffset, 4).getUint32(0, true), DeviceState.RUNNING);
      } finally {
        a.close();
        b.close();
      }
    });
  });
}

describe('serve --flavor v1: dirty pages through DIRTY_PAGES and DMA_UNMAP', () => {
  let srv: ServeProcess;
  before(async () => {
    srv = await startServe(['--flavor', 'v1', '--device', 'large-memory', '--device-mem', '1M', '--quiet']);
  });
  after(async () => srv?.stop());

  test('pages the device writes by DMA are reported once, with libvfio-user checks and errnos', async () => {
    const c = await VfioUserClient.connect(srv.path);
    const size = 1 << 20;
    const memfd = native().memfdCreate('guest', size);
    const guest = new Uint8Array(native().mmap(memfd, 0, size, true));
    const iova = 0x4000_0000n;
    try {
      await c.dmaMap({ iova, size: BigInt(size), fd: memfd });
      await c.dmaMap({ iova: 0x8000_0000n, size: 0x10000n }); // no fd: its pages are not logged
      const range = { iova, size: BigInt(size) };
      await assert.rejects(c.dirtyPages('get-bitmap', range), errno(Errno.EINVAL), 'not started');
      await c.dirtyPages('start');
      await c.dirtyPages('start'); // idempotent
      await assert.rejects(c.dirtyPages('get-bitmap', { iova, size: 0x1000n }), errno(Errno.ENOTSUP), 'part');
      await assert.rejects(c.dirtyPages('get-bitmap', { iova: 0x1000n, size: 0x1000n }), errno(Errno.ENOENT));
      await assert.rejects(c.dirtyPages('get-bitmap', { ...range, pgsize: 8192n }), errno(Errno.EINVAL), 'pgsize');
      await assert.rejects(
        c.dirtyPages('get-bitmap', { iova: 0x8000_0000n, size: 0x10000n }),
        errno(Errno.EINVAL),
        'no fd',
      );
      assert.ok(
        (await c.dirtyPages('get-bitmap', range)).every((x) => x === 0),
        'nothing written yet',
      );
      await c.regionWrite(0, LargeMemoryRegs.DMA_BASE, u64(iova));
      await c.regionWrite(0, LargeMemoryRegs.DMA_SIZE, u64(65536n));
      await c.regionWrite(0, LargeMemoryRegs.CONTROL, u32(CONTROL_WORK | CONTROL_DMA));
      await until(() => guest.subarray(0, 65536).some((x) => x !== 0), 'a DMA write');
      await setState(c, DeviceState.STOPPED); // no DMA after this returns
      // Stopped: libvfio-user's v1 gate takes region accesses and DIRTY_PAGES only.
      await assert.rejects(c.dmaMap({ iova: 0x9000_0000n, size: 0x1000n }), errno(Errno.EINVAL));
      const bitmap = await c.dirtyPages('get-bitmap', range);
      assert.equal(bitmap.byteLength, 32, '256 pages: ceil(256 / 64) * 8 bytes');
      for (let p = 0; p < 256; p++) {
        const written = guest.subarray(p * 4096, (p + 1) * 4096).some((x) => x !== 0);
        const dirty = ((bitmap[p >> 3]! >> (p & 7)) & 1) === 1;
        assert.equal(dirty, written, `page ${p}: reported dirty exactly when the device wrote it`);
      }
      assert.ok(
        (await c.dirtyPages('get-bitmap', range)).every((x) => x === 0),
        'read-and-clear',
      );
      await setState(c, DeviceState.RUNNING);
      await until(async () => (await c.regionRead(0, LargeMemoryRegs.DMA_COUNT, 8)).some((x) => x !== 0), 'a DMA');
      const before = (await c.regionRead(0, LargeMemoryRegs.DMA_COUNT, 8)).slice();
      await until(async () => {
        const now = await c.regionRead(0, LargeMemoryRegs.DMA_COUNT, 8);
        return now.some((x, i) => x !== before[i]);
      }, 'more DMA');
      await c.regionWrite(0, LargeMemoryRegs.CONTROL, u32(0));
      const unmapped = await c.dmaUnmap({ iova, size: BigInt(size), dirtyBitmap: {} });
      assert.ok(unmapped.bitmap && unmapped.bitmap.byteLength === 32);
      assert.ok(
        unmapped.bitmap.some((x) => x !== 0),
        'DMA since the last query comes back with the unmap',
      );
      await c.dirtyPages('stop');
      await c.dirtyPages('stop'); // idempotent
    } finally {
      c.close();
      native().munmap(guest.buffer as ArrayBuffer);
      native().close(memfd);
    }
  });
});
