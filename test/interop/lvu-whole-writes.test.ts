// libvfio-user's server reads a message's body with one recv and drops the connection on a short read
// (lib/tran_sock.c, its issue #306), while Linux queues a UNIX stream write in pieces of about 32 KiB and
// wakes the reader after the first: a large write message can be read short. Our client caps its writes at
// WHOLE_WRITE_MAX unless the server granted x_split_messages (ours does; libvfio-user, which ignores
// capabilities it does not know, never does), so it sends messages Linux queues whole. Here, against the
// sample server of each era with the client's defaults: 200 REGION_WRITEs of 256 KiB at BAR1,
// each split into capped messages whose first one the sample refuses (BAR1 is 12 KiB) only after
// reading it whole, and the connection still serves a BAR1 write and read afterwards. Uncapped, the same
// loop lost the connection ("short read") within a few writes in scratch runs on this machine.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { Errno } from '../../src/abi/errno.ts';
import { VfioError } from '../../src/errors.ts';
import { migDataWritesInFlight, VfioUserClient, WHOLE_WRITE_MAX } from '../../src/vfio-user/client.ts';
import { V2MigrationDriver } from '../../src/vmm/vfio/v2-driver.ts';
import { buildPeers, ERAS } from '../support/libvfio-user-peers.ts';
import { until } from '../support/until.ts';
import { BAR1_SIZE } from './support/lvu-vm.ts';
import { listening } from './support/unix-listening.mjs';

const BAR1 = 1;
const peers = buildPeers();
const dir = mkdtempSync(join(tmpdir(), 'lvu-whole-'));
after(() => rmSync(dir, { recursive: true, force: true }));

async function sampleServer(path: string, server: string): Promise<ChildProcess> {
  const p = spawn(server, ['-v', path], { stdio: ['ignore', 'ignore', 'ignore'] });
  await until(() => listening(path) || p.exitCode !== null, `the sample server to listen at ${path}`);
  if (p.exitCode !== null) throw new Error(`the sample server exited (${p.exitCode}) before it listened at ${path}`);
  return p;
}

describe("capped writes reach libvfio-user's sample server whole", { skip: peers.skip }, () => {
  for (const era of ERAS) {
    test(`${era}: by default, 200 large REGION_WRITEs in capped messages, each read whole and refused by BAR bounds`, async (t) => {
      const path = join(dir, `${era}.sock`);
      const proc = await sampleServer(path, peers.servers[era]!);
      const client = await VfioUserClient.connect(path, { timeoutMs: 30_000 });
      t.after(() => {
        client.close();
        proc.kill();
      });
      assert.equal(client.server.splitMessages, false, 'libvfio-user does not grant x_split_messages');
      assert.equal(client.writeCap, WHOLE_WRITE_MAX);
      const big = new Uint8Array(256 * 1024);
      for (let i = 0; i < 200; i++) {
        await assert.rejects(
          client.regionWrite(BAR1, 0, big),
          (e: unknown) => e instanceof VfioError && e.errno === Errno.EINVAL,
          `write ${i}: refused by the device, not a lost connection`,
        );
      }
      const pattern = randomBytes(BAR1_SIZE);
      await client.regionWrite(BAR1, 0, pattern);
      assert.deepEqual(Buffer.from(await client.regionRead(BAR1, 0, BAR1_SIZE)), pattern);
    });
  }
});

// MIG_DATA_WRITE pieces go back to back when they are small (VfioUserClient.migDataWrite), which
// libvfio-user's capped messages are: its v2 sample server, resumed from another one's saved state in
// pieces of 1 KiB (all of them in flight before the first answer), holds the saved BAR1 afterwards.
describe("pipelined MIG_DATA_WRITEs resume libvfio-user's v2 sample server", { skip: peers.skip }, () => {
  test('the state saved from one sample server, written into another in 1 KiB pieces back to back', async (t) => {
    const server = peers.servers.v2!;
    const [fromPath, toPath] = [join(dir, 'from.sock'), join(dir, 'to.sock')];
    const procs = await Promise.all([sampleServer(fromPath, server), sampleServer(toPath, server)]);
    const from = await VfioUserClient.connect(fromPath, { timeoutMs: 30_000 });
    const to = await VfioUserClient.connect(toPath, { timeoutMs: 30_000, maxWriteSize: 1024 });
    t.after(() => {
      from.close();
      to.close();
      for (const p of procs) p.kill();
    });
    const pattern = randomBytes(BAR1_SIZE);
    await from.regionWrite(BAR1, 0, pattern);
    const save = await V2MigrationDriver.open(from, 'from', 1n);
    await save.vmStateChange(false, 'finish-migrate');
    const chunks: Uint8Array[] = [];
    await save.saveComplete((c) => {
      chunks.push(c.slice());
    });
    const state = Buffer.concat(chunks);
    const pieces = Math.ceil(state.byteLength / 1024);
    assert.ok(pieces > 8, `${pieces} pieces of device state`);
    assert.ok(migDataWritesInFlight(1024) >= pieces, 'all of them in flight at once');
    const load = await V2MigrationDriver.open(to, 'to', 1n);
    await load.loadSetup();
    await load.loadData(state);
    await load.loadFinish();
    assert.deepEqual(Buffer.from(await to.regionRead(BAR1, 0, BAR1_SIZE)), pattern, 'BAR1 resumed whole');
    save.close();
    load.close();
  });
});
