// The demo's progress display, through fake streams: a terminal gets one bar line redrawn in place and
// fitted to its width; a pipe gets plain lines at most every `everyMs` (by an injected clock), and always
// the last one.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  barLine,
  fractionDone,
  MigrationProgress,
  type MigrationSnapshot,
  snapshotOf,
} from '../../src/cli/migration-progress.ts';

const MiB = 1024 * 1024;
const snap = (o: Partial<MigrationSnapshot> = {}): MigrationSnapshot => ({
  status: 'active',
  pass: 3,
  ramTotal: 64 * MiB,
  ramRemaining: 16 * MiB,
  ramSent: 50 * MiB,
  deviceSent: 12 * MiB,
  devicePending: 2 * MiB,
  mbps: 812.4,
  expectedDowntimeMs: 41,
  ...o,
});

function stream(isTTY: boolean, columns?: number) {
  const chunks: string[] = [];
  return { chunks, out: { isTTY, columns, write: (s: string) => chunks.push(s) } };
}

test('a query-migrate answer becomes a snapshot (device pending from vfio.x-pending)', () => {
  const s = snapshotOf({
    status: 'active',
    'expected-downtime': 41,
    ram: { transferred: 5, remaining: 6, total: 7, mbps: 8, 'dirty-sync-count': 2 },
    vfio: { transferred: 9, 'x-pending': 10 },
  });
  assert.deepEqual(s, {
    status: 'active',
    pass: 2,
    ramTotal: 7,
    ramRemaining: 6,
    ramSent: 5,
    deviceSent: 9,
    devicePending: 10,
    mbps: 8,
    expectedDowntimeMs: 41,
  });
  assert.equal(snapshotOf({ status: 'setup' }), undefined);
  // Before the link was measured (mbps 0) query-migrate reports the limit there, which is no estimate.
  const early = snapshotOf({ status: 'active', 'expected-downtime': 300, ram: { mbps: 0, 'dirty-sync-count': 1 } });
  assert.equal(early?.expectedDowntimeMs, undefined);
});

test('the fraction done: none in setup, RAM across while active, all once completed', () => {
  assert.equal(fractionDone(snap({ status: 'setup', ramRemaining: 0 })), 0);
  assert.equal(fractionDone(snap()), 0.75);
  assert.equal(fractionDone(snap({ status: 'completed', ramRemaining: 4096 })), 1);
});

test('on a terminal: one line redrawn in place, bar and numbers, no wider than the terminal', () => {
  const { chunks, out } = stream(true, 200);
  const p = new MigrationProgress(out, { everyMs: 1000, now: () => 0 });
  p.update(snap());
  p.update(snap({ ramRemaining: 8 * MiB, pass: 4 }));
  p.done();
  assert.equal(chunks.length, 3, 'every update redraws on a terminal');
  for (const c of chunks.slice(0, 2)) {
    assert.match(c, /^\r/);
    assert.ok(c.endsWith('\x1b[K'), 'clears the rest of the line');
    assert.ok(!c.includes('\n'));
  }
  const line = chunks[0]!.slice(1, -3);
  // 200 columns: a 30-cell bar, then everything.
  assert.equal(
    line,
    ` 75% ${'█'.repeat(23)}${'░'.repeat(7)} pass 3 | 812 Mbit/s | downtime ~41 ms | RAM 16.0 MiB left, 50.0 MiB sent | device 12.0 MiB sent, 2.0 MiB pending`,
  );
  assert.match(chunks[1]!, /^\r 87% .*pass 4 \|/);
  assert.equal(chunks[2], '\n', 'done() ends the line');
});

test('a narrow terminal keeps the bar and cuts the text to its width', () => {
  for (const columns of [40, 60, 100]) {
    const line = barLine(snap(), columns);
    assert.ok(line.length <= columns - 1, `${line.length} chars for ${columns} columns`);
    assert.match(line, /^ 75% █{8}░{2}/);
  }
  // Cut from the end: pass, rate and expected downtime stay in sight.
  assert.match(barLine(snap(), 60), /^ 75% █{8}░{2} pass 3 \| 812 Mbit\/s \| downtime ~41 ms \| RA…$/);
});

test('not a terminal: plain lines, at most one per everyMs, the final status always', () => {
  const { chunks, out } = stream(false);
  let now = 0;
  const p = new MigrationProgress(out, { everyMs: 500, now: () => now });
  p.update(snap({ status: 'setup', pass: 0, devicePending: null, mbps: 0, expectedDowntimeMs: undefined }));
  now = 100;
  p.update(snap()); // within 500 ms of the last line: not printed
  now = 600;
  p.update(snap({ mbps: 3.25 }));
  now = 650;
  p.update(snap({ status: 'completed', ramRemaining: 0 }));
  p.done();
  assert.deepEqual(chunks, [
    'setup pass 0: RAM 50.0 MiB sent, 16.0 MiB left, device 12.0 MiB sent, rate not measured yet, expected downtime unknown\n',
    'active pass 3: RAM 50.0 MiB sent, 16.0 MiB left, device 12.0 MiB sent, 2.0 MiB pending, 3.3 Mbit/s, expected downtime 41 ms\n',
    'completed pass 3: RAM 50.0 MiB sent, 0 B left, device 12.0 MiB sent, 2.0 MiB pending, 812 Mbit/s, completed\n',
  ]);
  for (const c of chunks) assert.ok(!c.includes('\r') && !c.includes('\x1b'), 'no terminal controls in a pipe');
});
