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
import { VfioUserClient, WHOLE_WRITE_MAX } from '../../src/vfio-user/client.ts';
import { buildPeers, ERAS } from '../support/libvfio-user-peers.ts';
import { listening } from './support/unix-listening.mjs';

const BAR1 = 1;
const BAR1_SIZE = 0x3000;
const peers = buildPeers();
const dir = mkdtempSync(join(tmpdir(), 'lvu-whole-'));
after(() => rmSync(dir, { recursive: true, force: true }));

async function sampleServer(path: string, server: string): Promise<ChildProcess> {
  const p = spawn(server, ['-v', path], { stdio: ['ignore', 'ignore', 'ignore'] });
  const end = Date.now() + 60_000;
  while (!listening(path)) {
    if (p.exitCode !== null || Date.now() > end) throw new Error(`the sample server did not listen at ${path}`);
    await new Promise((r) => setTimeout(r, 20));
  }
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
