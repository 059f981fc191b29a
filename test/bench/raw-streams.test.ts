// The raw baselines the RAM figures are ratios to move the whole stream, each the way its reader says
// (bench/raw-streams.ts): a baseline that moved less would void the ratios. The fresh reader's landing is
// checked by rawStream itself (the memfd read back against the CRC of what was read).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type RawReader, rawTcp } from '../../bench/raw-streams.ts';
import { GuestMemory, HUGE_PAGE_SIZE } from '../../src/vmm/guest/guest-memory.ts';
import { openFds } from '../native/support.ts';
import { collapseSkipReason } from '../support/huge-pages.ts';

const readers: RawReader[] = ['onread', 'data', 'checked', 'guest', 'guest-huge', 'staged', 'landed', 'fresh'];

for (const reader of readers) {
  test(`raw-tcp ${reader}: every byte of the stream is read`, async () => {
    const total = 8 << 20;
    const r = await rawTcp(total, reader);
    assert.equal(r.bytes, total);
    assert.ok(r.ms > 0, 'a time was measured');
    assert.ok(r.cpuMs !== undefined && r.cpuMs >= 0, 'the CPU of both ends was counted');
  });
}

test('raw-tcp guest-huge: both ends collapse their memory into huge pages, and the note says how much', async (t) => {
  // Whether this machine collapses at all, asked apart from the code under test.
  const probe = GuestMemory.create(HUGE_PAGE_SIZE, 'raw-tcp-probe');
  const skip = collapseSkipReason(probe.collapseHugePages().failure);
  probe.close();
  if (skip) return t.skip(skip);
  const r = await rawTcp(8 << 20, 'guest-huge');
  assert.equal(r.bytes, 8 << 20);
  assert.equal(r.note, 'huge pages: writer 8, reader 8 of 8 MiB');
});

test('raw-tcp fresh: beforeReading runs once, before this side allocates its memory', async () => {
  const seen: number[] = [];
  const r = await rawTcp(8 << 20, 'fresh', {
    beforeReading: () => seen.push([...openFds().values()].filter((t) => t.includes('raw-tcp-fresh')).length),
  });
  assert.equal(r.bytes, 8 << 20);
  assert.deepEqual(seen, [0], 'called once, with no landing memfd made yet');
});
