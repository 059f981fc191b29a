// The multifd channel's I/O mode chooser (native/src/chanmode.c, `x-multifd-io auto`) fed made-up CPU
// costs per packet, timing the packets a channel thread would time: it alternates at first, then keeps
// the cheaper way and probes the other, rarely once one way is clearly cheaper; a noisy packet now and
// then does not flip it; a lasting change of costs does, either way round (the way in use getting
// dearer, or the probed one cheaper).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { native } from '../../src/native/addon.ts';

const STAGED = 1;
const DIRECT = 2;

/** The chooser's ways for `n` packets whose costs (ns per byte) each function gives for packet k. */
function run(n: number, staged: (k: number) => number, direct: (k: number) => number): Uint8Array {
  return native().ioChooserRun(
    Float64Array.from({ length: n }, (_, k) => staged(k)),
    Float64Array.from({ length: n }, (_, k) => direct(k)),
  );
}

function share(modes: Uint8Array, mode: number): number {
  return modes.filter((m) => m === mode).length / modes.length;
}

describe('multifd I/O mode chooser', () => {
  test('alternates for 8 packets, then keeps the cheaper way, probing the other rarely once it is clearly dearer', () => {
    const modes = run(
      4096,
      () => 2,
      () => 1,
    );
    assert.deepEqual([...modes.subarray(0, 8)], [1, 2, 1, 2, 1, 2, 1, 2]);
    // Until the staged mean rests on 12 packets, 2 of every 32 probe it; then 2 of every 256.
    const later = modes.subarray(512);
    assert.ok(share(later, STAGED) <= 2 / 256 + 1e-9, `staged share after 512 packets ${share(later, STAGED)}`);
    assert.ok(share(later, STAGED) > 0, 'the dearer way is still probed');
    assert.ok(share(modes, DIRECT) > 0.97, `direct share ${share(modes, DIRECT)}`);
  });

  test('two ways close in cost: probed 2 of every 32 packets', () => {
    const modes = run(
      4096,
      () => 1.1,
      () => 1,
    );
    const later = modes.subarray(512);
    assert.equal(share(later, STAGED), 2 / 32);
  });

  test('a dearer packet now and then (one in five at twice the cost, 1.2 on average against 1.3) does not flip the choice', () => {
    const modes = run(
      4096,
      () => 1.3,
      (k) => (k % 5 === 0 ? 2 : 1),
    );
    assert.ok(share(modes.subarray(64), DIRECT) > 0.9, `direct share ${share(modes.subarray(64), DIRECT)}`);
  });

  test('the way in use getting dearer for good: the other takes over within 128 packets', () => {
    const modes = run(
      4096,
      () => 1.5,
      (k) => (k < 2000 ? 1 : 2),
    );
    assert.ok(share(modes.subarray(512, 2000), DIRECT) > 0.97);
    // Taken over: the first of 16 packets in a row that go staged (a probe is 2).
    let switched = 2000;
    while (switched < modes.length && !modes.subarray(switched, switched + 16).every((m) => m === STAGED)) switched++;
    assert.ok(switched < 2128, `staged from packet ${switched}`);
    assert.ok(share(modes.subarray(2200), STAGED) > 0.97, `staged share ${share(modes.subarray(2200), STAGED)}`);
  });

  test('the probed way getting cheaper for good: noticed from its probes, then kept', () => {
    const modes = run(
      6144,
      () => 1,
      (k) => (k < 2000 ? 1.5 : 0.5),
    );
    assert.ok(share(modes.subarray(512, 2000), STAGED) > 0.97);
    const last = modes.subarray(4000);
    assert.ok(share(last, DIRECT) > 0.97, `direct share after packet 4000 ${share(last, DIRECT)}`);
  });

  test('cost lists of different lengths are refused', () => {
    assert.throws(
      () => native().ioChooserRun(new Float64Array(2), new Float64Array(3)),
      /RangeError: 2 staged costs, 3 direct/,
    );
  });
});
