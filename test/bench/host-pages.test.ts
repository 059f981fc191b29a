// backHostPages (bench/host-pages.ts) writes the pages it says and frees them: a backing step that
// leaked its memfd would hold the memory the next fresh destination was meant to get.
import assert from 'node:assert/strict';
import { readdirSync, readlinkSync } from 'node:fs';
import { test } from 'node:test';
import { backHostPages } from '../../bench/host-pages.ts';

const memfds = () =>
  readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`).includes('vfio-migrate-bench-back');
    } catch {
      return false; // the directory's own fd, closed by now
    }
  }).length;

test('backHostPages writes the bytes asked for, times them and frees the memfd', () => {
  const r = backHostPages(16 << 20);
  assert.equal(r.bytes, 16 << 20);
  assert.ok(r.ms > 0, 'a time was measured');
  assert.equal(memfds(), 0, 'no memfd left open');
});
