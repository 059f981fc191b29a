// popcount32, shared by the VMM's guest dirty bitmap and a device's DMA dirty log: fixed cases and the
// count of a bit-by-bit loop for any 32-bit word.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { popcount32 } from '../src/bits.ts';

test('popcount32: fixed words, and any word as a loop over its bits counts it', () => {
  for (const [v, n] of [
    [0, 0],
    [1, 1],
    [-1, 32],
    [0x80000000 | 0, 1],
    [0xffffffff, 32],
    [0x55555555, 16],
    [0x0f0f0f0f, 16],
  ] as const)
    assert.equal(popcount32(v), n, `word 0x${(v >>> 0).toString(16)}`);
  fc.assert(
    fc.property(fc.integer({ min: -(2 ** 31), max: 2 ** 32 - 1 }), (v) => {
      let n = 0;
      for (let b = 0; b < 32; b++) n += (v >>> b) & 1;
      assert.equal(popcount32(v), n);
    }),
  );
});
