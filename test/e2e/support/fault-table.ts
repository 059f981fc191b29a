// The fault tests as tables (test/e2e/faults-*.test.ts): each fault is a row saying what to inject and
// where (`inject`), and what must hold after (`expect`); `runFault` does the rest the same way for every
// row, as QEMU's migration-test does for its cases: attempt, snapshot, measure, report, assert, retry.
// The measured figures go out first, in the row's FAULT-MATRIX line (docs/reliability.md is written from
// them by `npm run reliability`), and are asserted after, so a failing run still reports what it saw:
// - pages_lost: guest pages whose digest differs from the snapshot taken before the fault, on the side
//   that runs the VM afterwards (the source before the commit point, the destination after it);
// - device_changed: devices whose state digest differs from that snapshot; device_state their state;
// - status, source, destination: the migration's end and each side's run state;
// - retry_status, retry_pages_lost: a second migration to a fresh destination, compared page by page.

import assert from 'node:assert/strict';
import { basename } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { HostOptions, LocalPair } from '../../../src/harness/local-hosts.ts';
import {
  DEVICE_RUNNING,
  ended,
  type FaultPairOptions,
  type Info,
  pagesDiffering,
  type Snapshot,
  snapshot,
  startFaultPair,
} from './faults.ts';
import { TcpProxy } from './tcp-proxy.ts';

/** device_state SAVING|RUNNING (pre-copy): a device whose return to running was refused. */
const DEVICE_PRE_COPY = 3;

export interface FaultContext {
  pair: LocalPair;
  /** The TCP proxy between the VMMs, for rows with `proxy: true`. */
  proxy: TcpProxy | null;
  /** Where to migrate: the proxy when there is one, else the destination. */
  uri: string;
  /** Every process's stderr lines (prefixed src-vmm:, dst-device: …). */
  lines: string[];
  /** The source before the attempt. */
  before: Snapshot;
  /** Runs `fn` when the row ends, pass or fail (e.g. closing a proxy the row started). */
  defer(fn: () => Promise<void> | void): void;
}

export interface FaultExpect {
  /** How the source's migration ends. */
  status: 'failed' | 'cancelled' | 'completed';
  /** The source's error-desc. */
  error?: RegExp;
  /** The source's run state afterwards (default: running). */
  source?: 'running' | 'postmigrate';
  /** Where the guest runs afterwards, compared with the snapshot (default: the source). */
  runsOn?: 'source' | 'destination';
  /** The device afterwards (default: running, its state as in the snapshot). */
  device?: 'running' | 'left-saving' | 'lost';
  /** The destination afterwards (default: `not-running`: its migration failed, its VM never started;
   * `refused`: also still waiting in inmigrate, refusing `cont`, for this reason). */
  destination?: 'not-running' | 'runs' | { refused: RegExp };
  /** A second migration to a fresh destination completes and carries the snapshot (default true). */
  retry?: boolean;
}

export interface FaultRow {
  /** The test's name (docs/reliability.md cites it). */
  name: string;
  fault: string;
  phase: string;
  /** The pair a row of its own starts (ignored on a bench). */
  pair?: FaultPairOptions;
  /** Put a TcpProxy between the VMMs. */
  proxy?: boolean;
  /** Options for the fresh destination of this row's attempt (on a bench). */
  destination?: HostOptions;
  /** A bench of the row's own (e.g. a source device server with its own faults), stopped after it. */
  bench?: () => Promise<FaultBench>;
  /** Starts the migration and injects the fault; may return a snapshot taken during the attempt, to be
   * used instead of the one taken before it (a guest that had to write pages to reach the phase). */
  inject(ctx: FaultContext): Promise<Snapshot | undefined>;
  /** Checks only this row has, on the migration's end (and undoing what must be undone before the
   * common checks, e.g. SIGCONT); may return more figures for its FAULT-MATRIX line. */
  after?(ctx: FaultContext, info: Info): Promise<Record<string, string | number> | undefined>;
  expect: FaultExpect;
}

/**
 * A source that serves several rows in a row (starting four processes per fault would cost more than
 * these tests' budget): each attempt after the first goes to a fresh destination, and every attempt must
 * leave the source as `start`.
 */
export interface FaultBench {
  pair: LocalPair;
  lines: string[];
  start: Snapshot;
  attempts: number;
}

type RunState = { status: string; running: boolean };

interface Measured {
  info: Info;
  source: string;
  destination: string;
  destinationInfo: Info | null;
  /** The error `cont` drew on a destination that refused the stream ('' if it started). */
  contRefused?: string;
  now: Snapshot;
  pagesLost: number;
  deviceChanged: number;
  retry: RetryResult | null;
  extra: Record<string, string | number>;
}

export interface RetryResult {
  status: string;
  error: string;
  pagesLost: number;
  ramEqual: boolean;
  devicesEqual: boolean;
}

function gone(p: { child: { exitCode: number | null; signalCode: string | null } }): boolean {
  return p.child.exitCode !== null || p.child.signalCode !== null;
}

/**
 * A table of fault rows as a describe block, one test per row: each row on a pair of its own (two at a
 * time), or all on one `bench` in order; `last` is a last test on the bench (e.g. the retry after all).
 */
export function faultTable(
  title: string,
  rows: FaultRow[],
  o: { bench?: () => Promise<FaultBench>; last?: { name: string; run(bench: FaultBench): Promise<void> } } = {},
): void {
  describe(title, { concurrency: o.bench ? 1 : 2 }, () => {
    let bench: FaultBench | undefined;
    if (o.bench) {
      before(async () => {
        bench = await o.bench!();
      });
      after(() => bench?.pair.stop());
    }
    for (const row of rows) test(row.name, () => runFault(row, bench));
    const last = o.last;
    if (last) test(last.name, () => last.run(bench!));
  });
}

/** Runs one row: on its own pair, or on `bench`'s source. */
export async function runFault(row: FaultRow, shared?: FaultBench): Promise<void> {
  if (row.bench) {
    const own = await row.bench();
    try {
      return await runFault({ ...row, bench: undefined }, own);
    } finally {
      await own.pair.stop();
    }
  }
  const bench = shared;
  const lines = bench?.lines ?? [];
  const pair = bench?.pair ?? (await startFaultPair({ ...row.pair, lines }));
  const deferred: (() => Promise<void> | void)[] = [];
  try {
    if (bench && bench.attempts++ > 0) await pair.freshDestination(row.destination);
    const proxy = row.proxy ? await TcpProxy.start(pair.uri) : null;
    if (proxy) deferred.push(() => proxy.close());
    const before = bench?.start ?? (await snapshot(pair.src));
    const ctx: FaultContext = {
      pair,
      proxy,
      uri: proxy?.uri ?? pair.uri,
      lines,
      before,
      defer: (fn) => deferred.push(fn),
    };
    ctx.before = (await row.inject(ctx)) ?? before;
    const m = await measure(ctx, row);
    report(row, m);
    check(row.expect, ctx.before, m);
  } finally {
    for (const fn of deferred.reverse()) await fn();
    if (!bench) await pair.stop();
  }
}

async function measure(ctx: FaultContext, row: FaultRow): Promise<Measured> {
  const { pair } = ctx;
  const info = await ended(pair.src);
  const extra = (await row.after?.(ctx, info)) ?? {};
  const source = (await pair.src.execute<RunState>('query-status')).status;
  let destination = 'gone';
  let destinationInfo: Info | null = null;
  let contRefused: string | undefined;
  if (!gone(pair.procs.dstVmm)) {
    destinationInfo = await ended(pair.dst);
    destination = (await pair.dst.execute<RunState>('query-status')).status;
    // A destination that refused the stream must not start on `cont` either (asked before the retry
    // replaces it with a fresh one).
    if (typeof row.expect.destination === 'object' && destination === 'inmigrate')
      contRefused = await pair.dst.execute('cont').then(
        () => '',
        (err: Error) => err.message,
      );
  }
  const runsOn = row.expect.runsOn === 'destination' ? pair.dst : pair.src;
  const now = await snapshot(runsOn);
  const pagesLost = pagesDiffering(ctx.before, now);
  const deviceChanged = now.devices.filter((d, i) => d !== ctx.before.devices[i]).length;
  const retry = row.expect.retry === false ? null : await retryToFresh(pair, ctx.before);
  return { info, source, destination, destinationInfo, contRefused, now, pagesLost, deviceChanged, retry, extra };
}

/** One machine-readable line per injected fault: what was measured, before anything is asserted. */
function report(row: FaultRow, m: Measured): void {
  // The test file that proved the cell (node --test runs each file as its own process).
  const file = basename(process.argv[1] ?? '');
  const fields: Record<string, string | number> = {
    fault: row.fault,
    phase: row.phase,
    status: m.info.status,
    source: m.source,
    destination: m.destination,
    device_state: m.now.deviceStates.map((s) => s ?? 'lost').join('+'),
    pages_lost: m.pagesLost,
    device_changed: m.deviceChanged,
    ...(m.retry ? { retry_status: m.retry.status, retry_pages_lost: m.retry.pagesLost } : {}),
    ...m.extra,
    test: file,
  };
  console.log(
    `FAULT-MATRIX ${Object.entries(fields)
      .map(([k, v]) => `${k}=${v}`)
      .join(' ')}`,
  );
}

function check(e: FaultExpect, before: Snapshot, m: Measured): void {
  assert.equal(m.info.status, e.status, `the migration ended ${m.info.status}: ${m.info['error-desc'] ?? ''}`);
  if (e.error) assert.match(m.info['error-desc'] ?? '', e.error);
  assert.equal(m.source, e.source ?? 'running', 'the source run state');
  assert.equal(m.pagesLost, 0, `${m.pagesLost} guest pages differ from the snapshot`);
  assert.equal(m.now.ram, before.ram, 'the guest RAM digest equals the snapshot');
  const device = e.device ?? 'running';
  if (device === 'lost') {
    assert.deepEqual(m.now.deviceStates, [null], 'the device is reported lost');
    assert.deepEqual(m.now.devices, [null], 'a lost device has no state to digest');
  } else {
    assert.equal(m.deviceChanged, 0, 'the device state equals the snapshot');
    const state = device === 'running' ? DEVICE_RUNNING : DEVICE_PRE_COPY;
    assert.deepEqual(
      m.now.deviceStates,
      before.deviceStates.map(() => state),
      `device_state ${device}`,
    );
  }
  const dst = e.destination ?? 'not-running';
  if (dst === 'runs') {
    assert.equal(m.destinationInfo?.status, 'completed');
    assert.equal(m.destination, 'running', 'the destination runs the VM');
  } else if (m.destination !== 'gone') {
    assert.equal(m.destinationInfo?.status, 'failed', 'the destination gave up on the migration');
    assert.notEqual(m.destination, 'running', 'the destination VM never runs');
    if (typeof dst === 'object') {
      assert.match(m.destinationInfo?.['error-desc'] ?? '', dst.refused);
      // Never a half-loaded VM: still waiting for its migration, stopped, and it will not start.
      assert.equal(m.destination, 'inmigrate');
      assert.match(m.contRefused ?? '', /not finalized/, 'cont is refused');
    }
  }
  if (m.retry) checkRetry(m.retry);
}

/**
 * A second migration, unthrottled, to a fresh destination (new device server and VMM), through `via`
 * when given: measured (its end, and the destination's pages and device against `expect`), not asserted.
 */
export async function retryToFresh(
  pair: LocalPair,
  expect: Snapshot,
  o: { destination?: HostOptions; via?: (uri: string) => Promise<string> } = {},
): Promise<RetryResult> {
  await pair.freshDestination(o.destination);
  await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 0, 'downtime-limit': 300 });
  await pair.src.execute('migrate', { uri: o.via ? await o.via(pair.uri) : pair.uri });
  const info = await ended(pair.src);
  const dstInfo = await ended(pair.dst);
  const got = await snapshot(pair.dst);
  return {
    status: info.status === 'completed' ? dstInfo.status : info.status,
    error: info['error-desc'] ?? dstInfo['error-desc'] ?? '',
    pagesLost: pagesDiffering(expect, got),
    ramEqual: got.ram === expect.ram,
    devicesEqual: got.devices.join() === expect.devices.join(),
  };
}

export function checkRetry(r: RetryResult): void {
  assert.equal(r.status, 'completed', `the retry ended ${r.status}: ${r.error}`);
  assert.equal(r.pagesLost, 0, `${r.pagesLost} pages differ at the retry's destination`);
  assert.ok(r.ramEqual, "the retry's destination has the guest as it was before the fault");
  assert.ok(r.devicesEqual, "the retry's destination has the device state from before the fault");
}
