// A memfd crosses a real socket into a separate process, which maps it and writes; the parent reads.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { native } from '../../src/native/addon.ts';
import { FdServer, type FdSocket } from '../../src/native/fd-socket.ts';
import { fdsOpenedSince, openFds, pattern, receive, tempDir } from './support.ts';

const fixture = fileURLToPath(new URL('./fixtures/child-mmap-writer.ts', import.meta.url));

describe('fd passing to another process', () => {
  test('the child maps the memfd it received and its writes show in the parent mapping', async () => {
    const { dir, cleanup } = tempDir();
    const before = openFds();
    const n = native();
    const size = 1024 * 1024;
    const memfd = n.memfdCreate('to-child', size);
    const mine = new Uint8Array(n.mmap(memfd, 0, size, false));
    try {
      const server = new FdServer().listen(join(dir, 'parent.sock'));
      const child = spawn(process.execPath, ['--import', 'tsx', fixture, server.path!], {
        stdio: ['ignore', 'inherit', 'inherit'],
      });
      const exited = once(child, 'exit');
      const [conn] = (await once(server, 'connection')) as [FdSocket];
      const seed = 0xc0ffee;
      const msg = new Uint8Array(4);
      new DataView(msg.buffer).setUint32(0, seed, true);
      conn.write(msg, [memfd]);
      const reply = await receive(conn, 4);
      const childPid = new DataView(reply.bytes.buffer).getUint32(0, true);
      assert.equal(childPid, child.pid);
      assert.notEqual(childPid, process.pid);
      assert.deepEqual(mine, pattern(size, seed), 'every byte the child wrote is in our mapping');
      const [code] = await exited;
      assert.equal(code, 0);
      conn.destroy();
      server.close();
      await once(server, 'close');
    } finally {
      n.munmap(mine.buffer as ArrayBuffer);
      n.close(memfd);
      cleanup();
    }
    assert.deepEqual(fdsOpenedSince(before), []);
  });
});
