// The recording's parser and the report's data: what each plot gets from a recording, and the clear
// errors for what is not a recording.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { VfioError } from '../../src/errors.ts';
import { parseRecording, reportData } from '../../src/report/report-data.ts';

const MiB = 1024 * 1024;

function sample(
  t: number,
  status: string,
  pass: number,
  ramSent: number,
  remaining: number,
  devSent: number,
  pending: number | null,
  dirtyRate = 1000,
) {
  return {
    kind: 'sample',
    t,
    status,
    pass,
    ram: { transferred: ramSent, remaining, total: 64 * MiB, dirtyRate, mbps: 0 },
    device: { transferred: devSent, pending },
    expectedDowntime: status === 'active' ? 40 : null,
  };
}

const lines = [
  { kind: 'start', version: 1, at: '2026-12-04T20:00:00.000Z', intervalMs: 100 },
  { kind: 'event', t: 5, event: 'RESUME' },
  { kind: 'event', t: 10, event: 'MIGRATION', data: { status: 'setup' } },
  sample(10, 'setup', 0, 0, 0, 0, null),
  { kind: 'event', t: 20, event: 'MIGRATION_PASS', data: { pass: 1 } },
  sample(20, 'active', 1, 0, 64 * MiB, 0, 8 * MiB),
  sample(520, 'active', 1, 40 * MiB, 24 * MiB, 2 * MiB, 6 * MiB),
  { kind: 'event', t: 1010, event: 'MIGRATION_PASS', data: { pass: 2 } },
  sample(1010, 'active', 2, 64 * MiB, 4 * MiB, 4 * MiB, 4 * MiB, 2000),
  sample(1020, 'active', 2, 64 * MiB + 4096, 4 * MiB, 4 * MiB, 4 * MiB, 2000),
  { kind: 'event', t: 1510, event: 'MIGRATION_PASS', data: { pass: 3 } },
  sample(1510, 'device', 3, 68 * MiB, 1 * MiB, 8 * MiB, 1 * MiB, 90000),
  { kind: 'event', t: 1600, event: 'MIGRATION', data: { status: 'completed' } },
  {
    kind: 'result',
    t: 1601,
    status: 'completed',
    totalTime: 1590,
    setupTime: 10,
    downtime: 62,
    downtimeLimit: 300,
    switchover: { expected: 45, stop: 1, sync: 2, complete: 50, state: 3, finish: 6 },
    passes: 3,
    ram: {
      transferred: 69 * MiB,
      total: 64 * MiB,
      normal: 1,
      duplicate: 2,
      precopyBytes: 68 * MiB,
      downtimeBytes: MiB,
    },
    device: { transferred: 9 * MiB },
    droppedSamples: 0,
  },
];
const text = `${lines.map((l) => JSON.stringify(l)).join('\n')}\n`;

test('a recording is parsed into its events, samples and result', () => {
  const rec = parseRecording(text);
  assert.equal(rec.startedAt, '2026-12-04T20:00:00.000Z');
  assert.equal(rec.events.length, 6);
  assert.equal(rec.samples.length, 6);
  assert.equal(rec.results.length, 1);
});

test('throughput is computed over windows of at least the given length, RAM and device apart', () => {
  const d = reportData(parseRecording(text), undefined, 250);
  // Windows: 10 -> 520 (510 ms), 520 -> 1010 (490 ms), 1010 -> 1510 (the 1020 sample is too close), 1510 is last.
  const ram = d.throughput.filter((p) => p.part === 'RAM');
  assert.deepEqual(
    ram.map((p) => p.t),
    [0.51, 1, 1.5],
  );
  assert.ok(Math.abs(ram[0]!.mbPerS - (40 * MiB) / 0.51 / 1e6) < 1e-9);
  const dev = d.throughput.filter((p) => p.part === 'device');
  assert.ok(Math.abs(dev[2]!.mbPerS - (4 * MiB) / 0.5 / 1e6) < 1e-9);
});

test('each pass: RAM dirty when it began, the guest dirty rate (not during the switch-over), RAM sent in it', () => {
  const d = reportData(parseRecording(text));
  assert.deepEqual(d.passes, [
    { pass: 1, remainingBytes: 64 * MiB, dirtyPagesPerS: 1000, sentBytes: 64 * MiB },
    { pass: 2, remainingBytes: 4 * MiB, dirtyPagesPerS: 2000, sentBytes: 4 * MiB },
    // The last pass ends with the result's total, its stop-and-copy included.
    { pass: 3, remainingBytes: 1 * MiB, dirtyPagesPerS: null, sentBytes: 1 * MiB },
  ]);
});

test('device series: sent at every sample and at the result, pending only once counted', () => {
  const d = reportData(parseRecording(text));
  assert.equal(d.device.filter((p) => p.series === 'sent').length, 7);
  assert.deepEqual(
    d.device.filter((p) => p.series === 'pending').map((p) => p.bytes),
    [8 * MiB, 6 * MiB, 4 * MiB, 4 * MiB, 1 * MiB],
  );
  assert.deepEqual(d.device.at(-1), { t: 1.591, series: 'sent', bytes: 9 * MiB });
});

test('the downtime is broken down in switch-over order, with its limit and the expected downtime', () => {
  const d = reportData(parseRecording(text), { ok: true, checks: [{ name: 'guest RAM', ok: true, detail: 'equal' }] });
  assert.deepEqual(
    d.downtime.map((p) => p.ms),
    [1, 2, 50, 3, 6],
  );
  assert.equal(d.downtimeMs, 62);
  assert.equal(d.downtimeLimitMs, 300);
  assert.equal(d.expectedDowntimeMs, 45);
  assert.equal(d.status, 'completed');
  assert.equal(d.summary.passes, 3);
  assert.equal(d.verification?.ok, true);
});

test('with several migrations recorded, the report shows the last one', () => {
  const failed = [
    { kind: 'start', version: 1, at: 'x', intervalMs: 100 },
    { kind: 'event', t: 1, event: 'MIGRATION', data: { status: 'setup' } },
    sample(1, 'setup', 0, 0, 0, 0, null),
    sample(2, 'active', 1, 10, 10, 0, 0),
    {
      kind: 'result',
      t: 3,
      status: 'failed',
      totalTime: 2,
      setupTime: 1,
      downtime: null,
      downtimeLimit: 300,
      switchover: null,
      passes: 1,
      ram: { transferred: 10, total: 64 * MiB, normal: 0, duplicate: 0, precopyBytes: 10, downtimeBytes: 0 },
      device: { transferred: 0 },
      droppedSamples: 0,
      error: 'link down',
    },
  ];
  const both = `${failed.map((l) => JSON.stringify(l)).join('\n')}\n${lines
    .slice(1)
    .map((l) => JSON.stringify({ ...l, t: (l as { t: number }).t + 100 }))
    .join('\n')}`;
  const d = reportData(parseRecording(both));
  assert.equal(d.status, 'completed');
  assert.equal(d.summary.samples, 6);
  const onlyFailed = reportData(parseRecording(failed.map((l) => JSON.stringify(l)).join('\n')));
  assert.equal(onlyFailed.status, 'failed');
  assert.equal(onlyFailed.summary.error, 'link down');
  assert.deepEqual(onlyFailed.downtime, []);
});

test('what is not a recording is refused with EINVAL naming the line', () => {
  const bad: [string, RegExp][] = [
    ['', /empty/],
    ['{"kind":"sample","t":1}', /line 1: not a migration recording/],
    ['{"kind":"start","version":2}', /version 2/],
    [`${JSON.stringify(lines[0])}\nnot json\n{}`, /line 2 is not JSON/],
    [`${JSON.stringify(lines[0])}\n{"kind":"bogus","t":1}`, /line 2: unknown kind "bogus"/],
    [`${JSON.stringify(lines[0])}\n{"kind":"sample","t":1}`, /line 2: a sample without/],
    [`${JSON.stringify(lines[0])}\n{"kind":"event"}`, /line 2: no time/],
  ];
  for (const [input, message] of bad) {
    assert.throws(
      () => parseRecording(input),
      (err: unknown) => err instanceof VfioError && err.errno === 22 && message.test(err.message),
      input,
    );
  }
  // A last line cut short (a VMM killed mid-write) leaves the rest readable.
  const cut = `${text}{"kind":"sam`;
  assert.equal(parseRecording(cut).samples.length, 6);
});

// A destination's recording: samples and result carry `received` (its query-migrate x-incoming).
function destinationLines(status: 'completed' | 'failed', resumed: boolean) {
  const rec = (
    t: number,
    ram: number,
    device: number,
    sections: number,
    first: number | null,
    last: number | null,
  ) => ({
    kind: 'sample',
    t,
    status: t < 80 ? 'setup' : 'active',
    pass: 0,
    ram: { transferred: 0, remaining: 0, total: 64 * MiB, dirtyRate: 0, mbps: 0 },
    device: { transferred: device, pending: null },
    expectedDowntime: null,
    received: { ram, device, sections, firstSection: first, lastSection: last },
  });
  // Times in `received` count from the incoming migration's start (the setup event at t = 0).
  const received = { ram: 64 * MiB, device: 8 * MiB, sections: 30, firstSection: 90, lastSection: 1990 };
  return [
    { kind: 'start', version: 1, at: '2026-12-04T21:00:00.000Z', intervalMs: 100 },
    { kind: 'event', t: 0, event: 'MIGRATION', data: { status: 'setup' } },
    rec(0, 0, 0, 0, null, null),
    { kind: 'event', t: 80, event: 'MIGRATION', data: { status: 'active' } },
    rec(1000, 32 * MiB, 0, 14, 90, 990),
    rec(2000, 64 * MiB, 8 * MiB, 30, 90, 1990),
    ...(resumed ? [{ kind: 'event', t: 2008, event: 'RESUME' }] : []),
    {
      kind: 'result',
      t: 2012,
      status,
      totalTime: 2010,
      setupTime: 0,
      downtime: 0,
      downtimeLimit: 300,
      switchover: null,
      passes: 0,
      ram: { transferred: 0, total: 64 * MiB, normal: 0, duplicate: 0, precopyBytes: 0, downtimeBytes: 0 },
      device: { transferred: 8 * MiB },
      droppedSamples: 0,
      ...(status === 'failed' ? { error: 'RAM incomplete: 3 of 16384 pages never arrived' } : {}),
      received,
    },
  ]
    .map((l) => JSON.stringify(l))
    .join('\n');
}

test("a destination's recording: bytes received over time, its timeline, its own checks", () => {
  const d = reportData(parseRecording(destinationLines('completed', true)), undefined, 250);
  assert.equal(d.role, 'destination');
  // RAM received per second between samples (MB = 10^6): 32 MiB in each second; the device's 8 MiB in the second.
  assert.deepEqual(
    d.throughput.filter((p) => p.part === 'RAM').map((p) => [p.t, Math.round(p.mbPerS * 1e6)]),
    [
      [1, 32 * MiB],
      [2, 32 * MiB],
    ],
  );
  assert.deepEqual(
    d.throughput.filter((p) => p.part === 'device').map((p) => Math.round(p.mbPerS * 1e6)),
    [0, 8 * MiB],
  );
  assert.deepEqual(
    d.ramReceived.map((p) => p.bytes),
    [0, 32 * MiB, 64 * MiB, 64 * MiB],
  );
  assert.ok(d.device.every((p) => p.series === 'received'));
  assert.equal(d.device.at(-1)!.bytes, 8 * MiB);
  assert.deepEqual(d.passes, [], 'a destination sees no passes');
  assert.deepEqual(d.downtime, []);
  // 90 ms waiting, 1900 ms of stream, 2010 - 1990 = 20 ms from the last section to the start.
  assert.deepEqual(
    d.timeline.map((p) => p.ms),
    [90, 1900, 20],
  );
  assert.equal(d.summary.ramSentBytes, 64 * MiB);
  assert.equal(d.summary.sections, 30);
  assert.deepEqual(
    d.verification?.checks.map((c) => [c.name, c.ok, c.detail]),
    [
      ['stream', true, '30 sections loaded, through EOF'],
      ['guest RAM', true, 'every page arrived (checked before READY)'],
      ['devices', true, "each device's state loaded and accepted"],
      ['VM', true, 'started here after GO'],
    ],
  );
  const paused = reportData(parseRecording(destinationLines('completed', false)));
  assert.equal(paused.verification?.checks.at(-1)?.detail, 'loaded, paused until cont (-S)');
});

test("a failed incoming migration: the destination's checks fail with its error", () => {
  const d = reportData(parseRecording(destinationLines('failed', false)));
  assert.equal(d.status, 'failed');
  assert.equal(d.verification?.ok, false);
  assert.ok(d.verification?.checks.every((c) => !c.ok && /3 of 16384 pages never arrived/.test(c.detail)));
});
