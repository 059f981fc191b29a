// The native zero scan (native/src/zero.c) against a plain JS byte loop: single non-zero bytes at every
// 8-byte word position and at the page edges, random pages, unaligned views and every length around the
// 64-byte block size, and the per-word page mask the RAM saver uses (GuestMemory.zeroPageMask).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
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
});
