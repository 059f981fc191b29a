// The seed driver's register reads overlap (SeedRegionClient): data_size is sent while data_offset is
// still unanswered (vfio-user commands may be pipelined; the server takes them in order), and the next
// pending_bytes while the chunk is being consumed. Checked through a port that records which reads are
// in flight, over a real `serve` process whose device state is then resumed into a second one. A read
// sent ahead that fails after the caller has stopped must never become an unhandled rejection.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { fieldNamed } from '../../src/abi/fields.ts';
import { DeviceState, SEED_MIGRATION_INFO, type SeedField } from '../../src/abi/migration.ts';
import { LargeMemoryRegs } from '../../src/device/samples/large-memory.ts';
import { VfioUserClient } from '../../src/vfio-user/client.ts';
import { findMigrationRegion, openRegionPort, type RegionPort } from '../../src/vfio-user/region-port.ts';
import { SeedRegionClient } from '../../src/vmm/vfio/seed-region-client.ts';
import { type ServerProcess, startServer } from '../support/server-process.ts';

const FIELD_AT = new Map<number, SeedField>(
  (['pending_bytes', 'data_offset', 'data_size'] as const).map((n) => [fieldNamed(SEED_MIGRATION_INFO, n).offset, n]),
);

/** A port that passes every access on and keeps a log of the register reads: when each was sent and answered. */
function recordingPort(inner: RegionPort, fail: (field: SeedField, nth: number) => Error | null = () => null) {
  const inFlight = new Set<SeedField>();
  const sent = new Map<SeedField, number>();
  /** Each read of a field, with the fields still unanswered when it was sent. */
  const log: { field: SeedField; alongside: SeedField[] }[] = [];
  const port: RegionPort = {
    size: inner.size,
    mapped: (o, n) => inner.mapped(o, n),
    write: (o, d) => inner.write(o, d),
    ...(inner.readInto ? { readInto: inner.readInto.bind(inner) } : {}),
    read: async (offset, length) => {
      const field = FIELD_AT.get(offset);
      if (!field) return inner.read(offset, length);
      const nth = (sent.get(field) ?? 0) + 1;
      sent.set(field, nth);
      log.push({ field, alongside: [...inFlight] });
      inFlight.add(field);
      try {
        const err = fail(field, nth);
        if (err) throw err;
        return await inner.read(offset, length);
      } finally {
        inFlight.delete(field);
      }
    },
  };
  return { port, log, sent: (f: SeedField) => sent.get(f) ?? 0, inFlight: () => [...inFlight] };
}

/** Unhandled rejections seen while `fn` runs and two turns of the event loop after it. */
async function unhandledDuring(fn: () => Promise<void>): Promise<unknown[]> {
  const seen: unknown[] = [];
  const listener = (reason: unknown) => seen.push(reason);
  process.on('unhandledRejection', listener);
  try {
    await fn();
    for (let i = 0; i < 2; i++) await new Promise((r) => setImmediate(r));
  } finally {
    process.off('unhandledRejection', listener);
  }
  return seen;
}

interface Opened {
  client: VfioUserClient;
  port: RegionPort;
  close(): void;
}

async function open(server: ServerProcess): Promise<Opened> {
  const client = await VfioUserClient.connect(server.path);
  const found = await findMigrationRegion(client);
  assert.ok(found, 'the device has a migration region');
  const port = await openRegionPort(client, found.index);
  return {
    client,
    port,
    close: () => {
      port.close();
      client.close();
    },
  };
}

for (const kind of ['mmapped', 'trapped'] as const) {
  describe(`seed driver register reads overlap, ${kind} data section`, () => {
    // 64 MiB of state through the default 32 MiB area (double-buffered: 16 MiB chunks): several chunks.
    const args = ['--device', 'large-memory', '--device-mem', '64M', '--work-rate', '0', '--data-section', kind];
    let src: ServerProcess;
    let dst: ServerProcess;
    // One client per device (a vfio-user device takes one), shared by the tests.
    let a: Opened;
    let b: Opened;
    before(async () => {
      [src, dst] = await Promise.all([
        startServer([...args, '--device-fill', 'random', '--quiet']),
        startServer([...args, '--quiet']),
      ]);
      [a, b] = await Promise.all([open(src), open(dst)]);
    });
    after(async () => {
      a?.close();
      b?.close();
      await Promise.all([src?.stop(), dst?.stop()]);
    });

    const digest = async (client: VfioUserClient) =>
      Buffer.from(await client.regionRead(0, LargeMemoryRegs.DIGEST, 32)).toString('hex');

    test('stop-and-copy: data_size rides with data_offset, pending_bytes with the chunk, a trapped chunk with its successor; the state resumes intact', async () => {
      const rec = recordingPort(a.port);
      const seed = new SeedRegionClient(rec.port);
      await seed.writeField('device_state', BigInt(DeviceState.SAVING));
      const saved: Uint8Array[] = [];
      const asked: number[] = [];
      const offsets: number[] = [];
      const r = await seed.drain((chunk) => {
        asked.push(rec.sent('pending_bytes'));
        offsets.push(rec.sent('data_offset'));
        saved.push(chunk.slice());
      });
      assert.ok(r.chunks >= 4, `several chunks (${r.chunks})`);
      const sizes = rec.log.filter((e) => e.field === 'data_size');
      assert.equal(sizes.length, rec.sent('data_offset'), 'one data_size read per data_offset read');
      for (const e of sizes)
        assert.ok(e.alongside.includes('data_offset'), 'data_size sent before data_offset was answered');
      // The k-th chunk arrives after k pending_bytes reads; the (k+1)-th was sent before the callback ran.
      for (const [k, n] of asked.entries())
        assert.ok(n >= k + 2, `chunk ${k}: the next pending_bytes read was already sent`);
      // A trapped chunk is in our buffer: the next one is asked for before the callback. An mmapped one
      // is the device's memory until the next data_offset read: that waits for the callback.
      for (const [k, n] of offsets.entries())
        assert.equal(n, kind === 'trapped' ? k + 2 : k + 1, `chunk ${k}: data_offset reads sent before its callback`);

      const target = new SeedRegionClient(b.port);
      await target.writeField('device_state', BigInt(DeviceState.RESUMING));
      for (const c of saved) await target.loadBuffer(c);
      await target.writeField('device_state', BigInt(DeviceState.RUNNING));
      await seed.writeField('device_state', BigInt(DeviceState.RUNNING));
      assert.equal(await digest(b.client), await digest(a.client), 'the resumed device equals the saved one');
    });

    test('a callback that throws ends the save with its error; the read sent ahead, failing too, is not unhandled', async () => {
      const rec = recordingPort(a.port, (field, nth) =>
        field === 'pending_bytes' && nth === 2 ? new Error('link cut') : null,
      );
      const seed = new SeedRegionClient(rec.port);
      await seed.writeField('device_state', BigInt(DeviceState.SAVING));
      const unhandled = await unhandledDuring(async () => {
        await assert.rejects(
          seed.drain(() => {
            throw new Error('sink failed');
          }),
          /sink failed/,
        );
        // Trapped, the next chunk was asked for before the callback threw: the failed drain returned
        // only once those reads were answered.
        assert.deepEqual(rec.inFlight(), [], 'no register read of the drain still in flight');
      });
      assert.equal(rec.sent('pending_bytes'), 2, 'the second pending_bytes read was sent ahead (and failed)');
      assert.deepEqual(unhandled, []);
      await seed.writeField('device_state', BigInt(DeviceState.RUNNING));
    });

    test('a failed data_offset read fails the step with its error; data_size, sent with it and failing, is not unhandled', async () => {
      const rec = recordingPort(a.port, (field) =>
        field === 'data_offset'
          ? new Error('offset refused')
          : field === 'data_size'
            ? new Error('size refused')
            : null,
      );
      const seed = new SeedRegionClient(rec.port);
      await seed.writeField('device_state', BigInt(DeviceState.SAVING));
      const unhandled = await unhandledDuring(async () => {
        await assert.rejects(
          seed.iterate(1 << 20, () => {}),
          /offset refused/,
        );
      });
      assert.equal(rec.sent('data_size'), 1, 'data_size was sent with data_offset');
      assert.deepEqual(unhandled, []);
      await seed.writeField('device_state', BigInt(DeviceState.RUNNING));
    });
  });
}
