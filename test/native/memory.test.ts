// memfd + mmap: shared bytes, > 2 GiB mappings, munmap that detaches, and fd helpers.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { setImmediate as tick } from 'node:timers/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Worker } from 'node:worker_threads';
import { type NativeError, native } from '../../src/native/addon.ts';
import { tsWorker } from '../vmm/support.ts';
import { fdFlags, fdsOpenedSince, O_CLOEXEC, openFds } from './support.ts';

const GiB = 2 ** 30;
const PAGE = 4096;

/** How many mappings of the memfd called name this process has (from /proc/self/maps). */
function mappingsOf(name: string): number {
  return readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((l) => l.includes(`/memfd:${name} `)).length;
}

/** A worker attaching the mapping `token` names (the fixture in TypeScript). */
function attachWorker(token: bigint): Worker {
  return tsWorker(new URL('./fixtures/worker-attach.ts', import.meta.url), { token });
}

/** One request to the worker-attach fixture, and its answer. */
async function ask(w: Worker, m: object): Promise<unknown> {
  const answer = once(w, 'message');
  w.postMessage(m);
  return (await answer)[0];
}

describe('memfd and mmap', () => {
  test('a view shared with another thread: the same pages (not a second mapping), held until the last one lets go', async () => {
    const n = native();
    const fd = n.memfdCreate('shared-thread', 4 * PAGE);
    const ab = n.mmap(fd, 0, 4 * PAGE, true);
    const mine = new Uint8Array(ab);
    mine[5] = 0x42;
    const w = attachWorker(n.mmapShare(ab));
    try {
      assert.equal((await once(w, 'message'))[0], 4 * PAGE, 'the attached view has the mapping length');
      assert.equal(mappingsOf('shared-thread'), 1, 'attaching maps nothing new');
      assert.equal(await ask(w, { op: 'read', at: 5 }), 0x42);
      assert.equal(await ask(w, { op: 'write', at: 6, value: 0x99 }), 'written');
      assert.equal(mine[6], 0x99);
      // The main thread lets go first: its view is detached, the pages stay for the worker.
      n.munmap(ab);
      assert.equal(mine.byteLength, 0);
      assert.equal(mappingsOf('shared-thread'), 1, 'still mapped for the worker');
      assert.equal(await ask(w, { op: 'read', at: 6 }), 0x99);
      assert.throws(
        () => n.mmapShare(ab),
        (e: NativeError) => e.code === 'EBADF',
      );
      // The last holder lets go: now it is unmapped.
      assert.equal(await ask(w, { op: 'unmap' }), 0);
      assert.equal(mappingsOf('shared-thread'), 0, 'unmapped once the last view let go');
    } finally {
      await w.terminate();
      n.close(fd);
    }
  });

  test('a worker that ends without munmap lets go at its teardown; bad tokens are refused', async () => {
    const n = native();
    const fd = n.memfdCreate('shared-teardown', PAGE);
    const ab = n.mmap(fd, 0, PAGE, true);
    const w = attachWorker(n.mmapShare(ab));
    await once(w, 'message');
    n.munmap(ab);
    assert.equal(mappingsOf('shared-teardown'), 1);
    await w.terminate();
    // The worker's backing store is freed with its environment; that may take a turn of the loop.
    for (let i = 0; i < 100 && mappingsOf('shared-teardown') > 0; i++) await tick();
    assert.equal(mappingsOf('shared-teardown'), 0, 'the worker teardown released the mapping');
    n.close(fd);
    assert.throws(() => n.mmapAttach(0n), TypeError);
    assert.throws(() => n.mmapAttach(-1n), TypeError);
    assert.throws(() => n.mmapAttach(1 as unknown as bigint), TypeError);
    assert.throws(() => n.mmapShare(new ArrayBuffer(8)), TypeError);
  });

  test('two mappings of one memfd share bytes, both ways', () => {
    const n = native();
    const fd = n.memfdCreate('shared', 16 * PAGE);
    try {
      assert.equal(n.fdSize(fd), 16 * PAGE);
      assert.ok(fdFlags(fd) & O_CLOEXEC, 'memfd is close-on-exec');
      const a = new Uint8Array(n.mmap(fd, 0, 16 * PAGE, true));
      const b = new Uint8Array(n.mmap(fd, 4 * PAGE, 8 * PAGE, true)); // an offset window
      a[4 * PAGE + 10] = 0xab;
      assert.equal(b[10], 0xab);
      b[8 * PAGE - 1] = 0x5a;
      assert.equal(a[12 * PAGE - 1], 0x5a);
      const ro = new Uint8Array(n.mmap(fd, 0, PAGE, false));
      a[0] = 0x11;
      assert.equal(ro[0], 0x11, 'a read-only mapping sees writes made elsewhere');
      n.munmap(a.buffer as ArrayBuffer);
      n.munmap(b.buffer as ArrayBuffer);
      n.munmap(ro.buffer as ArrayBuffer);
    } finally {
      n.close(fd);
    }
  });

  test('a 3 GiB sparse mapping works above 2 GiB (offsets and lengths past int32)', () => {
    const n = native();
    const size = 3 * GiB;
    const fd = n.memfdCreate('big', size);
    try {
      assert.equal(n.fdSize(fd), size);
      const whole = n.mmap(fd, 0, size, true);
      assert.equal(whole.byteLength, size);
      const all = new Uint8Array(whole);
      // Touch a handful of pages only: the memfd stays sparse.
      const spots = [0, 2 * GiB - 1, 2 * GiB, 2 * GiB + 12345, size - 1];
      spots.forEach((off, i) => {
        all[off] = i + 1;
      });
      // A second mapping starting past 2 GiB, offset given as a bigint, sees the same bytes.
      const tail = new Uint8Array(n.mmap(fd, 2n * BigInt(GiB), BigInt(GiB), false));
      assert.equal(tail.length, GiB);
      assert.equal(tail[0], 3);
      assert.equal(tail[12345], 4);
      assert.equal(tail[GiB - 1], 5);
      assert.equal(all[2 * GiB - 1], 2);
      n.munmap(tail.buffer as ArrayBuffer);
      n.munmap(whole);
    } finally {
      n.close(fd);
    }
  });

  test('munmap detaches: every view reads as empty, and a second munmap is a no-op', () => {
    const n = native();
    const fd = n.memfdCreate('detach', PAGE);
    try {
      const ab = n.mmap(fd, 0, PAGE, true);
      const view = new Uint8Array(ab);
      const dv = new DataView(ab);
      view[0] = 7;
      assert.equal(mappingsOf('detach'), 1);
      n.munmap(ab);
      assert.equal(ab.byteLength, 0);
      assert.equal(view.length, 0);
      assert.equal(view[0], undefined, 'a read through a detached view touches no memory');
      assert.throws(() => dv.getUint8(0), TypeError);
      assert.equal(mappingsOf('detach'), 0, 'unmapped at once, not at GC');
      n.munmap(ab); // no-op
      assert.equal(ab.byteLength, 0);
      // The bytes written before munmap are in the memfd.
      const again = new Uint8Array(n.mmap(fd, 0, PAGE, false));
      assert.equal(again[0], 7);
      n.munmap(again.buffer as ArrayBuffer);
    } finally {
      n.close(fd);
    }
  });

  test('mmapAnon: zeroed private memory of the exact length, writable, detached by munmap; length 0 refused', () => {
    const n = native();
    const length = 5 * 2 ** 20 + 123;
    const ab = n.mmapAnon(length);
    const view = new Uint8Array(ab);
    assert.equal(view.byteLength, length);
    assert.ok(
      view.every((b) => b === 0),
      'zeroed',
    );
    view[0] = 1;
    view[length - 1] = 2;
    assert.deepEqual([view[0], view[length - 1]], [1, 2]);
    const other = new Uint8Array(n.mmapAnon(PAGE));
    assert.equal(other[0], 0, 'private: another mapping does not see these bytes');
    n.munmap(ab);
    assert.equal(view.length, 0);
    n.munmap(other.buffer as ArrayBuffer);
    assert.throws(
      () => n.mmapAnon(0),
      (e: NativeError) => e.code === 'EINVAL',
    );
  });

  test('mmapAnon: huge pages where the kernel gives them to advised memory, so a 16 MiB buffer takes far fewer faults than its 4096 pages', (t) => {
    const thp = (f: string) => {
      try {
        return /\[(\w+)\]/.exec(readFileSync(`/sys/kernel/mm/transparent_hugepage/${f}`, 'utf8'))?.[1];
      } catch {
        return undefined;
      }
    };
    const [enabled, defrag] = [thp('enabled'), thp('defrag')];
    // With defrag "never" or "defer" the kernel may hand out small pages rather than compact: no promise.
    if (
      enabled === undefined ||
      enabled === 'never' ||
      !['always', 'madvise', 'defer+madvise'].includes(defrag ?? '')
    ) {
      t.skip(
        `transparent huge pages: enabled [${enabled ?? 'absent'}], defrag [${defrag ?? 'absent'}]: advised memory is not promised huge pages`,
      );
      return;
    }
    const n = native();
    const pages = 4096;
    const view = new Uint8Array(n.mmapAnon(pages * PAGE));
    const before = process.resourceUsage().minorPageFault;
    for (let i = 0; i < view.byteLength; i += PAGE) view[i] = 1;
    const faults = process.resourceUsage().minorPageFault - before;
    n.munmap(view.buffer as ArrayBuffer);
    assert.ok(faults < pages / 2, `${faults} faults touching ${pages} pages`);
  });

  test('a mapping nobody references is unmapped by the garbage collector', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const n = native();
    const fd = n.memfdCreate('collected', PAGE);
    try {
      (() => {
        new Uint8Array(n.mmap(fd, 0, PAGE, true))[0] = 1;
      })();
      assert.equal(mappingsOf('collected'), 1);
      for (let i = 0; i < 20 && mappingsOf('collected') > 0; i++) {
        gc();
        await tick(); // Node runs external-buffer finalizers from an immediate
      }
      assert.equal(mappingsOf('collected'), 0);
    } finally {
      n.close(fd);
    }
  });

  test('munmap refuses an ArrayBuffer that mmap did not create', () => {
    assert.throws(() => native().munmap(new ArrayBuffer(8)), TypeError);
    assert.throws(() => native().munmap(new Uint8Array(8) as unknown as ArrayBuffer), TypeError);
  });

  test('mmap errors carry errno: a bad fd, a misaligned offset, length 0', () => {
    const n = native();
    const fd = n.memfdCreate('errs', PAGE);
    try {
      assert.throws(
        () => n.mmap(999999, 0, PAGE, true),
        (e: NativeError) => e.code === 'EBADF' && e.errno === 9,
      );
      assert.throws(
        () => n.mmap(fd, 1, PAGE, true),
        (e: NativeError) => e.code === 'EINVAL',
      );
      assert.throws(
        () => n.mmap(fd, 0, 0, true),
        (e: NativeError) => e.code === 'EINVAL',
      );
    } finally {
      n.close(fd);
    }
  });

  test('mappings and memfds leak no fd; dup gives an independent close-on-exec fd', () => {
    const n = native();
    const before = openFds();
    for (let i = 0; i < 20; i++) {
      const fd = n.memfdCreate(`leak${i}`, PAGE);
      const ab = n.mmap(fd, 0, PAGE, true);
      const d = n.dup(fd);
      assert.notEqual(d, fd);
      assert.ok(fdFlags(d) & O_CLOEXEC);
      n.close(fd);
      assert.equal(n.fdSize(d), PAGE, 'the dup outlives the original');
      n.close(d);
      new Uint8Array(ab)[0] = 1; // the mapping outlives both fds
      n.munmap(ab);
    }
    assert.deepEqual(fdsOpenedSince(before), []);
    assert.throws(
      () => n.close(999999),
      (e: NativeError) => e.code === 'EBADF',
    );
  });
});
