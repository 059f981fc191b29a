// The client against the real device server in another process (`vfio-migrate serve`): device, region and
// IRQ info, BAR and config accesses, migration-region discovery, a seed save/resume from one server process
// into another through SeedRegionClient over our RegionPort (mmapped and trapped data sections), device DMA
// into memfd-backed and message-based (registered) memory, a server that dies, and the probe command.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Errno } from '../../src/abi/errno.ts';
import { DeviceState } from '../../src/abi/migration.ts';
import { CONTROL_DMA, CONTROL_WORK, LargeMemoryRegs } from '../../src/device/samples/large-memory.ts';
import { RegisterFileRegs } from '../../src/device/samples/register-file.ts';
import { VfioError } from '../../src/errors.ts';
import { native } from '../../src/native/addon.ts';
import { VfioUserClient } from '../../src/vfio-user/client.ts';
import {
  findMigrationRegion,
  openRegionPort,
  type RegionPort,
  type VfioRegionPort,
} from '../../src/vfio-user/region-port.ts';
import { resumeDevice, saveDeviceLive } from '../../src/vmm/vfio/device-live-save.ts';
import { SeedRegionClient } from '../../src/vmm/vfio/seed-region-client.ts';
import { until } from '../support/until.ts';
import { runCli, ScriptedServer, type ServeProcess, startServe } from './client-support.ts';

const MIG = 9;

function le(bytes: Uint8Array): bigint {
  return new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
}

function u32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v, true);
  return b;
}

function u64(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, true);
  return b;
}

function errno(e: number) {
  return (err: unknown) => err instanceof VfioError && err.errno === e;
}

/** Counts how the seed client used the port: trapped accesses and bytes moved through the mapping. */
function counting(port: RegionPort) {
  const stats = { trapped: 0, mappedBytes: 0 };
  const wrapped: RegionPort = {
    size: port.size,
    read: (o, n) => {
      stats.trapped++;
      return port.read(o, n);
    },
    write: (o, d) => {
      stats.trapped++;
      return port.write(o, d);
    },
    mapped: (o, n) => {
      const v = port.mapped(o, n);
      if (v) stats.mappedBytes += n;
      return v;
    },
  };
  return { port: wrapped, stats };
}

describe('client ↔ serve: register-file device', () => {
  let srv: ServeProcess;
  let client: VfioUserClient;
  before(async () => {
    srv = await startServe(['--device', 'register-file', '--quiet']);
    client = await VfioUserClient.connect(srv.path, { timeoutMs: 5000 });
  });
  after(async () => {
    client?.close();
    await srv?.stop();
  });

  test('negotiated version and limits', () => {
    assert.deepEqual(client.version, { major: 0, minor: 2 });
    assert.equal(client.server.maxMsgFds, 8);
    assert.equal(client.maxTransfer, 1 << 20);
    assert.equal(client.server.migration?.pgsize, 4096);
    // Our server reads a message in any pieces, so our client's writes go at max_data_xfer_size.
    assert.equal(client.server.splitMessages, true);
    assert.ok(client.writeCap >= client.maxTransfer);
  });

  test('device, region and IRQ info as the v1-era libvfio-user layout has them', async () => {
    assert.deepEqual(await client.deviceInfo(), { argsz: 16, flags: 3, numRegions: 10, numIrqs: 5 });
    const bar0 = await client.regionInfo(0);
    assert.equal(bar0.size, 4096n);
    assert.ok(bar0.readable && bar0.writable && !bar0.mmappable);
    assert.equal(bar0.fd, undefined);
    assert.equal((await client.regionInfo(1)).size, 0n, 'absent BAR');
    assert.equal((await client.regionInfo(7)).size, 256n);
    const mig = await client.regionInfo(MIG);
    assert.deepEqual(mig.type, { type: 2, subtype: 1 });
    assert.equal(mig.sparseAreas?.length, 1);
    assert.ok(mig.fd !== undefined, 'the migration region fd came with the caps');
    native().close(mig.fd);
    await assert.rejects(client.regionInfo(10), errno(Errno.EINVAL));
    assert.equal((await client.irqInfo(2)).count, 4);
    await assert.rejects(client.irqInfo(5), errno(Errno.EINVAL));
  });

  test('BAR0 and config space reads and writes', async () => {
    assert.equal(new TextDecoder().decode(await client.regionRead(0, RegisterFileRegs.ID, 4)), 'UART');
    const cfg = await client.regionRead(7, 0, 256);
    assert.equal(cfg[0]! | (cfg[1]! << 8), 0x1de5, 'vendor id');
    const scratch = Uint8Array.from({ length: 256 }, (_, i) => i ^ 0x5a);
    await client.regionWrite(0, RegisterFileRegs.SCRATCH, scratch);
    assert.deepEqual(await client.regionRead(0, RegisterFileRegs.SCRATCH, 256), scratch);
    await assert.rejects(client.regionRead(0, 4090, 8), errno(Errno.EINVAL));
    await assert.rejects(client.regionWrite(0, RegisterFileRegs.ID, u32(1)), errno(Errno.EINVAL));
  });

  test('eventfds for every MSI-X vector; v1 DIRTY_PAGES is not this device’s way (EINVAL)', async () => {
    const efds = Array.from({ length: 4 }, () => native().eventfd(0, true));
    try {
      await client.setIrqs({ index: 2, eventfds: efds });
      await client.disableIrqs(2);
    } finally {
      for (const fd of efds) native().close(fd);
    }
    await assert.rejects(client.dirtyPages('start'), errno(Errno.EINVAL));
  });

  test('findMigrationRegion finds the seed region at index 9; its port maps the data section', async () => {
    const found = await findMigrationRegion(client);
    assert.equal(found?.index, MIG);
    assert.equal(found?.flavor, 'seed');
    assert.equal(found?.info.fd, undefined, 'discovery keeps no fd');
    const port = await openRegionPort(client, MIG);
    try {
      assert.equal(port.areas.length, 1);
      assert.equal(port.areas[0]!.offset % 4096, 0);
      assert.equal(port.mapped(0, 64), undefined, 'the header stays trapped');
      const state = new SeedRegionClient(port);
      assert.equal(await state.deviceState(), DeviceState.RUNNING);
    } finally {
      port.close();
    }
  });

  test('a second client is told the device is taken (EBUSY)', async () => {
    await assert.rejects(VfioUserClient.connect(srv.path, { timeoutMs: 5000 }), (err: unknown) => {
      assert.ok(err instanceof VfioError && err.errno === Errno.EBUSY);
      assert.match(err.message, /already has a client/);
      return true;
    });
  });
});

for (const kind of ['mmapped', 'trapped'] as const) {
  describe(`client ↔ serve: seed save in one server process, resume in another (${kind} data section)`, () => {
    let src: ServeProcess;
    let dst: ServeProcess;
    before(async () => {
      [src, dst] = await Promise.all([
        startServe(['--device', 'register-file', '--data-section', kind, '--quiet']),
        startServe(['--device', 'register-file', '--data-section', kind, '--quiet']),
      ]);
    });
    after(async () => {
      await Promise.all([src?.stop(), dst?.stop()]);
    });

    test('the destination device ends up with the source’s registers', async () => {
      const a = await VfioUserClient.connect(src.path);
      const b = await VfioUserClient.connect(dst.path);
      const ports: VfioRegionPort[] = [];
      try {
        const scratch = Uint8Array.from({ length: RegisterFileRegs.FIFO - RegisterFileRegs.SCRATCH }, (_, i) => i * 13);
        await a.regionWrite(0, RegisterFileRegs.SCRATCH, scratch);
        for (const ch of new TextEncoder().encode('hello, destination')) {
          await a.regionWrite(0, RegisterFileRegs.TX_DATA, u32(ch));
        }
        await a.regionWrite(0, RegisterFileRegs.LCR, u32(0x1b));
        const srcPort = await openRegionPort(a, MIG);
        const dstPort = await openRegionPort(b, MIG);
        ports.push(srcPort, dstPort);
        assert.equal(srcPort.areas.length, kind === 'mmapped' ? 1 : 0);
        const { port, stats } = counting(srcPort);
        const chunks: Uint8Array[] = [];
        const save = await saveDeviceLive(new SeedRegionClient(port), {
          switchoverBytes: 0,
          maxIterations: 2,
          onChunk: (c) => {
            chunks.push(c.slice());
          },
        });
        assert.ok(save.stopCopyBytes > 4096, `the device state moved (${save.stopCopyBytes} bytes)`);
        if (kind === 'mmapped')
          assert.equal(stats.mappedBytes, save.precopyBytes + save.stopCopyBytes, 'data came through the mapping');
        else assert.equal(stats.mappedBytes, 0);
        const srcState = await new SeedRegionClient(srcPort).deviceState();
        assert.equal(srcState, DeviceState.STOPPED);
        const { port: dPort, stats: dStats } = counting(dstPort);
        const dstClient = new SeedRegionClient(dPort);
        await resumeDevice(dstClient, chunks, { start: false });
        assert.equal(await dstClient.deviceState(), DeviceState.STOPPED);
        if (kind === 'mmapped') assert.ok(dStats.mappedBytes > 0, 'resume data went through the mapping');
        const srcRegs = await a.regionRead(0, 0, RegisterFileRegs.SIZE);
        const dstRegs = await b.regionRead(0, 0, RegisterFileRegs.SIZE);
        assert.deepEqual(dstRegs, srcRegs, 'every register, ticks included (neither device ran since the stop)');
        await dstClient.setDeviceState(~DeviceState.MASK, DeviceState.RUNNING);
        assert.equal(
          new TextDecoder().decode(await b.regionRead(0, RegisterFileRegs.FIFO, 'hello, destination'.length)),
          'hello, destination',
        );
      } finally {
        for (const p of ports) p.close();
        a.close();
        b.close();
      }
    });
  });
}

describe('client ↔ serve: large-memory device', () => {
  let src: ServeProcess;
  let dst: ServeProcess;
  before(async () => {
    [src, dst] = await Promise.all([
      // Random memory: pre-copy moves every block whole, whatever work the device did before the save.
      startServe([
        '--device',
        'large-memory',
        '--device-mem',
        '1M',
        '--device-fill',
        'random',
        '--work-rate',
        '5000',
        '--quiet',
      ]),
      startServe([
        '--device',
        'large-memory',
        '--device-mem',
        '1M',
        '--device-fill',
        'random',
        '--work-rate',
        '5000',
        '--quiet',
      ]),
    ]);
  });
  after(async () => {
    await Promise.all([src?.stop(), dst?.stop()]);
  });

  test('device DMA into registered memory arrives as DMA_WRITE commands the client serves', async () => {
    const c = await VfioUserClient.connect(src.path);
    try {
      const guest = new Uint8Array(64 * 1024);
      c.registerDmaMemory(0x100000n, guest);
      await c.dmaMap({ iova: 0x100000n, size: 65536n, read: true, write: true });
      await c.regionWrite(0, LargeMemoryRegs.DMA_BASE, u64(0x100000n));
      await c.regionWrite(0, LargeMemoryRegs.DMA_SIZE, u64(65536n));
      await c.regionWrite(0, LargeMemoryRegs.CONTROL, u32(CONTROL_WORK | CONTROL_DMA));
      await until(() => c.dmaStats.writes >= 20, 'DMA_WRITE commands');
      await c.regionWrite(0, LargeMemoryRegs.CONTROL, u32(CONTROL_WORK)); // DMA off
      const records = le(await c.regionRead(0, LargeMemoryRegs.DMA_COUNT, 8));
      // The server finishes its message DMA before it answers DMA_UNMAP: every record has arrived by then.
      await c.dmaUnmap({ iova: 0x100000n, size: 65536n });
      assert.equal(BigInt(c.dmaStats.writes), records, 'one DMA_WRITE per record');
      assert.equal(c.dmaStats.bytesWritten, c.dmaStats.writes * 64);
      assert.equal(c.dmaStats.refused, 0);
      let slots = 0;
      for (let at = 0; at < guest.byteLength; at += 64) if (le(guest.subarray(at, at + 8)) !== 0n) slots++;
      assert.equal(slots, Math.min(Number(records), 1024), 'each record landed in its ring slot');
    } finally {
      c.close();
    }
  });

  test('device DMA into a memfd-backed range lands in our mapping of it', async () => {
    const c = await VfioUserClient.connect(src.path);
    const memfd = native().memfdCreate('client-server-guest', 65536);
    const guest = new Uint8Array(native().mmap(memfd, 0, 65536, true));
    try {
      await c.dmaMap({ iova: 0x200000n, size: 65536n, fd: memfd });
      const before = c.dmaStats.writes;
      await c.regionWrite(0, LargeMemoryRegs.DMA_BASE, u64(0x200000n));
      await c.regionWrite(0, LargeMemoryRegs.DMA_SIZE, u64(65536n));
      await c.regionWrite(0, LargeMemoryRegs.CONTROL, u32(CONTROL_WORK | CONTROL_DMA));
      await until(() => guest.some((x) => x !== 0), 'DMA into the memfd');
      await c.regionWrite(0, LargeMemoryRegs.CONTROL, u32(CONTROL_WORK));
      assert.equal(c.dmaStats.writes, before, 'no message DMA for an fd-backed range');
      await c.dmaUnmap({ all: true });
    } finally {
      c.close();
      native().munmap(guest.buffer as ArrayBuffer);
      native().close(memfd);
    }
  });

  test('live save with pre-copy over the mapped data section; the resumed device has the same digest', async () => {
    const a = await VfioUserClient.connect(src.path);
    const b = await VfioUserClient.connect(dst.path);
    const ports: VfioRegionPort[] = [];
    try {
      const srcPort = await openRegionPort(a, MIG);
      const dstPort = await openRegionPort(b, MIG);
      ports.push(srcPort, dstPort);
      const chunks: Uint8Array[] = [];
      const save = await saveDeviceLive(new SeedRegionClient(srcPort), {
        switchoverBytes: 0,
        maxIterations: 3,
        onChunk: (c) => {
          chunks.push(c.slice());
        },
        between: () => new Promise((r) => setTimeout(r, 20)),
      });
      assert.ok(save.precopyBytes >= 1 << 20, `pre-copy moved the device memory (${save.precopyBytes} bytes)`);
      const digest = await a.regionRead(0, LargeMemoryRegs.DIGEST, 32);
      const dstClient = new SeedRegionClient(dstPort);
      await resumeDevice(dstClient, chunks, { start: false });
      assert.deepEqual(await b.regionRead(0, LargeMemoryRegs.DIGEST, 32), digest);
      await dstClient.setDeviceState(~DeviceState.MASK, DeviceState.RUNNING);
      await new SeedRegionClient(srcPort).setDeviceState(~DeviceState.MASK, DeviceState.RUNNING);
    } finally {
      for (const p of ports) p.close();
      a.close();
      b.close();
    }
  });
});

describe('client ↔ serve: the server goes away', () => {
  test('a killed server: pending and later requests fail with ECONNRESET / ENOTCONN, never hang', async () => {
    const srv = await startServe(['--device', 'register-file', '--quiet']);
    try {
      const c = await VfioUserClient.connect(srv.path, { timeoutMs: 5000 });
      const closed = new Promise<VfioError | undefined>((r) => c.once('close', r));
      srv.proc.kill('SIGKILL');
      const reads = Array.from({ length: 50 }, () =>
        c.regionRead(0, 0, 4).then(
          () => null,
          (e: unknown) => e,
        ),
      );
      const results = await Promise.all(reads);
      assert.equal((await closed)?.errno, Errno.ECONNRESET);
      for (const r of results) {
        assert.ok(
          r === null || (r instanceof VfioError && (r.errno === Errno.ECONNRESET || r.errno === Errno.ENOTCONN)),
        );
      }
      await assert.rejects(c.deviceInfo(), errno(Errno.ENOTCONN));
    } finally {
      await srv.stop();
    }
  });
});

describe('vfio-migrate probe', () => {
  let srv: ServeProcess;
  before(async () => {
    srv = await startServe(['--device', 'register-file', '--quiet']);
  });
  after(async () => {
    await srv?.stop();
  });

  test('prints protocol, device, regions with caps, IRQs and the migration flavor', async () => {
    const r = await runCli(['probe', '--socket', srv.path]);
    assert.equal(r.code, 0, r.err);
    const out = r.out;
    for (const line of [
      `vfio-user device at ${srv.path}`,
      '\tProtocol: vfio-user 0.2',
      '\tServer capabilities: max_msg_fds=8 max_data_xfer_size=1048576 migration.pgsize=4096 twin_socket- write_multiple- x_split_messages+',
      '\tDevice: flags=0x3 <RESET,PCI> regions=10 irqs=5',
      '\tRegion 0: BAR0 size=4.0 KiB (0x1000) [R/W]',
      '\tRegion 1: BAR1 (not present)',
      '\tRegion 7: CONFIG size=256 B (0x100) [R/W]',
      '\t\tCapabilities: [0] type 2 subtype 1: migration region, seed flavor (2019 draft)',
      '\tIRQ 2: MSI-X count=4 [EVENTFD]',
      '\tMigration: seed flavor (region 9, type 2 subtype 1)',
    ]) {
      assert.ok(out.split('\n').includes(line), `missing line ${JSON.stringify(line)} in:\n${out}`);
    }
    assert.match(out, /\tRegion 9: device-specific size=[^\n]+ \[R\/W\/MMAP\/CAPS\] mmap-offset=0x0\n/);
    assert.match(out, /\t\t\tArea 0: offset=0x1000 size=/);
  });

  test('--json prints the same as one JSON object', async () => {
    const r = await runCli(['probe', '--socket', srv.path, '--json']);
    assert.equal(r.code, 0, r.err);
    const p = JSON.parse(r.out);
    assert.deepEqual(p.version, { major: 0, minor: 2 });
    assert.equal(p.capabilities.server.max_data_xfer_size, 1 << 20);
    assert.deepEqual(p.device, { flags: 3, flagNames: ['RESET', 'PCI'], numRegions: 10, numIrqs: 5 });
    assert.equal(p.regions.length, 10);
    assert.deepEqual([p.regions[0].name, p.regions[0].size, p.regions[0].flagNames], ['BAR0', 4096, ['R', 'W']]);
    assert.equal(p.regions[9].caps[0].kind, 'type');
    assert.deepEqual(p.regions[9].caps[1].areas[0].offset, 4096);
    assert.deepEqual(p.irqs[2], { index: 2, name: 'MSI-X', count: 4, flags: 1, flagNames: ['EVENTFD'] });
    assert.deepEqual(p.migration, [{ flavor: 'seed', region: 9, type: 2, subtype: 1 }]);
  });

  test('errors are one line and exit code 1: busy device, no socket, missing option', async () => {
    const holder = await VfioUserClient.connect(srv.path);
    try {
      const busy = await runCli(['probe', '--socket', srv.path]);
      assert.equal(busy.code, 1);
      assert.match(busy.err, /^vfio-migrate probe: [^\n]*already has a client[^\n]*\n$/);
    } finally {
      holder.close();
    }
    const none = await runCli(['probe', '--socket', `${srv.path}.absent`]);
    assert.equal(none.code, 1);
    assert.match(none.err, /^vfio-migrate probe: no vfio-user socket at \S+ \(ENOENT\)\n$/);
  });

  test('something that is not a vfio-user server, or one that never answers: exit 1 with the reason', async () => {
    const garbage = new ScriptedServer({
      raw: (s) => {
        s.on('data', () => {});
        s.write(new TextEncoder().encode('SSH-2.0-OpenSSH_9.6\r\n'));
      },
    });
    const silent = new ScriptedServer({ handlers: { 1: () => {} } });
    try {
      const g = await runCli(['probe', '--socket', garbage.path]);
      assert.equal(g.code, 1);
      assert.match(g.err, /^vfio-migrate probe: [^\n]*does not speak vfio-user[^\n]*\n$/);
      const t0 = performance.now();
      const s = await runCli(['probe', '--socket', silent.path, '--timeout', '300']);
      assert.equal(s.code, 1);
      assert.match(s.err, /^vfio-migrate probe: no VERSION reply from \S+ within 300 ms[^\n]*\n$/);
      assert.ok(performance.now() - t0 < 15_000);
    } finally {
      garbage.close();
      silent.close();
    }
  });
});
