// A trapped REGION_READ of device data is sent from the data section by reference (Session.regionRead,
// Connection.sendReplyRef): no copy into a reply buffer. That is only sound if nothing changes those bytes
// before the last of them has gone out, and the next chunk is produced into the same data area when the
// VMM's next access moves on. So the server handles no further request until a lent reply is sent. Here a
// client stops reading while a whole chunk's reply is in flight and asks for the next chunk at once: the
// device must not produce it (the reply would carry the new chunk's bytes) before the client has taken the
// old one, and every byte of the old chunk must arrive as the device saved it. The server keeps the
// kernel's default send buffer here, so one reply fills it. Nothing waits on time:
// the test waits for the server to hold both requests, or for the device to have produced again.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { readField, type StructSpec, writeField } from '../../src/abi/fields.ts';
import { DeviceState, SEED_MIGRATION_INFO, V1_MIGRATION_INFO } from '../../src/abi/migration.ts';
import { Command } from '../../src/abi/vfio-user/commands.ts';
import {
  decodeRegionReadReply,
  encodeRegionReadRequest,
  encodeRegionWriteRequest,
} from '../../src/abi/vfio-user/region-access.ts';
import { LargeMemoryDevice } from '../../src/device/samples/large-memory.ts';
import { decodeRecordHeader, RECORD_HEADER_SIZE, RecordKind } from '../../src/device/state-stream.ts';
import type { Connection } from '../../src/vfio-user/connection.ts';
import { serveDevice } from '../../src/vfio-user/serve-device.ts';
import { closed, rawConnect } from '../support/raw-client.ts';
import { until } from '../support/until.ts';

const MIG = 9;
const CHUNK = 1 << 20;
const dir = mkdtempSync(join(tmpdir(), 'vfio-lent-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A large-memory device that keeps where each produce() call wrote (byte ranges of the data area's buffer). */
class CountingDevice extends LargeMemoryDevice {
  calls: { start: number; end: number }[] = [];
  override produce(out: Uint8Array): number {
    this.calls.push({ start: out.byteOffset, end: out.byteOffset + out.byteLength });
    return super.produce(out);
  }

  /** produce() calls after the first that wrote into the first one's bytes (the chunk lent out). */
  intoFirst(): number {
    const lent = this.calls[0]!;
    return this.calls.slice(1).filter((c) => c.start < lent.end && lent.start < c.end).length;
  }
}

function readRequest(c: Connection, offset: number, count: number) {
  return c
    .request(Command.REGION_READ, encodeRegionReadRequest({ offset: BigInt(offset), region: MIG, count }))
    .then((m) => decodeRegionReadReply(m.payload).data);
}

function fieldReader(c: Connection, spec: StructSpec<string>) {
  return (name: string): Promise<bigint> => {
    const f = spec.fields.find((x) => x.name === name)!;
    return readRequest(c, f.offset, f.width).then((b) => readField(b, 0, f.width as 4 | 8));
  };
}

/** Every byte of `chunk` (the start of the device's state stream) checked against the device's memory. */
function checkFirstChunk(chunk: Uint8Array, memory: Uint8Array): number {
  let at = 0;
  let blocks = 0;
  while (at + RECORD_HEADER_SIZE <= chunk.byteLength) {
    const h = decodeRecordHeader(chunk.subarray(at, at + RECORD_HEADER_SIZE));
    assert.ok(typeof h !== 'string', `record header at ${at}: ${h}`);
    at += RECORD_HEADER_SIZE;
    const payload = chunk.subarray(at, Math.min(at + h.length, chunk.byteLength));
    if (h.kind === RecordKind.MEM) {
      const from = Number(h.arg0);
      assert.deepEqual(
        payload,
        memory.subarray(from, from + payload.byteLength),
        `block at ${from}, chunk offset ${at}`,
      );
      blocks++;
    } else assert.equal(h.kind, RecordKind.BEGIN, `record at ${at - RECORD_HEADER_SIZE}`);
    at += h.length;
  }
  return blocks;
}

describe('lent REGION_READ replies', () => {
  for (const flavor of ['seed', 'v1'] as const) {
    test(`${flavor}: the next chunk is not produced until the lent reply of this one has gone out whole`, async () => {
      const device = new CountingDevice({ memSize: 8 << 20, fill: 'random', workRate: 0 });
      const served = serveDevice(device, {
        socket: join(dir, `${flavor}.sock`),
        flavor,
        dataSection: 'trapped',
        dataSize: CHUNK,
        // The kernel's default send buffer (208 KiB), far below a 1 MiB reply: the reply stays queued
        // in the server while the client does not read. A connection's own (SEND_BUFFER) takes whole
        // replies; it fills the same way, only after several of them.
        sendBuffer: 0,
      });
      const c = await rawConnect(served.path);
      try {
        const spec = (flavor === 'seed' ? SEED_MIGRATION_INFO : V1_MIGRATION_INFO) as StructSpec<string>;
        const field = fieldReader(c, spec);
        const state = spec.fields.find((f) => f.name === 'device_state')!;
        const saving = new Uint8Array(4);
        writeField(saving, 0, 4, BigInt(DeviceState.SAVING));
        await c.request(
          Command.REGION_WRITE,
          encodeRegionWriteRequest({ offset: BigInt(state.offset), region: MIG, data: saving }),
        );
        if (flavor === 'v1') assert.ok((await field('pending_bytes')) > 0n);
        const offset = Number(await field('data_offset'));
        const size = Number(await field('data_size'));
        assert.ok(size > 0 && size <= CHUNK, 'a chunk: far more than the socket buffers hold');

        // The client stops reading, asks for the chunk, and at once moves on to the next one (seed: the
        // data_size read that sets the device producing into the other half of its double-buffered area,
        // which is then the lent one: with the wait removed, that production overwrites the reply).
        c.socket.pause();
        const data = readRequest(c, offset, size);
        const moveOn =
          flavor === 'seed'
            ? [field('data_offset'), field('data_size')]
            : [field('pending_bytes'), field('data_offset')];
        const session = served.server.session!;
        await until(
          () => session.pending.count === 1 + moveOn.length || device.intoFirst() > 0,
          'the server to hold every request, or to produce into the lent chunk',
        );
        assert.equal(device.intoFirst(), 0, 'the device produced into the chunk while its lent reply was queued');
        assert.equal(session.pending.count, 1 + moveOn.length, 'the data read waits until its reply has gone out');

        c.socket.resume();
        const chunk = await data;
        await Promise.all(moveOn);
        assert.ok(device.calls.length >= 2, 'moving on produced the next chunk, after the reply went out');
        assert.equal(chunk.byteLength, size);
        // Memory blocks of 64 KiB each (a double-buffered chunk is half the area).
        assert.ok(checkFirstChunk(chunk, device.memory) >= size / 65536 - 1, 'the chunk is mostly memory blocks');
      } finally {
        c.close();
        await closed(c);
        served.close();
      }
    });
  }
});
