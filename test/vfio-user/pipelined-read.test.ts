// Trapped device data read with several REGION_READs in flight (VfioUserClient.regionReadInto, which the
// seed driver's SeedRegionClient uses for a trapped data section), against a scripted device on a real
// socket that answers out of step: it holds every data read until the client has as many outstanding as
// it may have, then answers them last-asked first. The chunk must still come back complete and in order,
// each piece asked for once, and the client must have kept the pipeline full (never more, never fewer
// reads outstanding than allowed while pieces remain). Nothing here waits on time: the server answers
// when the requests are there.
import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import { describe, test } from 'node:test';
import { Command } from '../../src/abi/vfio-user/commands.ts';
import { decodeRegionReadRequest, encodeRegionReadReply } from '../../src/abi/vfio-user/region-access.ts';
import { VfioUserClient } from '../../src/vfio-user/client.ts';
import type { Connection } from '../../src/vfio-user/connection.ts';
import type { ReceivedMessage } from '../../src/vfio-user/framing.ts';
import { SeedRegionClient } from '../../src/vmm/vfio/seed-region-client.ts';
import { ScriptedServer } from './client-support.ts';

const REGION = 9;
const REGION_SIZE = 1 << 20;
/** Where the seed region's data section starts (after the 64-byte migration info). */
const DATA_OFFSET = 4096;

/** The region's bytes: distinct at every offset (a piece put in the wrong place shows). */
function regionBytes(): Uint8Array {
  const b = new Uint8Array(REGION_SIZE);
  const dv = new DataView(b.buffer);
  for (let i = 0; i < REGION_SIZE; i += 4) dv.setUint32(i, i * 2654435761, true);
  return b;
}

/**
 * A device whose data reads (at or past DATA_OFFSET) are answered in batches of `batch`, in reverse
 * order; reads of the migration info are answered at once. `chunkBytes` tells it how many data bytes the
 * client will still ask for, so the last batch may be short.
 */
function outOfStepDevice(mem: Uint8Array, fields: Map<number, bigint>, batch: number, chunkBytes: () => number) {
  const held: { m: ReceivedMessage; conn: Connection; offset: bigint; count: number }[] = [];
  const stats = { maxOutstanding: 0, batches: 0, pieces: [] as [number, number][] };
  let asked = 0;
  const handler = (m: ReceivedMessage, conn: Connection) => {
    const r = decodeRegionReadRequest(m.payload, { maxCount: 64 << 20 });
    const at = Number(r.offset);
    if (at < DATA_OFFSET) {
      const v = fields.get(at) ?? 0n;
      const data = new Uint8Array(r.count);
      new DataView(data.buffer).setBigUint64(0, v, true);
      conn.reply(m, encodeRegionReadReply({ offset: r.offset, region: r.region, data }));
      return;
    }
    held.push({ m, conn, offset: r.offset, count: r.count });
    stats.pieces.push([at, r.count]);
    asked += r.count;
    stats.maxOutstanding = Math.max(stats.maxOutstanding, held.length);
    if (held.length < batch && asked < chunkBytes()) return;
    stats.batches++;
    for (const h of held.splice(0).reverse()) {
      const o = Number(h.offset);
      h.conn.reply(
        h.m,
        encodeRegionReadReply({ offset: h.offset, region: REGION, data: mem.subarray(o, o + h.count) }),
      );
    }
    if (asked >= chunkBytes()) asked = 0;
  };
  return { handler, stats };
}

async function connect(t: TestContext, handler: (m: ReceivedMessage, conn: Connection) => void) {
  const srv = new ScriptedServer({ handlers: { [Command.REGION_READ]: handler } });
  const client = await VfioUserClient.connect(srv.path, { timeoutMs: 60_000 });
  t.after(() => {
    client.close();
    srv.close();
  });
  return client;
}

describe('pipelined trapped reads under a device that answers out of step', () => {
  test('regionReadInto: 4 reads in flight, answered in reverse, land complete and in order', async (t) => {
    const mem = regionBytes();
    const length = 10 * 4096 + 123;
    const dev = outOfStepDevice(mem, new Map(), 4, () => length);
    const client = await connect(t, dev.handler);
    const dest = new Uint8Array(length);
    await client.regionReadInto(REGION, DATA_OFFSET, dest, { pieceSize: 4096, inFlight: 4 });
    assert.deepEqual(dest, mem.subarray(DATA_OFFSET, DATA_OFFSET + length));
    assert.equal(dev.stats.maxOutstanding, 4, 'the client kept 4 reads outstanding');
    assert.equal(dev.stats.batches, 3, '11 pieces: batches of 4, 4 and 3');
    const pieces = dev.stats.pieces.map(([o, n]) => [o - DATA_OFFSET, n]).sort((a, b) => a[0]! - b[0]!);
    assert.equal(pieces.length, 11, 'each piece asked for once');
    let at = 0;
    for (const [o, n] of pieces) {
      assert.equal(o, at, 'the pieces tile the chunk with no gap or overlap');
      at += n!;
    }
    assert.equal(at, length);
  });

  test('the seed driver reads a trapped data chunk through the same pipeline, complete and in order', async (t) => {
    const mem = regionBytes();
    const size = 200_000;
    // pending_bytes (offset 8), data_offset (16), data_size (24) as a seed device reports them.
    const fields = new Map<number, bigint>([
      [8, BigInt(size)],
      [16, BigInt(DATA_OFFSET)],
      [24, BigInt(size)],
    ]);
    const dev = outOfStepDevice(mem, fields, 3, () => size);
    const client = await connect(t, dev.handler);
    const port = {
      size: REGION_SIZE,
      read: (o: number, n: number) => client.regionRead(REGION, o, n),
      readInto: (o: number, d: Uint8Array, opt?: { pieceSize?: number; inFlight?: number }) =>
        client.regionReadInto(REGION, o, d, opt),
      write: (o: number, d: Uint8Array) => client.regionWrite(REGION, o, d),
      mapped: () => undefined,
    };
    const seed = new SeedRegionClient(port, { readPiece: 16384, readsInFlight: 3 });
    const chunks: Uint8Array[] = [];
    const r = await seed.iterate(size, (c) => {
      chunks.push(c.slice());
    });
    assert.equal(r.chunks, 1);
    assert.deepEqual(chunks[0], mem.subarray(DATA_OFFSET, DATA_OFFSET + size));
    assert.equal(dev.stats.maxOutstanding, 3, 'three reads outstanding at once');
    assert.equal(dev.stats.pieces.length, Math.ceil(size / 16384), 'each piece asked for once');
  });
});
