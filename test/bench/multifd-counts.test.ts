// The multifd part measures 1 channel, doubling counts up to the cores (growth is shown up to them) and the
// asked-for count (QEMU's comparison), each once and in order.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { multifdCounts } from '../../bench/ram.ts';

test('channel counts: 1, doubling up to the cores, and the asked-for count', () => {
  assert.deepEqual(multifdCounts(4, 2), [1, 2, 4]);
  assert.deepEqual(multifdCounts(4, 1), [1, 4]);
  assert.deepEqual(multifdCounts(4, 8), [1, 2, 4, 8]);
  assert.deepEqual(multifdCounts(3, 6), [1, 2, 3, 4]);
  assert.deepEqual(multifdCounts(1, 2), [1, 2]);
  assert.deepEqual(multifdCounts(16, 4), [1, 2, 4, 16]);
});
