// The DMA table's message path: writes to a range without an fd go out as DMA_WRITE messages, and the
// port reports congestion once too many are unacknowledged, so a busy device cannot flood the socket.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DmaTable, MAX_MESSAGE_DMA_IN_FLIGHT } from '../../src/vfio-user/dma-table.ts';

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
