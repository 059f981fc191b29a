// madvise over mmap()'s mappings: argument checks, and what the advice does to a memfd's pages.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { MADV, type NativeError, native } from '../../src/native/addon.ts';

const PAGE = 4096;

describe('madvise', () => {
  test('accepts only ranges inside an mmap() mapping, starting on a page', () => {
    const n = native();
    const fd = n.memfdCreate('madv-args', 8 * PAGE);
    const ab = n.mmap(fd, 0, 8 * PAGE, true);
    try {
      assert.throws(() => n.madvise(new ArrayBuffer(PAGE), 0, PAGE, MADV.WILLNEED), TypeError);
      assert.throws(() => n.madvise({} as ArrayBuffer, 0, PAGE, MADV.WILLNEED), TypeError);
      assert.throws(() => n.madvise(ab, 7 * PAGE, 2 * PAGE, MADV.WILLNEED), RangeError);
      assert.throws(() => n.madvise(ab, 9 * PAGE, 0, MADV.WILLNEED), RangeError);
      assert.throws(() => n.madvise(ab, 100, PAGE, MADV.WILLNEED), RangeError);
      assert.throws(() => n.madvise(ab, 0, PAGE, -1), RangeError);
      assert.throws(
        () => n.madvise(ab, 0, PAGE, 9999),
        (e: NativeError) => e.code === 'EINVAL' && e.syscall === 'madvise',
      );
      n.madvise(ab, 0, 0, MADV.WILLNEED); // empty: nothing to do
      n.madvise(ab, 8 * PAGE, 0n, MADV.WILLNEED);
    } finally {
      n.munmap(ab);
    }
    assert.throws(
      () => n.madvise(ab, 0, PAGE, MADV.WILLNEED),
      (e: NativeError) => e.code === 'EINVAL',
      'an unmapped (detached) buffer',
    );
    n.close(fd);
  });

  test('POPULATE_WRITE keeps contents; REMOVE punches the pages out of the memfd', () => {
    const n = native();
    const fd = n.memfdCreate('madv-effect', 4 * PAGE);
    const a = n.mmap(fd, 0, 4 * PAGE, true);
    const b = n.mmap(fd, 0, 4 * PAGE, true);
    try {
      new Uint8Array(a).fill(0x42);
      n.madvise(a, 0, 4 * PAGE, MADV.POPULATE_WRITE);
      assert.ok(new Uint8Array(b).every((x) => x === 0x42));
      n.madvise(a, PAGE, PAGE, MADV.REMOVE);
      const seen = new Uint8Array(b);
      assert.equal(seen[PAGE - 1], 0x42);
      assert.ok(
        seen.subarray(PAGE, 2 * PAGE).every((x) => x === 0),
        'the removed page reads as zeroes',
      );
      assert.equal(seen[2 * PAGE], 0x42);
    } finally {
      n.munmap(a);
      n.munmap(b);
      n.close(fd);
    }
  });
});
