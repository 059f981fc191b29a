// The device server's DMA table: device DMA reaches only what the client mapped, with the access it
// granted. Everything else is refused and counted (an IOMMU fault), never a crash: not an unmapped
// address, not a range straddling a mapping's end, not a write to a read-only range, and not a mapping
// the fd cannot back (touching past a memfd's end would be SIGBUS).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Errno } from '../../src/abi/errno.ts';
import { VfioError } from '../../src/errors.ts';
import { native } from '../../src/native/addon.ts';
import { DmaTable, MAX_MESSAGE_DMA_IN_FLIGHT } from '../../src/vfio-user/dma-table.ts';

const einval = (e: unknown) => e instanceof VfioError && e.errno === Errno.EINVAL;

function memfd(size: number): { fd: number; view: Uint8Array } {
  const fd = native().memfdCreate('dma-table-test', size);
  // Our own second mapping of the fd: what the device's DMA really changed.
  return { fd, view: new Uint8Array(native().mmap(fd, 0, size, false)) };
}

describe('DMA table', () => {
  test('DMA outside the mapped ranges, across their ends, or against their access is refused and counted', () => {
    const t = new DmaTable(8, null);
    const rw = memfd(0x4000);
    const ro = memfd(0x1000);
    t.map({ iova: 0x10000n, size: 0x4000n, fdOffset: 0n, readable: true, writable: true, fd: native().dup(rw.fd) });
    t.map({ iova: 0x20000n, size: 0x1000n, fdOffset: 0n, readable: true, writable: false, fd: native().dup(ro.fd) });
    const data = new Uint8Array(16).fill(0xab);
    t.port.write(0x10000n, data);
    assert.deepEqual(rw.view.subarray(0, 16), data, 'inside: a plain memory write');
    const refused: [bigint, number][] = [
      [0x0n, 16], // nowhere
      [0xfff8n, 16], // starts before the range
      [0x13ff8n, 16], // runs past its end
      [0x14000n, 1], // just past it
      [0x20000n, 16], // read-only range
      [0xffff_ffff_ffff_fff8n, 16], // at the top of the address space
    ];
    const before = rw.view.slice();
    for (const [iova, n] of refused) t.port.write(iova, new Uint8Array(n).fill(0xcd));
    assert.deepEqual(rw.view, before, 'a refused write changes nothing');
    assert.ok(ro.view.every((b) => b === 0));
    assert.equal(t.stats.faults, refused.length);
    assert.match(t.lastFault ?? '', /read-only|not mapped/);
    // Reads outside what was mapped come back as zeros and count as faults too.
    assert.deepEqual(t.port.read(0x30000n, 8), new Uint8Array(8));
    assert.deepEqual(t.port.read(0x13ffcn, 8), new Uint8Array(8));
    assert.equal(t.stats.faults, refused.length + 2);
    t.unmap(0n, 0n, true);
    for (const m of [rw, ro]) {
      native().munmap(m.view.buffer as ArrayBuffer);
      native().close(m.fd);
    }
  });

  test('a mapping longer than its fd (or at an offset past its end) is refused, so no access can SIGBUS', () => {
    const t = new DmaTable(8, null);
    const small = memfd(0x1000);
    const map = (size: bigint, fdOffset: bigint) => {
      const fd = native().dup(small.fd);
      try {
        t.map({ iova: 0x100000n, size, fdOffset, readable: true, writable: true, fd });
      } catch (err) {
        native().close(fd); // refused: still the caller's (the session closes it)
        throw err;
      }
    };
    assert.throws(() => map(0x100000n, 0n), einval);
    assert.throws(() => map(0x1000n, 0x1000n), einval);
    assert.throws(() => map(0x800n, 0x800n), einval, 'unaligned offset');
    assert.equal(t.list.length, 0);
    map(0x1000n, 0n);
    t.port.write(0x100ff0n, new Uint8Array(16).fill(1));
    assert.equal(small.view[0xfff], 1);
    t.unmap(0x100000n, 0x1000n);
    native().munmap(small.view.buffer as ArrayBuffer);
    native().close(small.fd);
  });
});

test('message DMA: congested at the in-flight bound, clear again once the client acknowledges', async () => {
  const acks: (() => void)[] = [];
  const sent: bigint[] = [];
  const table = new DmaTable(4, (iova) => {
    sent.push(iova);
    return new Promise<void>((resolve) => acks.push(resolve));
  });
  table.map({ iova: 0n, size: 1n << 20n, fdOffset: 0n, readable: true, writable: true, fd: -1 });
  const port = table.port;
  for (let i = 0; i < MAX_MESSAGE_DMA_IN_FLIGHT - 1; i++) port.write(BigInt(i * 4096), new Uint8Array(8));
  assert.equal(port.congested?.(), false, 'below the bound');
  port.write(0x10000n, new Uint8Array(8));
  assert.equal(port.congested?.(), true, 'at the bound');
  assert.equal(
    sent.length,
    MAX_MESSAGE_DMA_IN_FLIGHT,
    'every write was sent (congestion holds work back, it drops nothing)',
  );
  acks.shift()!();
  await new Promise((r) => setImmediate(r));
  assert.equal(port.congested?.(), false, 'one acknowledgement frees a slot');
  for (const ack of acks) ack();
  await table.flush();
  assert.equal(table.stats.messageWrites, MAX_MESSAGE_DMA_IN_FLIGHT);
  table.unmap(0n, 0n, true);
});
