// pwriteSpaced: pages laid out as a stream's page records (a page, the next record's header, the next
// page) written into a file one after another with pwritev, checked against a reference at any piece
// count, gap and offset; what it refuses. copyUnspaced: the same layout copied into memory.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { type NativeError, native } from '../../src/native/addon.ts';

const FILE = 1 << 20;

/** What pwriteSpaced should leave in a file that held `before`: the pieces of src, gaps dropped, at offset. */
function reference(before: Uint8Array, offset: number, src: Uint8Array, piece: number, gap: number): Uint8Array {
  const out = before.slice();
  for (let k = 0, at = 0; at < src.byteLength; k++, at += piece + gap)
    out.set(src.subarray(at, at + piece), offset + k * piece);
  return out;
}

describe('pwriteSpaced', () => {
  test('pieces land one after another at the offset, gaps skipped, the rest of the file untouched', () => {
    const n = native();
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2100 }), // pieces: across the 1024 iovecs of one pwritev call
        fc.constantFrom(1, 8, 64, 4096),
        fc.constantFrom(0, 1, 8, 17),
        fc.integer({ min: 0, max: 4096 }),
        (pieces, piece, gap, offset) => {
          fc.pre(offset + pieces * piece <= FILE);
          const fd = n.memfdCreate('pwrite-prop', FILE);
          try {
            const file = new Uint8Array(n.mmap(fd, 0, FILE, true));
            for (let i = 0; i < FILE; i += 4093) file[i] = (i >>> 12) | 1; // neighbours to keep
            const before = file.slice();
            const src = new Uint8Array(pieces * piece + (pieces - 1) * gap);
            for (let i = 0; i < src.byteLength; i++) src[i] = (i * 31 + 7) & 0xff;
            assert.equal(n.pwriteSpaced(fd, offset, src, piece, gap), pieces * piece);
            assert.deepEqual(file, reference(before, offset, src, piece, gap));
            n.munmap(file.buffer as ArrayBuffer);
          } finally {
            n.close(fd);
          }
        },
      ),
      { numRuns: 60 },
    );
  });

  test('a view into a larger buffer is written from its own first byte', () => {
    const n = native();
    const fd = n.memfdCreate('pwrite-view', 4 * 4096);
    try {
      const big = new Uint8Array(3 * 4096 + 100);
      for (let i = 0; i < big.byteLength; i++) big[i] = i % 251;
      const src = big.subarray(92, 92 + 2 * 4096 + 8);
      n.pwriteSpaced(fd, 4096, src, 4096, 8);
      const file = new Uint8Array(n.mmap(fd, 0, 4 * 4096, false));
      assert.deepEqual(file.subarray(4096, 8192), big.subarray(92, 92 + 4096));
      assert.deepEqual(file.subarray(8192, 12288), big.subarray(92 + 4104, 92 + 4104 + 4096));
      assert.ok(file.subarray(0, 4096).every((b) => b === 0) && file.subarray(12288).every((b) => b === 0));
      n.munmap(file.buffer as ArrayBuffer);
    } finally {
      n.close(fd);
    }
  });

  test('src that is not whole pieces and gaps, bad numbers and a file that cannot seek are refused', () => {
    const n = native();
    const fd = n.memfdCreate('pwrite-bad', 4096);
    try {
      for (const [len, piece, gap] of [
        [0, 4096, 8],
        [4095, 4096, 8],
        [4096 + 8, 4096, 8],
        [2 * 4096 + 7, 4096, 8],
      ] as const)
        assert.throws(() => n.pwriteSpaced(fd, 0, new Uint8Array(len), piece, gap), RangeError, `${len} bytes`);
      assert.throws(() => n.pwriteSpaced(fd, -1, new Uint8Array(8), 8, 0), RangeError);
      assert.throws(() => n.pwriteSpaced(fd, 0, new Uint8Array(8), 0, 0), RangeError);
      assert.throws(() => n.pwriteSpaced(fd, 0, new Uint8Array(8), 8, -1), RangeError);
      assert.throws(() => n.pwriteSpaced(fd, 0, 'bytes' as unknown as Uint8Array, 8, 0), TypeError);
    } finally {
      n.close(fd);
    }
    const [r, w] = n.socketpair();
    try {
      assert.throws(
        () => n.pwriteSpaced(w, 0, new Uint8Array(8), 8, 0),
        (e: NativeError) => e.code === 'ESPIPE' && e.syscall === 'pwritev',
      );
    } finally {
      n.close(r);
      n.close(w);
    }
    assert.throws(
      () => n.pwriteSpaced(fd, 0, new Uint8Array(8), 8, 0),
      (e: NativeError) => e.code === 'EBADF',
    );
  });
});

describe('copyUnspaced', () => {
  test('pieces land one after another at the start of dst, gaps skipped, the rest of dst untouched', () => {
    const n = native();
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 300 }),
        fc.constantFrom(1, 8, 64, 4096),
        fc.constantFrom(0, 1, 8, 17),
        fc.integer({ min: 0, max: 100 }),
        (pieces, piece, gap, spare) => {
          const src = new Uint8Array(pieces * piece + (pieces - 1) * gap);
          for (let i = 0; i < src.byteLength; i++) src[i] = (i * 31 + 7) & 0xff;
          const dst = new Uint8Array(pieces * piece + spare).fill(0xee);
          const before = dst.slice();
          assert.equal(n.copyUnspaced(dst, src, piece, gap), pieces * piece);
          assert.deepEqual(dst, reference(before, 0, src, piece, gap));
        },
      ),
      { numRuns: 100 },
    );
  });

  test('views copy from and to their own first bytes', () => {
    const n = native();
    const big = new Uint8Array(3 * 4096 + 100);
    for (let i = 0; i < big.byteLength; i++) big[i] = i % 251;
    const out = new Uint8Array(4 * 4096);
    n.copyUnspaced(out.subarray(4096, 3 * 4096), big.subarray(92, 92 + 2 * 4096 + 8), 4096, 8);
    assert.deepEqual(out.subarray(4096, 8192), big.subarray(92, 92 + 4096));
    assert.deepEqual(out.subarray(8192, 12288), big.subarray(92 + 4104, 92 + 4104 + 4096));
    assert.ok(out.subarray(0, 4096).every((b) => b === 0) && out.subarray(12288).every((b) => b === 0));
  });

  test('src that is not whole pieces and gaps, a dst too small, overlap and bad numbers are refused', () => {
    const n = native();
    const dst = new Uint8Array(2 * 4096);
    for (const len of [0, 4095, 4096 + 8, 2 * 4096 + 7])
      assert.throws(() => n.copyUnspaced(dst, new Uint8Array(len), 4096, 8), RangeError, `${len} bytes`);
    assert.throws(() => n.copyUnspaced(dst, new Uint8Array(3 * 4096 + 16), 4096, 8), /do not fit/);
    const both = new Uint8Array(4 * 4096);
    assert.throws(() => n.copyUnspaced(both.subarray(0, 4096), both.subarray(100, 100 + 4096), 4096, 0), /overlaps/);
    assert.throws(() => n.copyUnspaced(dst, new Uint8Array(8), 0, 0), RangeError);
    assert.throws(() => n.copyUnspaced(dst, new Uint8Array(8), 8, -1), RangeError);
    assert.throws(() => n.copyUnspaced(dst, 'bytes' as unknown as Uint8Array, 8, 0), TypeError);
    assert.deepEqual(dst, new Uint8Array(2 * 4096), 'nothing refused was copied');
  });
});
