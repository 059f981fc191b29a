// The multifd channel thread pool (ChannelThreadPool): threads made ready when the capability is set,
// taken by a migration's channels, and topped up again some time after the migration rather than at its
// end, when the destination's guest resumes and the source cleans up. Real worker threads; the channel a
// thread is started for gets a socket whose other end is closed, so it fails at once and is ended.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Worker } from 'node:worker_threads';
import { native } from '../../../src/native/addon.ts';
import { GuestMemory } from '../../../src/vmm/guest/guest-memory.ts';
import { ChannelThreadPool, type FromReceiver } from '../../../src/vmm/migration/multifd-threads.ts';

/** Polls `cond` until it holds; the deadline is a safety net against a hang, not what is tested. */
async function until(cond: () => boolean, what: string, ms = 60_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Takes a thread from the pool for a receiving channel whose source hangs up at once; ends it once it says so. */
async function useOne(pool: ChannelThreadPool, memory: GuestMemory): Promise<void> {
  const [ours, theirs] = native().socketpair();
  const abortFd = native().eventfd(0, true);
  native().close(ours); // the source is gone before its init packet
  const pages = memory.size / 4096;
  const w: Worker = pool.start({
    role: 'recv',
    memory: memory.share(),
    socketFd: theirs,
    abortFd,
    uuid: null,
    received: new Uint8Array(new SharedArrayBuffer(pages)),
    written: new Uint8Array(new SharedArrayBuffer(pages)),
    fresh: true,
    progress: new Int32Array(new SharedArrayBuffer(4)),
  });
  const said = await new Promise<FromReceiver>((resolve) => w.once('message', resolve));
  assert.equal(said.type, 'error', 'the channel failed: its source hung up before the init packet');
  await w.terminate();
  native().close(theirs);
  native().close(abortFd);
}

test('threads taken by a migration are replaced after a delay, not at once; closing cancels a pending top-up', async (t) => {
  const memory = GuestMemory.create(1 << 20, 'pool-test');
  const pool = new ChannelThreadPool(50);
  t.after(() => {
    pool.close();
    memory.close();
  });
  pool.keep(2);
  assert.equal(pool.ready, 2, 'the capability made two threads ready');
  await useOne(pool, memory);
  assert.equal(pool.ready, 1);

  pool.refillSoon();
  assert.equal(pool.ready, 1, 'no thread starts at the moment the migration ends');
  assert.equal(pool.refillPending, true);
  await until(() => pool.ready === 2, 'the top-up');
  assert.equal(pool.refillPending, false);
  pool.refillSoon();
  assert.equal(pool.refillPending, false, 'a full pool needs no top-up');

  await useOne(pool, memory);
  pool.refillSoon();
  assert.equal(pool.refillPending, true);
  pool.close();
  assert.equal(pool.refillPending, false, 'closing the pool cancels the top-up');
  assert.equal(pool.ready, 0);
});
