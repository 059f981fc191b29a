// The addon is context-aware: it loads and works in worker_threads, and a worker can exit (or be
// terminated) while it still has started Pollers, without the loop-close abort of an unclosed handle.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, test } from 'node:test';
import type { Worker } from 'node:worker_threads';
import { native } from '../../src/native/addon.ts';
import { FdSocket } from '../../src/native/fd-socket.ts';
import { tsWorker } from '../vmm/support.ts';
import { receive } from './support.ts';

const fixture = new URL('./fixtures/worker-echo.ts', import.meta.url);

function startWorker(fd: number, leavePollerOpen: boolean): Worker {
  return tsWorker(fixture, { fd, leavePollerOpen });
}

describe('worker threads', () => {
  test('two workers each run their own FdSocket and echo bytes and fds', async () => {
    const n = native();
    const mains: FdSocket[] = [];
    const workers: Worker[] = [];
    try {
      for (let i = 0; i < 2; i++) {
        const [mine, theirs] = n.socketpair();
        mains.push(new FdSocket(mine));
        const w = startWorker(theirs, false);
        workers.push(w);
        const [msg] = await once(w, 'message');
        assert.equal(msg, 'ready');
      }
      for (const [i, s] of mains.entries()) {
        const memfd = n.memfdCreate(`w${i}`, 4096);
        s.write(new Uint8Array([i, 0xaa]), [memfd]);
        const echo = await receive(s, 2);
        assert.deepEqual([...echo.bytes], [i, 0xaa]);
        const back = echo.fds[0]!.fds[0]!;
        const ab = n.mmap(back, 0, 4096, false);
        assert.equal(new Uint8Array(ab)[1], 0x77, `worker ${i} wrote through its own mapping`);
        n.munmap(ab);
        n.close(back);
        n.close(memfd);
      }
      // Closing our end: the worker's socket sees EOF and closes; nothing else keeps the worker alive.
      const exits = workers.map((w) => once(w, 'exit'));
      for (const s of mains) s.destroy();
      for (const [code] of await Promise.all(exits)) assert.equal(code, 0);
    } finally {
      for (const s of mains) s.destroy();
      for (const w of workers) await w.terminate();
    }
  });

  test('terminating a worker with live Pollers and sockets tears down cleanly', async () => {
    const n = native();
    const [mine, theirs] = n.socketpair();
    const main = new FdSocket(mine);
    const w = startWorker(theirs, true);
    try {
      await once(w, 'message');
      main.write(new Uint8Array([1]));
      await receive(main, 1);
      const exited = once(w, 'exit');
      await w.terminate();
      const [code] = await exited;
      assert.equal(code, 1, 'terminated (not crashed: an abort would take this process down)');
    } finally {
      main.destroy();
      await w.terminate();
    }
    // The main thread's addon instance is unaffected.
    const efd = n.eventfd(0, true);
    n.eventfdWrite(efd, 1n);
    assert.equal(n.eventfdRead(efd), 1n);
    n.close(efd);
  });
});
