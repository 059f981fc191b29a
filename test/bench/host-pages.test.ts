// backHostPages (bench/host-pages.ts) writes the pages it says and frees them: a backing step that
// leaked its memfd would hold the memory the next fresh destination was meant to get.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backHostPages } from '../../bench/host-pages.ts';
import { openFds } from '../native/support.ts';

test('backHostPages reports the bytes asked for with a time, and frees the memfd it wrote them into', () => {
  const r = backHostPages(16 << 20);
  assert.equal(r.bytes, 16 << 20);
  assert.ok(r.ms > 0, 'a time was measured');
  assert.equal(
    [...openFds().values()].filter((t) => t.includes('vfio-migrate-bench-back')).length,
    0,
    'no memfd left open',
  );
});
