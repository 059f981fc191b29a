// The migration recorder on its own: what it writes for events, samples and the result (read back with
// the report's parser), its timed samples while a migration is active, and a write error reported once
// without a throw into the VMM.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { parseRecording } from '../../src/report/report-data.ts';
import { MigrationRecorder, type RecorderSource } from '../../src/vmm/migration-recorder.ts';
import type { MigrationInfo } from '../../src/vmm/qmp/commands.ts';

/** A controller's info() as it changes: status and numbers set by the test, each read counted. */
class Source implements RecorderSource {
  parameters = { downtimeLimit: 250 };
  reads = 0;
  current: MigrationInfo = {};
  onRead: (() => void) | undefined;
  info(): MigrationInfo {
    this.reads++;
    this.onRead?.();
    return structuredClone(this.current);
  }
  set(status: MigrationInfo['status'], pass: number, transferred: number, extra: Partial<MigrationInfo> = {}) {
    this.current = {
      status,
      'total-time': 10,
      ram: {
        transferred,
        remaining: 4096 * (10 - pass),
        total: 40960,
        duplicate: 0,
        normal: transferred / 4096,
        'dirty-pages-rate': 100 * pass,
        mbps: 1,
        'dirty-sync-count': pass,
      } as MigrationInfo['ram'],
      vfio: { transferred: 1000 * pass, 'x-pending': 500 },
      ...extra,
    };
  }
}

const tmp = () => mkdtempSync(join(tmpdir(), 'recorder-test-'));

test('events, samples at each migration event, and the result are written as JSON lines', async () => {
  const dir = tmp();
  try {
    const file = join(dir, 'r.jsonl');
    const src = new Source();
    // A long interval: every sample here comes from an event.
    const r = MigrationRecorder.open(file, src, { intervalMs: 60_000 });
    r.event('STOP');
    assert.equal(src.reads, 0, 'no migration: nothing sampled');
    src.set('setup', 0, 0);
    r.event('MIGRATION', { status: 'setup' });
    src.set('active', 1, 8192);
    r.event('MIGRATION_PASS', { pass: 1 });
    src.set('completed', 2, 16384, {
      downtime: 12,
      'x-switchover': { stop: 1, sync: 2, complete: 3, state: 4, finish: 2 },
    });
    const resultRead = new Promise<void>((resolve) => {
      src.onRead = resolve;
    });
    r.event('MIGRATION', { status: 'completed' });
    await resultRead;
    r.event('RESUME');
    await r.close();
    const rec = parseRecording(readFileSync(file, 'utf8'));
    assert.deepEqual(
      rec.events.map((e) => e.event),
      ['STOP', 'MIGRATION', 'MIGRATION_PASS', 'MIGRATION', 'RESUME'],
    );
    assert.deepEqual(
      rec.samples.map((s) => [s.status, s.pass, s.ram.transferred, s.device.pending]),
      [
        ['setup', 0, 0, 500],
        ['active', 1, 8192, 500],
      ],
    );
    assert.equal(rec.results.length, 1);
    const res = rec.results[0]!;
    assert.equal(res.status, 'completed');
    assert.equal(res.downtime, 12);
    assert.equal(res.downtimeLimit, 250);
    assert.deepEqual(res.switchover, { stop: 1, sync: 2, complete: 3, state: 4, finish: 2 });
    assert.equal(res.device.transferred, 2000);
    for (let i = 1; i < rec.events.length; i++) assert.ok(rec.events[i]!.t >= rec.events[i - 1]!.t, 'times ascend');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('while a migration is active it samples on its timer, without events', async () => {
  const dir = tmp();
  try {
    const file = join(dir, 'r.jsonl');
    const src = new Source();
    const r = MigrationRecorder.open(file, src, { intervalMs: 10 });
    src.set('setup', 0, 0);
    r.event('MIGRATION', { status: 'setup' });
    src.set('active', 1, 4096);
    const readsAfterEvent = src.reads;
    // Three timed samples; the 30 s bound is only a safety net for a machine that is very busy.
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no timed samples within 30 s')), 30_000);
      src.onRead = () => {
        if (src.reads >= readsAfterEvent + 3) {
          clearTimeout(t);
          resolve();
        }
      };
    });
    await r.close();
    const rec = parseRecording(readFileSync(file, 'utf8'));
    assert.ok(rec.samples.filter((s) => s.status === 'active').length >= 3);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a write error is reported once, recording stops, and the VMM side never sees a throw', async (t) => {
  if (!existsSync('/dev/full')) {
    t.skip('no /dev/full on this machine to make writes fail with ENOSPC');
    return;
  }
  const logged: string[] = [];
  const src = new Source();
  const r = MigrationRecorder.open('/dev/full', src, { intervalMs: 10, log: (l) => logged.push(l) });
  src.set('setup', 0, 0);
  r.event('MIGRATION', { status: 'setup' });
  // The error arrives from the stream asynchronously; keep the recorder busy until it has.
  for (let i = 0; i < 1000 && logged.length === 0; i++) {
    r.event('MIGRATION_PASS', { pass: i });
    await new Promise((res) => setTimeout(res, 5));
  }
  for (let i = 0; i < 50; i++) r.event('MIGRATION_PASS', { pass: i });
  await new Promise((res) => setTimeout(res, 50));
  await r.close();
  assert.equal(logged.length, 1, logged.join('\n'));
  assert.match(logged[0]!, /recording to \/dev\/full stopped: .*ENOSPC/);
});

test('a recording that cannot be opened is reported once; the VMM goes on', async () => {
  const logged: string[] = [];
  const src = new Source();
  const r = MigrationRecorder.open('/nonexistent-dir/r.jsonl', src, { log: (l) => logged.push(l) });
  for (let i = 0; i < 200 && logged.length === 0; i++) await new Promise((res) => setTimeout(res, 5));
  src.set('setup', 0, 0);
  r.event('MIGRATION', { status: 'setup' });
  await r.close();
  assert.equal(logged.length, 1);
  assert.match(logged[0]!, /recording to \/nonexistent-dir\/r\.jsonl stopped: .*ENOENT/);
});

test("a destination's samples and result carry what it received (query-migrate's x-incoming)", async () => {
  const dir = tmp();
  try {
    const file = join(dir, 'r.jsonl');
    const src = new Source();
    const r = MigrationRecorder.open(file, src, { intervalMs: 60_000 });
    const incoming = (ram: number, sections: number) => ({
      'x-incoming': { 'ram-bytes': ram, 'device-bytes': 7, sections, 'first-section': 3, 'last-section': 9 },
    });
    src.set('setup', 0, 0, { 'x-incoming': { 'ram-bytes': 0, 'device-bytes': 0, sections: 0 } });
    r.event('MIGRATION', { status: 'setup' });
    src.set('active', 0, 0, incoming(4096, 2));
    r.event('MIGRATION', { status: 'active' });
    src.set('completed', 0, 0, incoming(8192, 5));
    r.event('MIGRATION', { status: 'completed' });
    await new Promise((resolve) => setImmediate(resolve));
    await r.close();
    const rec = parseRecording(readFileSync(file, 'utf8'));
    assert.deepEqual(
      rec.samples.map((s) => s.received),
      [
        { ram: 0, device: 0, sections: 0, firstSection: null, lastSection: null },
        { ram: 4096, device: 7, sections: 2, firstSection: 3, lastSection: 9 },
      ],
      'a sample at setup and at active; the end gets the result',
    );
    assert.deepEqual(rec.results[0]!.received, { ram: 8192, device: 7, sections: 5, firstSection: 3, lastSection: 9 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
