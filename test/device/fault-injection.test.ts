// The device-side fault injector behind `serve --x-fault`: its spec grammar, and that each fault reaches
// the VMM as a real device's would, through the migration region: the refused write keeps the old
// device_state and carries the errno; data faults fire only in their state and after their byte count;
// counted faults stop firing; kill faults call the kill hook (SIGKILL in the server).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Errno } from '../../src/abi/errno.ts';
import { DeviceState } from '../../src/abi/migration.ts';
import { type FaultSpec, parseFaultSpec, withFaults } from '../../src/device/fault-injection.ts';
import { LargeMemoryDevice } from '../../src/device/samples/large-memory.ts';
import { SeedMigrationRegion } from '../../src/device/seed-region.ts';
import { VfioError } from '../../src/errors.ts';
import { SeedRegionClient } from '../../src/vmm/vfio/seed-region-client.ts';
import { regionPort } from '../support/region-port.ts';

const { RUNNING, SAVING } = DeviceState;

function setup(faults: string[], kills: FaultSpec[] = []) {
  const device = new LargeMemoryDevice({ memSize: 1 << 20, workRate: 0, fill: 'random' });
  const faulty = withFaults(device, faults.map(parseFaultSpec), { kill: (f) => kills.push(f) });
  const region = new SeedMigrationRegion({ backend: faulty.migration, kind: 'trapped', dataSize: 64 << 10 });
  return { device, region, client: new SeedRegionClient(regionPort(region)) };
}

async function rejects(p: Promise<unknown>, errno: number, text: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => e instanceof VfioError && e.errno === errno && text.test(e.message));
}

describe('fault injection (serve --x-fault)', () => {
  test('parses the spec and refuses a malformed one', () => {
    assert.deepEqual(parseFaultSpec('fail-transition@pre-copy'), {
      kind: 'fail-transition',
      state: 3,
      count: 1,
      after: 0,
      errno: Errno.EIO,
    });
    assert.deepEqual(parseFaultSpec('kill-data@2,count=0,after=4M'), {
      kind: 'kill-data',
      state: 2,
      count: 0,
      after: 4 << 20,
      errno: Errno.EIO,
    });
    assert.equal(parseFaultSpec('fail-data@resuming,errno=EINVAL').errno, Errno.EINVAL);
    for (const bad of [
      'fail@pre-copy',
      'fail-transition',
      'fail-transition@saving',
      'fail-transition@5',
      'fail-transition@running,after=1M',
      'kill-data@running,errno=EIO',
      'fail-data@running,count=x',
      'fail-data@running,errno=EWHAT',
    ]) {
      assert.throws(() => parseFaultSpec(bad), RangeError, bad);
    }
  });

  test('a refused transition keeps the old state, carries the errno, and fires `count` times', async () => {
    const { client } = setup(['fail-transition@pre-copy,count=2,errno=EBUSY']);
    for (let i = 0; i < 2; i++) {
      await rejects(client.setDeviceState(~0, RUNNING | SAVING), Errno.EBUSY, /running -> pre-copy/);
      assert.equal(await client.deviceState(), RUNNING);
    }
    assert.equal(await client.setDeviceState(~0, RUNNING | SAVING), RUNNING | SAVING);
    // Back to running works: the notifier's path is not faulted.
    assert.equal(await client.setDeviceState(~SAVING, RUNNING), RUNNING);
  });

  test('a transition fault with after=N lets N transitions into its state through first', async () => {
    const { client } = setup(['fail-transition@running,after=1']);
    await client.setDeviceState(~0, RUNNING | SAVING);
    assert.equal(await client.setDeviceState(~SAVING, RUNNING), RUNNING);
    await client.setDeviceState(~0, RUNNING | SAVING);
    await rejects(client.setDeviceState(~SAVING, RUNNING), Errno.EIO, /pre-copy -> running/);
    assert.equal(await client.deviceState(), RUNNING | SAVING);
    assert.equal(await client.setDeviceState(~SAVING, RUNNING), RUNNING);
  });

  test('a data fault fires in its state after `after` bytes, and the device state is untouched', async () => {
    const { client, device } = setup(['fail-data@pre-copy,after=128K']);
    const digest = device.stateDigest();
    await client.setDeviceState(~0, RUNNING | SAVING);
    let got = 0;
    await rejects(
      client.iterate(1 << 20, (c) => {
        got += c.byteLength;
      }),
      Errno.EIO,
      /injected fault: the device fails producing its state in pre-copy after \d+ bytes/,
    );
    assert.ok(got >= 128 << 10 && got < 1 << 20, `${got} bytes before the fault`);
    assert.equal(await client.setDeviceState(~SAVING, RUNNING), RUNNING);
    assert.equal(device.stateDigest(), digest);
    // Spent: a second save goes through to the end of pre-copy data.
    await client.setDeviceState(~0, RUNNING | SAVING);
    const r = await client.iterate(4 << 20, () => {});
    assert.ok(r.bytes >= 1 << 20);
  });

  test('a kill fault calls the kill hook at its point (the server then dies by SIGKILL)', async () => {
    const kills: FaultSpec[] = [];
    const { client } = setup(['kill-transition@stop-and-copy'], kills);
    await client.setDeviceState(~0, RUNNING | SAVING);
    assert.equal(kills.length, 0);
    // With a hook that returns, the write fails like a refused one; in the server the process is gone.
    await assert.rejects(client.setDeviceState(~RUNNING, SAVING));
    assert.deepEqual(
      kills.map((k) => k.kind),
      ['kill-transition'],
    );
  });
});
