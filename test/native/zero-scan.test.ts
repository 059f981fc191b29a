// The native zero scan (native/src/zero.c) against a plain JS byte loop: single non-zero bytes at every
// 8-byte word position and at the page edges, random pages, unaligned views and every length around the
// 64-byte block size, and the per-word page mask the RAM saver uses (GuestMemory.zeroPageMask), which
// finds never-written pages of the memfd without reading (and so allocating) them.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, fstatSync, openSync } from 'node:fs';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { native } from '../../src/native/addon.ts';
import { GuestMemory } from '../../src/vmm/guest/guest-memory.ts';

const PAGE = 4096;

function jsIsZero(b: Uint8Array): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

describe('native zero scan', () => {
  test('a page with one non-zero byte at any word position or page edge is not zero; a zero page is', () => {
    const page = new Uint8Array(PAGE);
    assert.equal(native().isZero(page), true);
    const positions = new Set<number>();
    for (let w = 0; w < PAGE; w += 8) {
      positions.add(w);
      positions.add(w + 7);
    }
    for (let i = 0; i < 80; i++) positions.add(i); // every byte of the first blocks
    for (let i = PAGE - 80; i < PAGE; i++) positions.add(i); // and of the last
    for (const at of positions) {
      for (const v of [1, 0x80, 0xff]) {
        page[at] = v;
        assert.equal(native().isZero(page), false, `byte ${at} = ${v}`);
        assert.equal(native().isZero(page), jsIsZero(page));
        page[at] = 0;
      }
    }
    assert.equal(native().isZero(page), true, 'the page is zero again');
  });

  test('agrees with a JS loop on random views: any offset, any length, one or no non-zero byte', () => {
    const buf = new Uint8Array(3 * PAGE);
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: PAGE }),
        fc.integer({ min: 0, max: 2 * PAGE }),
        fc.option(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { nil: undefined }),
        (offset, length, poke) => {
          buf.fill(0);
          const view = buf.subarray(offset, offset + length);
          if (poke && length > 0) view[poke[0] % length] = poke[1];
          assert.equal(native().isZero(view), jsIsZero(view));
        },
      ),
    );
  });

  test('random pages (a few bytes set, sometimes none) agree with the JS loop', () => {
    const pages = 256;
    const buf = new Uint8Array(pages * PAGE);
    const r = randomBytes(pages * 4);
    for (let p = 0; p < pages; p++) {
      const kind = r[p * 4]! % 3; // 0: zero page, 1: one byte set, 2: random contents
      if (kind === 1) buf[p * PAGE + (r.readUInt16LE(p * 4 + 1) % PAGE)] = 1 + (r[p * 4 + 3]! % 255);
      else if (kind === 2) buf.set(randomBytes(PAGE), p * PAGE);
    }
    for (let p = 0; p < pages; p++) {
      const page = buf.subarray(p * PAGE, (p + 1) * PAGE);
      assert.equal(native().isZero(page), jsIsZero(page), `page ${p}`);
    }
    // zeroPages over each 32-page run, asking about every page, then about a random half.
    for (let w = 0; w < pages / 32; w++) {
      const run = buf.subarray(w * 32 * PAGE, (w + 1) * 32 * PAGE);
      for (const ask of [0xffffffff, r.readInt32LE(w * 4)]) {
        let want = 0;
        for (let k = 0; k < 32; k++)
          if (ask & (1 << k) && jsIsZero(run.subarray(k * PAGE, (k + 1) * PAGE))) want |= 1 << k;
        assert.equal(native().zeroPages(run, ask) | 0, want, `word ${w}, mask ${ask >>> 0}`);
      }
    }
  });

  test('zeroPages refuses a page past the buffer and a mask that is no u32', () => {
    const buf = new Uint8Array(2 * PAGE);
    assert.equal(native().zeroPages(buf, 0b11), 0b11);
    assert.throws(() => native().zeroPages(buf, 0b100), RangeError);
    assert.throws(() => native().zeroPages(buf, 2 ** 32), RangeError);
    assert.throws(() => native().zeroPages(buf, 1.5), RangeError);
    assert.throws(() => native().zeroPages(new Uint16Array(4096) as unknown as Uint8Array, 1), TypeError);
  });

  test('GuestMemory.zeroPageMask agrees with a JS loop, also across mapping pieces of 8 pages', () => {
    for (const pieceSize of [undefined, 8 * PAGE]) {
      const m = GuestMemory.create(96 * PAGE, 'zero-mask', pieceSize ? { pieceSize } : {});
      try {
        for (const p of [1, 7, 8, 30, 31, 33, 63, 64, 95]) m.page(p)[(p * 97) % PAGE] = 0x42;
        m.page(40)[PAGE - 1] = 1;
        m.page(41)[0] = 1;
        for (let first = 0; first + 32 <= 96; first += 5) {
          for (const ask of [-1, 0x55555555, 0x80000001, 0]) {
            let want = 0;
            for (let k = 0; k < 32; k++) if (ask & (1 << k) && jsIsZero(m.page(first + k))) want |= 1 << k;
            assert.equal(m.zeroPageMask(first, ask), want, `first ${first}, mask ${ask >>> 0}, piece ${pieceSize}`);
          }
        }
        assert.throws(() => m.zeroPageMask(80, -1), RangeError, 'pages 80..111 run past the 96 pages');
      } finally {
        m.close();
      }
    }
  });

  test('pages never written are found in the memfd holes without being read: the scan allocates nothing', () => {
    const pages = 4096; // 16 MiB
    const m = GuestMemory.create(pages * PAGE, 'zero-holes');
    const allocated = () => fstatSync(m.fd).blocks * 512;
    try {
      const written = new Set([0, 1, 31, 32, 100, 1000, 1001, 2047, 4095]);
      for (const p of written) m.page(p)[(p * 13) % PAGE] = 1;
      m.page(3000).fill(0); // written with zeroes: data in the memfd, zero to the scan
      written.add(3000);
      const before = allocated();
      for (let w = 0; w < pages / 32; w++) {
        const z = m.zeroPageMask(w * 32, -1);
        for (let k = 0; k < 32; k++) {
          const p = w * 32 + k;
          const expectZero = !written.has(p) || p === 3000;
          assert.equal((z >>> k) & 1, expectZero ? 1 : 0, `page ${p}`);
        }
      }
      assert.equal(allocated(), before, 'no hole was allocated by the scan');
      // The data run cache (every page data) and a second pass give the same answers.
      const full = GuestMemory.create(64 * PAGE, 'zero-full');
      try {
        for (let p = 0; p < 64; p++) full.page(p)[0] = p === 40 ? 0 : 1;
        for (let pass = 0; pass < 2; pass++) {
          assert.equal(full.zeroPageMask(0, -1), 0);
          assert.equal(full.zeroPageMask(32, -1), 1 << 8);
        }
      } finally {
        full.close();
      }
    } finally {
      m.close();
    }
  });

  test('a guest found sparse and then written whole: every later answer sees the new data', () => {
    // The sparse answer (one fstat) stands for a while: the holes are then asked for, never assumed.
    const m = GuestMemory.create(128 * PAGE, 'zero-filled-later');
    try {
      for (let w = 0; w < 4; w++) assert.equal(m.zeroPageMask(w * 32, -1), -1, `word ${w} all holes`);
      for (let p = 0; p < 128; p++) m.page(p)[p % PAGE] = p === 70 ? 0 : 1;
      for (let pass = 0; pass < 2; pass++)
        for (let w = 0; w < 4; w++) assert.equal(m.zeroPageMask(w * 32, -1), w === 2 ? 1 << 6 : 0, `word ${w}`);
    } finally {
      m.close();
    }
  });

  test('holePages: the holes of a memfd at page granularity; bad arguments are refused', () => {
    const n = native();
    const fd = n.memfdCreate('holes', 64 * PAGE);
    const ab = n.mmap(fd, 0, 64 * PAGE, true);
    try {
      const b = new Uint8Array(ab);
      b[5 * PAGE] = 1;
      b[6 * PAGE + 100] = 1;
      b[40 * PAGE + PAGE - 1] = 1;
      const extent = new Float64Array(2);
      const holes = n.holePages(fd, 0, -1, extent) >>> 0;
      // A page with data is never reported as a hole (a kernel may report more data than was written).
      for (const p of [5, 6]) assert.equal((holes >>> p) & 1, 0, `page ${p} holds data`);
      assert.equal((holes >>> 0) & 1, 1, 'page 0 was never written');
      assert.ok(extent[1]! > extent[0]! && extent[0]! <= 5 * PAGE, `a data run was met: ${extent[0]}-${extent[1]}`);
      const upper = n.holePages(fd, 32 * PAGE, -1, extent) >>> 0;
      assert.equal((upper >>> 8) & 1, 0, 'page 40 holds data');
      assert.equal((upper >>> 31) & 1, 1, 'page 63 was never written');
      assert.throws(() => n.holePages(fd, 100, 1, extent), RangeError);
      assert.throws(
        () => n.holePages(fd, 0, 1, new Float64Array(1)),
        /RangeError: extent has 1 elements, fewer than 2/,
      );
      assert.throws(
        () => n.holePages(fd, 0, 1, new Uint8Array(16) as never),
        /TypeError: extent must be a Float64Array/,
      );
      const [r, w] = n.socketpair();
      try {
        assert.throws(
          () => n.holePages(r, 0, 1, extent),
          (e: NodeJS.ErrnoException) => e.code === 'ESPIPE',
        );
      } finally {
        n.close(r);
        n.close(w);
      }
    } finally {
      n.munmap(ab);
      n.close(fd);
    }
  });

  test('holePages asks only about the wanted pages: any mask over any data layout gets what asking page by page gets', () => {
    // The walk starts at the first wanted page, jumps to the next wanted one past each answer, and asks for
    // data or for a run's end after a data page as the pages come; page by page (one bit per call) is its
    // simplest form, and a page with data is never a hole.
    const n = native();
    const fd = n.memfdCreate('hole-masks', 64 * PAGE);
    const ab = n.mmap(fd, 0, 64 * PAGE, true);
    const b = new Uint8Array(ab);
    const extent = new Float64Array(2);
    try {
      fc.assert(
        fc.property(
          fc.uniqueArray(fc.nat(63), { maxLength: 40 }),
          fc.array(fc.integer(), { minLength: 8, maxLength: 8 }),
          (data, masks) => {
            for (const p of data) b[p * PAGE + (p % 7) * 100] = 1;
            for (const [i, mask] of masks.entries()) {
              const word = i % 2;
              extent.fill(0); // no data run known: every answer comes from lseek
              const holes = n.holePages(fd, word * 32 * PAGE, mask, extent) >>> 0;
              let single = 0;
              for (let k = 0; k < 32; k++)
                if ((mask >>> k) & 1) single |= (n.holePages(fd, (word * 32 + k) * PAGE, 1, extent) & 1) << k;
              assert.equal(holes, single >>> 0, `word ${word}, mask 0x${(mask >>> 0).toString(16)}`);
              for (const p of data)
                if (p >> 5 === word) assert.equal((holes >>> (p & 31)) & 1, 0, `page ${p} holds data`);
            }
          },
        ),
        { numRuns: 60 },
      );
    } finally {
      n.munmap(ab);
      n.close(fd);
    }
  });

  test('a file whose lseek answers without looking (/dev/zero) has no trusted holes: its pages are scanned', () => {
    const fd = openSync('/dev/zero', 'r+');
    try {
      const extent = new Float64Array(2);
      assert.equal(native().holePages(fd, 0, -1, extent), 0);
      assert.equal(native().holePages(fd, 4096, -1, extent), 0, 'lseek says "offset 0" for an offset past it');
      const m = GuestMemory.map(fd, 64 * PAGE);
      try {
        assert.equal(m.zeroPageMask(32, -1), -1, 'every page read and found zero');
      } finally {
        m.close(true);
      }
    } finally {
      closeSync(fd);
    }
  });
});
