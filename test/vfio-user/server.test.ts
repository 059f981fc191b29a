// The device server as a separate process, driven by a scripted client over a real UNIX socket with real
// fd passing: negotiation, device/region/IRQ info, the migration region's caps and mmappable data section,
// DMA with and without fds, bad requests (answered with an errno, server keeps serving), a second client,
// reconnects and lost framing. Fuzzing, limits and leak checks: server-fuzz.test.ts.
import assert from 'node:assert/strict';
import { readdirSync, readlinkSync } from 'node:fs';
import { after, afterEach, before, describe, test } from 'node:test';
import { Errno } from '../../src/abi/errno.ts';
import { readField, writeField } from '../../src/abi/fields.ts';
import { DeviceState, SEED_MIGRATION_INFO } from '../../src/abi/migration.ts';
import { Command } from '../../src/abi/vfio-user/commands.ts';
import { decodeDeviceInfoReply, encodeDeviceInfoRequest } from '../../src/abi/vfio-user/device-info.ts';
import { decodeDmaWriteRequest, encodeDmaWriteReply } from '../../src/abi/vfio-user/dma-access.ts';
import { DmaMapFlag, encodeDmaMapRequest } from '../../src/abi/vfio-user/dma-map.ts';
import { encodeDmaUnmapRequest } from '../../src/abi/vfio-user/dma-unmap.ts';
import {
  decodeIrqInfoReply,
  encodeIrqInfoRequest,
  encodeIrqSetRequest,
  IrqSetFlag,
} from '../../src/abi/vfio-user/irq.ts';
import {
  decodeRegionReadReply,
  encodeRegionReadRequest,
  encodeRegionWriteRequest,
} from '../../src/abi/vfio-user/region-access.ts';
import { decodeRegionInfoReply, encodeRegionInfoRequest, RegionInfoFlag } from '../../src/abi/vfio-user/region-info.ts';
import { decodeVersionReply, encodeVersionRequest } from '../../src/abi/vfio-user/version.ts';
import { CONTROL_DMA, CONTROL_WORK, LargeMemoryRegs } from '../../src/device/samples/large-memory.ts';
import { VfioError } from '../../src/errors.ts';
import { native } from '../../src/native/addon.ts';
import type { Connection } from '../../src/vfio-user/connection.ts';
import { closed, rawConnect as connect } from '../support/raw-client.ts';
import { type ServerProcess, startServer } from '../support/server-process.ts';
import { until } from '../support/until.ts';

const MIG = 9;
const OFF = Object.fromEntries(SEED_MIGRATION_INFO.fields.map((f) => [f.name, f.offset])) as Record<string, number>;

// Every client a test opens is closed after it, pass or fail, so one failure cannot cascade into EBUSY.
const open: Connection[] = [];
async function rawConnect(...args: Parameters<typeof connect>): Promise<Connection> {
  const c = await connect(...args);
  open.push(c);
  return c;
}
afterEach(async () => {
  for (const c of open.splice(0)) {
    c.close();
    await closed(c);
  }
});

/** Another process's open fds and what each refers to (Linux /proc/PID/fd), as in test/native/support.ts. */
function processFds(pid: number): Map<number, string> {
  const out = new Map<number, string>();
  for (const name of readdirSync(`/proc/${pid}/fd`)) {
    try {
      out.set(Number(name), readlinkSync(`/proc/${pid}/fd/${name}`));
    } catch {
      // closed while we looked: not open, so not counted
    }
  }
  return out;
}
/** The fds in `now` that were not open, to the same thing, in `then`, as "fd -> target". */
function fdsAdded(then: Map<number, string>, now: Map<number, string>): string[] {
  return [...now].filter(([fd, target]) => then.get(fd) !== target).map(([fd, target]) => `${fd} -> ${target}`);
}
function eventfds(fds: Map<number, string>): number {
  return [...fds.values()].filter((t) => t === 'anon_inode:[eventfd]').length;
}

function le32(b: Uint8Array): number {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(0, true);
}

async function regionRead(c: Connection, region: number, offset: number, count: number): Promise<Uint8Array> {
  const r = await c.request(Command.REGION_READ, encodeRegionReadRequest({ offset: BigInt(offset), region, count }));
  return decodeRegionReadReply(r.payload).data;
}
async function regionWrite(c: Connection, region: number, offset: number, data: Uint8Array): Promise<void> {
  await c.request(Command.REGION_WRITE, encodeRegionWriteRequest({ offset: BigInt(offset), region, data }));
}
function u64(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  writeField(b, 0, 8, v);
  return b;
}
function u32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  writeField(b, 0, 4, BigInt(v));
  return b;
}
async function field(c: Connection, name: string): Promise<bigint> {
  const width = name === 'device_state' ? 4 : 8;
  return readField(await regionRead(c, MIG, OFF[name]!, width), 0, width);
}
async function rejectsWith(p: Promise<unknown>, errno: number): Promise<void> {
  await assert.rejects(p, (e: unknown) => e instanceof VfioError && e.errno === errno);
}

describe('vfio-user server (register-file device, mmapped data section)', () => {
  let srv: ServerProcess;
  before(async () => {
    srv = await startServer(['--device', 'register-file']);
  });
  after(async () => srv.stop());

  test('VERSION negotiates the libvfio-user limits and migration page size', async () => {
    const c = await rawConnect(srv.path, { version: false });
    const r = await c.request(
      Command.VERSION,
      encodeVersionRequest({ major: 0, minor: 7, capabilities: { maxMsgFds: 4 } }),
    );
    const v = decodeVersionReply(r.payload);
    assert.equal(v.major, 0);
    assert.equal(v.minor, 2, 'reply minor = min(ours, proposed)');
    assert.equal(v.capabilities?.maxMsgFds, 8);
    assert.equal(v.capabilities?.maxDataXferSize, 1 << 20);
    assert.equal(v.capabilities?.migration?.pgsize, 4096);
    c.close();
    await closed(c);
  });

  test('commands before VERSION, a wrong major, and unknown commands get EINVAL', async () => {
    const c = await rawConnect(srv.path, { version: false });
    await rejectsWith(c.request(Command.DEVICE_GET_INFO, encodeDeviceInfoRequest()), Errno.EINVAL);
    await rejectsWith(c.request(Command.VERSION, encodeVersionRequest({ major: 1, minor: 0 })), Errno.EINVAL);
    await c.request(Command.VERSION, encodeVersionRequest({ major: 0, minor: 2 }));
    await rejectsWith(c.request(99, new Uint8Array(8)), Errno.EINVAL);
    await rejectsWith(c.request(Command.REGION_WRITE_MULTI, new Uint8Array(8)), Errno.EINVAL);
    c.close();
  });

  test('device info, IRQ info, and every region with its flags', async () => {
    const c = await rawConnect(srv.path);
    const info = decodeDeviceInfoReply((await c.request(Command.DEVICE_GET_INFO, encodeDeviceInfoRequest())).payload);
    assert.deepEqual([info.flags, info.numRegions, info.numIrqs], [3, 10, 5]);
    const irq = decodeIrqInfoReply(
      (await c.request(Command.DEVICE_GET_IRQ_INFO, encodeIrqInfoRequest({ index: 2 }))).payload,
    );
    assert.equal(irq.count, 4);
    const badIrq = new Uint8Array(16);
    new DataView(badIrq.buffer).setUint32(0, 16, true);
    new DataView(badIrq.buffer).setUint32(8, 5, true); // index 5: our encoder refuses to build it
    await rejectsWith(c.request(Command.DEVICE_GET_IRQ_INFO, badIrq), Errno.EINVAL);
    const bar0 = decodeRegionInfoReply(
      (await c.request(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ index: 0, argsz: 32 }))).payload,
    );
    assert.equal(bar0.size, 4096n);
    assert.equal(bar0.flags, RegionInfoFlag.READ | RegionInfoFlag.WRITE);
    const bar1 = decodeRegionInfoReply(
      (await c.request(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ index: 1, argsz: 32 }))).payload,
    );
    assert.equal(bar1.size, 0n, 'absent BARs have size 0');
    const cfg = await regionRead(c, 7, 0, 4);
    assert.equal(le32(cfg) & 0xffff, 0x1de5, 'PCI vendor id');
    await regionWrite(c, 7, 0x10, u32(0xffffffff));
    assert.equal(le32(await regionRead(c, 7, 0x10, 4)), 0xfffff000, 'BAR sizing');
    await rejectsWith(
      c.request(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ index: 10, argsz: 32 })),
      Errno.EINVAL,
    );
    c.close();
  });

  test('a DEVICE_GET_REGION_INFO request longer than 32 bytes is served as libvfio-user does; shorter is EINVAL', async () => {
    const c = await rawConnect(srv.path);
    const s = decodeRegionInfoReply(
      (await c.request(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ index: MIG, argsz: 32 }))).payload,
    );
    // libvfio-user's client sends argsz bytes: the 32-byte struct, then zeros up to argsz.
    const long = new Uint8Array(s.argsz);
    long.set(encodeRegionInfoRequest({ index: MIG, argsz: s.argsz }));
    const full = await c.request(Command.DEVICE_GET_REGION_INFO, long);
    const f = decodeRegionInfoReply(full.payload);
    assert.equal(f.argsz, s.argsz);
    assert.ok(f.flags & RegionInfoFlag.CAPS, 'caps sent');
    assert.equal(full.fds.length, 1, 'and the region fd with them');
    const short = encodeRegionInfoRequest({ index: MIG, argsz: 32 }).subarray(0, 24);
    await rejectsWith(c.request(Command.DEVICE_GET_REGION_INFO, short), Errno.EINVAL);
    // A long request still names its region: a bad index in it is refused.
    const badIndex = new Uint8Array(64);
    badIndex.set(encodeRegionInfoRequest({ index: 0, argsz: 64 }));
    new DataView(badIndex.buffer).setUint32(8, 10, true);
    await rejectsWith(c.request(Command.DEVICE_GET_REGION_INFO, badIndex), Errno.EINVAL);
    const longBar0 = new Uint8Array(64);
    longBar0.set(encodeRegionInfoRequest({ index: 0, argsz: 64 }));
    const bar0 = decodeRegionInfoReply((await c.request(Command.DEVICE_GET_REGION_INFO, longBar0)).payload);
    assert.equal(bar0.index, 0);
    assert.equal(bar0.size, 4096n);
    for (const f of full.fds) native().close(f);
  });

  test('the migration region: TYPE cap 2/1, sparse-mmap cap and its fd only when argsz allows the caps', async () => {
    const c = await rawConnect(srv.path);
    const short = await c.request(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ index: MIG, argsz: 32 }));
    const s = decodeRegionInfoReply(short.payload);
    assert.equal(short.fds.length, 0);
    assert.equal(s.flags & RegionInfoFlag.CAPS, 0);
    assert.ok(s.argsz > 32, 'argsz says how much room the caps need');
    const full = await c.request(
      Command.DEVICE_GET_REGION_INFO,
      encodeRegionInfoRequest({ index: MIG, argsz: s.argsz }),
    );
    const f = decodeRegionInfoReply(full.payload);
    assert.equal(full.fds.length, 1, 'the region fd came with the caps');
    assert.ok(f.flags & RegionInfoFlag.MMAP);
    assert.deepEqual(f.caps[0], { kind: 'type', type: 2, subtype: 1 });
    const sparse = f.caps[1];
    assert.ok(sparse && sparse.kind === 'sparse-mmap' && sparse.areas.length === 1);
    const area = sparse.areas[0]!;
    assert.equal(area.offset % 4096n, 0n);
    // Map the data section from the fd and check it is the very memory the trapped path shows.
    const ab = native().mmap(full.fds[0]!, Number(f.offset + area.offset), Number(area.size), false);
    const mapped = new Uint8Array(ab);
    await regionWrite(c, MIG, 0, u32(DeviceState.SAVING | DeviceState.RUNNING));
    await regionWrite(c, MIG, 0, u32(DeviceState.SAVING));
    const dataOffset = Number(await field(c, 'data_offset'));
    const size = Number(await field(c, 'data_size'));
    assert.ok(size > 4096, 'register-file state chunk');
    const viaMessages = await regionRead(c, MIG, dataOffset, size);
    const viaMap = mapped.subarray(dataOffset - Number(area.offset), dataOffset - Number(area.offset) + size);
    assert.deepEqual(viaMap, viaMessages);
    native().munmap(ab);
    native().close(full.fds[0]!);
    await regionWrite(c, MIG, 0, u32(DeviceState.RUNNING));
    c.close();
  });

  test('bad requests get an errno and the server keeps serving', async () => {
    const c = await rawConnect(srv.path);
    await rejectsWith(regionRead(c, 0, 4090, 8), Errno.EINVAL);
    await rejectsWith(regionRead(c, 8, 0, 4), Errno.EINVAL);
    await rejectsWith(regionWrite(c, 0, 0, u32(1)), Errno.EINVAL); // read-only ID register
    await rejectsWith(regionRead(c, MIG, 2, 4), Errno.EINVAL); // misaligned header access
    await rejectsWith(regionWrite(c, MIG, 0, u32(6)), Errno.EINVAL); // SAVING|RESUMING
    await rejectsWith(
      c.request(Command.DMA_UNMAP, encodeDmaUnmapRequest({ flags: 0, address: 0x1000n, size: 0x1000n })),
      Errno.ENOENT,
    );
    await c.request(
      Command.DMA_MAP,
      encodeDmaMapRequest({ flags: DmaMapFlag.READ | DmaMapFlag.WRITE, offset: 0n, address: 0x10000n, size: 0x10000n }),
    );
    await rejectsWith(
      c.request(
        Command.DMA_MAP,
        encodeDmaMapRequest({ flags: DmaMapFlag.READ, offset: 0n, address: 0x18000n, size: 0x10000n }),
      ),
      Errno.EINVAL,
    );
    await rejectsWith(
      c.request(
        Command.DEVICE_SET_IRQS,
        encodeIrqSetRequest({ flags: IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_TRIGGER, index: 0, start: 0, count: 2 }),
      ),
      Errno.EINVAL,
    );
    const id = await regionRead(c, 0, 0, 4);
    assert.equal(new TextDecoder().decode(id), 'UART', 'still serving');
    c.close();
  });

  test('a session that refused a request answers the next valid ones exactly as a fresh session does', async () => {
    // Reads only: what a fresh connection gets back is what the refused one must still get, byte for byte.
    const probes: [number, Uint8Array][] = [
      [Command.DEVICE_GET_INFO, encodeDeviceInfoRequest()],
      [Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ index: 0 })],
      [Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ index: MIG })],
      [Command.DEVICE_GET_IRQ_INFO, encodeIrqInfoRequest({ index: 2 })],
      [Command.REGION_READ, encodeRegionReadRequest({ offset: 0n, region: 0, count: 8 })],
      // Past TICKS (0x8, advancing while the device runs): the rest of the register file's head.
      [Command.REGION_READ, encodeRegionReadRequest({ offset: 0x10n, region: 0, count: 112 })],
      [Command.REGION_READ, encodeRegionReadRequest({ offset: BigInt(OFF.device_state!), region: MIG, count: 4 })],
    ];
    const answers = async (c: Connection) => {
      const out: string[] = [];
      for (const [cmd, payload] of probes)
        out.push(Buffer.from((await c.request(cmd, payload)).payload).toString('hex'));
      return out;
    };
    const fresh = await rawConnect(srv.path);
    const want = await answers(fresh);
    fresh.close();
    await closed(fresh);
    const c = await rawConnect(srv.path);
    const refused: [string, () => Promise<unknown>, number][] = [
      ['read past the end of BAR0', () => regionRead(c, 0, 4090, 8), Errno.EINVAL],
      ['read of a region that does not exist', () => regionRead(c, 8, 0, 4), Errno.EINVAL],
      ['write to the read-only ID register', () => regionWrite(c, 0, 0, u32(1)), Errno.EINVAL],
      ['misaligned migration header access', () => regionRead(c, MIG, 2, 4), Errno.EINVAL],
      ['device_state SAVING|RESUMING', () => regionWrite(c, MIG, 0, u32(6)), Errno.EINVAL],
      [
        'unmap of nothing mapped',
        () => c.request(Command.DMA_UNMAP, encodeDmaUnmapRequest({ flags: 0, address: 0x1000n, size: 0x1000n })),
        Errno.ENOENT,
      ],
      [
        'SET_IRQS past the vectors',
        () =>
          c.request(
            Command.DEVICE_SET_IRQS,
            encodeIrqSetRequest({
              flags: IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_TRIGGER,
              index: 0,
              start: 0,
              count: 2,
            }),
          ),
        Errno.EINVAL,
      ],
      [
        'DEVICE_GET_INFO with a short payload',
        () => c.request(Command.DEVICE_GET_INFO, new Uint8Array(4)),
        Errno.EINVAL,
      ],
    ];
    for (const [what, send, errno] of refused) {
      await rejectsWith(send(), errno);
      assert.deepEqual(await answers(c), want, `after a refused ${what}`);
    }
    c.close();
  });

  test('IRQ eventfds are taken, replaced and released without leaking', async () => {
    const c = await rawConnect(srv.path);
    await regionRead(c, 0, 0, 4); // the connection fully served before the count starts
    const pid = srv.proc.pid!;
    const before = processFds(pid);
    const base = eventfds(before); // libuv's own eventfds
    for (let round = 0; round < 3; round++) {
      const efds = [native().eventfd(0, true), native().eventfd(0, true)];
      await c.request(
        Command.DEVICE_SET_IRQS,
        encodeIrqSetRequest({
          flags: IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER,
          index: 2,
          start: 0,
          count: 2,
        }),
        { fds: efds },
      );
      for (const fd of efds) native().close(fd);
      // Taken: the server holds its own copies (ours are closed); replaced: the previous round's are gone.
      const held = processFds(pid);
      assert.equal(eventfds(held) - base, 2, `round ${round}: exactly the two vectors' eventfds held`);
      assert.deepEqual(
        fdsAdded(before, held).map((f) => f.replace(/^\d+ -> /, '')),
        ['anon_inode:[eventfd]', 'anon_inode:[eventfd]'],
        `round ${round}: nothing but the two eventfds added`,
      );
    }
    await c.request(
      Command.DEVICE_SET_IRQS,
      encodeIrqSetRequest({ flags: IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_TRIGGER, index: 2, start: 0, count: 0 }),
    );
    // Released: the server's fds are the same set, by number and target, as before the first eventfd.
    const afterAll = processFds(pid);
    assert.deepEqual(fdsAdded(before, afterAll), [], 'no fd left open');
    assert.deepEqual(fdsAdded(afterAll, before), [], 'no fd of the server closed by mistake');
    c.close();
  });

  test('a second concurrent client is refused with EBUSY; after the first leaves, a new one is served', async () => {
    const first = await rawConnect(srv.path);
    await rejectsWith(rawConnect(srv.path, { busyRetryMs: 0 }), Errno.EBUSY);
    first.close();
    await closed(first);
    await new Promise((r) => setTimeout(r, 50));
    const next = await rawConnect(srv.path);
    assert.equal(new TextDecoder().decode(await regionRead(next, 0, 0, 4)), 'UART');
    next.close();
  });

  test('a newcomer that connected just before the current client hung up is served, not refused as busy', async () => {
    const first = await rawConnect(srv.path);
    // Connected (accepted by the server) while `first` still holds the device, negotiating only after.
    const second = await rawConnect(srv.path, { version: false });
    await new Promise((r) => setTimeout(r, 50));
    first.close();
    const reply = await second.request(
      Command.VERSION,
      encodeVersionRequest({ major: 0, minor: 2, capabilities: { maxMsgFds: 8, maxDataXferSize: 1 << 20 } }),
    );
    assert.equal(reply.header.error, false, 'VERSION answered, not EBUSY');
    assert.equal(new TextDecoder().decode(await regionRead(second, 0, 0, 4)), 'UART');
    second.close();
    await closed(second);
  });

  test('a client that dies during a save leaves the device running for the next client', async () => {
    const c = await rawConnect(srv.path);
    await regionWrite(c, MIG, 0, u32(DeviceState.SAVING | DeviceState.RUNNING));
    assert.equal(await field(c, 'device_state'), 3n);
    c.socket.destroy(); // as if the VMM crashed
    await closed(c);
    await new Promise((r) => setTimeout(r, 100));
    const next = await rawConnect(srv.path);
    assert.equal(await field(next, 'device_state'), BigInt(DeviceState.RUNNING));
    next.close();
  });

  test('a lost framing closes that connection only', async () => {
    const c = await rawConnect(srv.path);
    const garbage = new Uint8Array(16);
    new DataView(garbage.buffer).setUint32(4, 8, true); // msg_size 8 < header
    c.socket.write(garbage);
    await closed(c);
    await new Promise((r) => setTimeout(r, 50));
    const next = await rawConnect(srv.path);
    assert.equal(new TextDecoder().decode(await regionRead(next, 0, 0, 4)), 'UART');
    next.close();
  });
});

describe('vfio-user server: device DMA (large-memory device)', () => {
  let srv: ServerProcess;
  before(async () => {
    srv = await startServer(['--device', 'large-memory', '--device-mem', '1M', '--work-rate', '20000']);
  });
  after(async () => srv.stop());

  async function startDma(c: Connection, base: bigint, size: bigint) {
    await regionWrite(c, 0, LargeMemoryRegs.DMA_BASE, u64(base));
    await regionWrite(c, 0, LargeMemoryRegs.DMA_SIZE, u64(size));
    await regionWrite(c, 0, LargeMemoryRegs.CONTROL, u32(CONTROL_WORK | CONTROL_DMA));
  }

  test('DMA into a memfd-backed range is a memory write, and its pages come back in the dirty bitmap', async () => {
    const c = await rawConnect(srv.path);
    const size = 1 << 20;
    const memfd = native().memfdCreate('guest', size);
    const guest = new Uint8Array(native().mmap(memfd, 0, size, true));
    const iova = 0x4000_0000n;
    await c.request(
      Command.DMA_MAP,
      encodeDmaMapRequest({ flags: DmaMapFlag.READ | DmaMapFlag.WRITE, offset: 0n, address: iova, size: BigInt(size) }),
      {
        fds: [memfd],
      },
    );
    await regionWrite(c, MIG, 0, u32(DeviceState.SAVING | DeviceState.RUNNING)); // dirty logging on
    await startDma(c, iova, 65536n);
    // The device (another process) writes on its own ticker: wait for it rather than for a fixed time.
    await until(() => guest.subarray(0, 65536).some((b) => b !== 0), 'the device to write guest memory');
    await regionWrite(c, MIG, 0, u32(DeviceState.SAVING)); // stop: no more DMA after this returns
    const snapshot = guest.slice();
    await regionWrite(c, MIG, OFF.start_pfn!, u64(iova / 4096n));
    await regionWrite(c, MIG, OFF.page_size!, u64(4096n));
    await regionWrite(c, MIG, OFF.total_pfns!, u64(BigInt(size / 4096)));
    const n = await field(c, 'copied_pfns');
    assert.ok(n === 0xffff_ffff_ffff_ffffn || n > 0n);
    const dirty = new Set<number>();
    if (n !== 0xffff_ffff_ffff_ffffn) {
      const off = Number(await field(c, 'data_offset'));
      const bm = await regionRead(c, MIG, off, Math.ceil(Number(n) / 8));
      for (let i = 0; i < Number(n); i++) if ((bm[i >> 3]! >> (i & 7)) & 1) dirty.add(i);
    }
    for (let p = 0; p < 16; p++) {
      if (guest.subarray(p * 4096, (p + 1) * 4096).some((b) => b !== 0))
        assert.ok(dirty.has(p), `page ${p} written by DMA is reported`);
    }
    assert.ok(![...dirty].some((p) => p >= 16), 'only the DMA ring pages are dirty');
    await new Promise((r) => setTimeout(r, 60));
    assert.deepEqual(guest, snapshot, 'a stopped device does no DMA');
    await regionWrite(c, MIG, 0, u32(DeviceState.RUNNING));
    native().munmap(guest.buffer as ArrayBuffer);
    c.close();
    await closed(c);
  });

  test('without an fd, DMA arrives as DMA_WRITE commands the client answers', async () => {
    const c = await rawConnect(srv.path);
    const guest = new Uint8Array(65536);
    const iova = 0x8000_0000n;
    let writes = 0;
    c.on('command', (m) => {
      assert.equal(m.header.cmd, Command.DMA_WRITE);
      const w = decodeDmaWriteRequest(m.payload);
      guest.set(w.data, Number(w.address - iova));
      writes++;
      c.reply(m, encodeDmaWriteReply({ address: w.address, count: BigInt(w.data.byteLength) }));
    });
    await c.request(
      Command.DMA_MAP,
      encodeDmaMapRequest({ flags: DmaMapFlag.READ | DmaMapFlag.WRITE, offset: 0n, address: iova, size: 65536n }),
    );
    await startDma(c, iova, 4096n);
    await until(() => writes > 0 && guest.some((b) => b !== 0), 'DMA_WRITE commands from the device');
    // Stopping the device waits for every DMA_WRITE in flight, so none arrives after the reply.
    await regionWrite(c, MIG, 0, u32(DeviceState.STOPPED));
    const after = writes;
    await new Promise((r) => setTimeout(r, 60));
    assert.equal(writes, after);
    // A stopped device accepts only region accesses.
    await rejectsWith(c.request(Command.DEVICE_GET_INFO, encodeDeviceInfoRequest()), Errno.EINVAL);
    await regionWrite(c, MIG, 0, u32(DeviceState.RUNNING));
    c.close();
    await closed(c);
  });
});
