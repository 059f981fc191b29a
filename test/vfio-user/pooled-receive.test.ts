// A large command (a bulk REGION_WRITE or MIG_DATA_WRITE: a device's saved state coming back) is received
// into pooled memory, given back once handled (Connection.releaseCommand), so the next one reuses it
// instead of a fresh buffer per message. Here: the memory is reused, a payload still held is never
// overwritten by the messages behind it, and a device server resuming a device takes its state through
// a few buffers, not one per message, with the resumed device's digest equal to the saved one.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { Command } from '../../src/abi/vfio-user/commands.ts';
import { LargeMemoryDevice, LargeMemoryRegs } from '../../src/device/samples/large-memory.ts';
import { FdSocket } from '../../src/native/fd-socket.ts';
import { VfioUserClient } from '../../src/vfio-user/client.ts';
import { Connection } from '../../src/vfio-user/connection.ts';
import type { ReceivedMessage } from '../../src/vfio-user/framing.ts';
import { serveDevice } from '../../src/vfio-user/serve-device.ts';
import { V2MigrationDriver } from '../../src/vmm/vfio/v2-driver.ts';

const MiB = 1024 * 1024;
const LIMITS = { maxMsgSize: 2 * MiB, maxFds: 8 };
const dir = mkdtempSync(join(tmpdir(), 'vfio-pooled-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function pair() {
  const [a, b] = FdSocket.pair();
  const client = new Connection(a, LIMITS);
  const server = new Connection(b, LIMITS);
  return {
    client,
    server,
    close() {
      client.close();
      server.close();
    },
  };
}

test('commands handled one after the other are received into the same pooled memory, each intact', async (t) => {
  const p = pair();
  t.after(() => p.close());
  const buffers = new Set<ArrayBufferLike>();
  let expected = new Uint8Array(0);
  let intact = 0;
  p.server.on('command', (m) => {
    buffers.add(m.payload.buffer);
    if (Buffer.from(m.payload).equals(expected)) intact++;
    p.server.releaseCommand(m);
    p.server.reply(m);
  });
  for (let i = 0; i < 8; i++) {
    expected = randomBytes(MiB);
    await p.client.request(Command.MIG_DATA_WRITE, new Uint8Array(0), { lend: expected });
  }
  assert.equal(intact, 8, 'every payload arrived as sent');
  assert.equal(buffers.size, 1, 'all eight in one buffer, reused');
  assert.equal(p.server.pooledAllocations, 1);
});

test('a payload not yet released is never overwritten by the commands behind it', async (t) => {
  const p = pair();
  t.after(() => p.close());
  const sent = [0, 1, 2, 3].map(() => randomBytes(MiB));
  const held: ReceivedMessage[] = [];
  p.server.on('command', (m) => {
    held.push(m);
    if (held.length < sent.length) return;
    // All four arrived while none was given back: each must still hold its own bytes.
    held.forEach((h, i) => {
      assert.ok(Buffer.from(h.payload).equals(sent[i]!), `payload ${i} intact`);
      p.server.releaseCommand(h);
      p.server.reply(h);
    });
  });
  await Promise.all(sent.map((d) => p.client.request(Command.MIG_DATA_WRITE, new Uint8Array(0), { lend: d })));
  assert.equal(new Set(held.map((h) => h.payload.buffer)).size, 4, 'four buffers, one per held payload');
  // Released, they serve what comes next.
  held.length = 0;
  await Promise.all(sent.map((d) => p.client.request(Command.MIG_DATA_WRITE, new Uint8Array(0), { lend: d })));
  assert.equal(p.server.pooledAllocations, 4, 'no buffer allocated beyond the first four');
});

test('a device server resumes a v2 device through a few pooled buffers, not one per message', async (t) => {
  const device = () => new LargeMemoryDevice({ memSize: 16 * MiB, fill: 'random', workRate: 0 });
  const from = serveDevice(device(), { socket: join(dir, 'from.sock'), flavor: 'v2' });
  const to = serveDevice(new LargeMemoryDevice({ memSize: 16 * MiB, workRate: 0 }), {
    socket: join(dir, 'to.sock'),
    flavor: 'v2',
  });
  const a = await VfioUserClient.connect(from.path);
  const b = await VfioUserClient.connect(to.path);
  t.after(() => {
    a.close();
    b.close();
    from.close();
    to.close();
  });
  const save = await V2MigrationDriver.open(a, 'from', 1n);
  await save.vmStateChange(false, 'finish-migrate');
  const chunks: Uint8Array[] = [];
  await save.saveComplete((c) => {
    chunks.push(c.slice());
  });
  await save.saveCleanup();
  await save.vmStateChange(true, 'running');
  const state = Buffer.concat(chunks);
  const load = await V2MigrationDriver.open(b, 'to', 1n);
  await load.loadSetup();
  await load.loadData(state);
  await load.loadFinish();
  await load.vmStateChange(true, 'running');
  save.close();
  load.close();
  const digest = (c: VfioUserClient) => c.regionRead(0, LargeMemoryRegs.DIGEST, 32);
  assert.deepEqual(await digest(b), await digest(a), 'the resumed device has the saved digest');
  const messages = Math.ceil(state.byteLength / MiB);
  assert.ok(messages >= 16, `${messages} MIG_DATA_WRITE messages`);
  const allocated = to.server.session!.pooledAllocations;
  assert.ok(allocated <= 2, `${allocated} pooled buffers for ${messages} messages`);
});
