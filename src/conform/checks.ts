// Checks shared by every flavor's rules: how a rule fails, how a refusal is recognised, a device's readable
// BARs read whole, and which guest pages a device's DMA changed (page digests before and after). The rules
// themselves stay in their flavor's file (seed.ts, v1.ts, v2.ts).

import { Errno } from '../abi/errno.ts';
import { VfioError } from '../errors.ts';
import type { VfioUserClient } from '../vfio-user/client.ts';
import type { DirtyBitmapSink } from '../vmm/guest/dirty-bitmap.ts';
import { DIGEST_SIZE, type GuestMemory } from '../vmm/guest/guest-memory.ts';
import { RuleFailure, RuleSkipped } from './report.ts';

export interface Rule<C> {
  id: string;
  rule: string;
  run(ctx: C): Promise<string>;
}

export function fail(msg: string): never {
  throw new RuleFailure(msg);
}

export function skip(msg: string): never {
  throw new RuleSkipped(msg);
}

/** A lost connection is not a refusal. */
const GONE = new Set<number>([Errno.ECONNRESET, Errno.ENOTCONN, Errno.EPIPE]);

/** The request must be refused: with `errno` when given, with any errno otherwise. Returns the errno's name. */
export async function refused(what: string, p: Promise<unknown>, errno?: number): Promise<string> {
  try {
    await p;
  } catch (err) {
    if (err instanceof VfioError && GONE.has(err.errno))
      fail(`${what}: no answer, the connection closed (${err.code}): the device's server is gone`);
    if (err instanceof VfioError && (errno === undefined || err.errno === errno)) return err.code;
    fail(
      `${what}: refused, but with ${err instanceof VfioError ? err.code : String(err)}${errno === undefined ? '' : ` instead of errno ${errno}`}`,
    );
  }
  fail(`${what}: accepted, should have been refused`);
}

/** The error's errno name, or its message. */
export function errorName(err: unknown): string {
  return err instanceof VfioError ? `${err.code}: ${err.detail}` : err instanceof Error ? err.message : String(err);
}

export interface Bar {
  index: number;
  size: number;
}

/** The readable BARs (index and size), taken at connect: some devices answer only region accesses later. */
export async function readableBars(client: VfioUserClient, closeFd: (fd: number) => void): Promise<Bar[]> {
  const bars: Bar[] = [];
  for (let index = 0; index < 6; index++) {
    const info = await client.regionInfo(index);
    if (info.fd !== undefined) closeFd(info.fd);
    if (info.readable && info.size > 0n) bars.push({ index, size: Number(info.size) });
  }
  return bars;
}

/**
 * Every readable BAR's bytes, each read in one access when it fits one (libvfio-user's v1 sample ignores
 * the offset of a BAR1 access, so a split read would repeat the start).
 */
export async function barBytes(client: VfioUserClient, bars: readonly Bar[]): Promise<Map<number, Uint8Array>> {
  const out = new Map<number, Uint8Array>();
  for (const { index, size } of bars) {
    const bytes = new Uint8Array(size);
    for (let at = 0; at < size; at += 1 << 20) {
      bytes.set(await client.regionRead(index, at, Math.min(1 << 20, size - at)), at);
    }
    out.set(index, bytes);
  }
  return out;
}

/** Compares two devices' BARs; fails naming the ones that differ, returns what was compared. */
export async function barsEqual(
  a: { client: VfioUserClient; bars: readonly Bar[] },
  b: { client: VfioUserClient },
): Promise<string> {
  if (a.bars.length === 0) skip('the device has no readable BAR to compare');
  const x = await barBytes(a.client, a.bars);
  const y = await barBytes(b.client, a.bars);
  const differ = [...x.keys()].filter((i) => Buffer.compare(x.get(i)!, y.get(i)!) !== 0);
  if (differ.length) fail(`BAR${differ.join(', BAR')} differ`);
  return `BAR${[...x.keys()].join(', BAR')} equal (${[...x.values()].reduce((n, v) => n + v.byteLength, 0)} bytes)`;
}

export function concat(chunks: readonly Uint8Array[]): Uint8Array {
  return Buffer.concat(chunks);
}

/** Where two byte strings first differ, for a failure message. */
export function firstDifference(x: Uint8Array, y: Uint8Array): string {
  const n = Math.min(x.byteLength, y.byteLength);
  let i = 0;
  while (i < n && x[i] === y[i]) i++;
  return i === n && x.byteLength === y.byteLength
    ? 'equal'
    : `${x.byteLength} vs ${y.byteLength} bytes, first difference at byte ${i}`;
}

/** Pages whose digests differ between two `pageDigests()` snapshots. */
export function changedPages(before: Uint8Array, after: Uint8Array): number[] {
  const out: number[] = [];
  const d = DIGEST_SIZE;
  for (let p = 0; p * d < before.byteLength; p++) {
    if (Buffer.compare(before.subarray(p * d, p * d + d), after.subarray(p * d, p * d + d)) !== 0) out.push(p);
  }
  return out;
}

/**
 * Waits until guest memory differs from `before` (the device wrote a page); `ms` is a safety net on a busy
 * machine, after which the caller skips its rule saying the device wrote nothing.
 */
export async function waitForWrite(guest: GuestMemory, before: Uint8Array, ms: number): Promise<boolean> {
  const deadline = performance.now() + ms;
  for (;;) {
    if (Buffer.compare(before, guest.pageDigests()) !== 0) return true;
    if (performance.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A bitmap sink collecting page numbers. */
export function collectPages(into: Set<number>): DirtyBitmapSink {
  return (first, count, bitmap) => {
    for (let i = 0; i < count; i++) {
      if (bitmap === 'all' || (bitmap[i >>> 3]! >>> (i & 7)) & 1) into.add(Number(first) + i);
    }
  };
}

/** Bit n (byte n/8, bit n%8) of a bitmap set: page n of the range. */
export function bitmapPages(bitmap: Uint8Array, pages: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < pages; i++) if ((bitmap[i >>> 3]! >>> (i & 7)) & 1) out.push(i);
  return out;
}

/**
 * The dirty-tracking rule v1 and v2 share: once the device wrote a guest page, `stop` stops it (no page
 * changes after that); every page it changed must be in the first `query`, and a second query of the
 * stopped device must be empty (reading clears). `what` names the query in the messages.
 */
export async function checkDirtyReported(
  guest: GuestMemory,
  dmaWaitMs: number,
  what: string,
  stop: () => Promise<unknown>,
  query: () => Promise<number[]>,
): Promise<string> {
  const before = guest.pageDigests();
  if (!(await waitForWrite(guest, before, dmaWaitMs))) skip(`the device wrote no guest page within ${dmaWaitMs} ms`);
  await stop();
  const changed = changedPages(before, guest.pageDigests());
  const reported = new Set(await query());
  const missed = changed.filter((p) => !reported.has(p));
  if (missed.length) fail(`${missed.length} of ${changed.length} written pages not reported (first: pfn ${missed[0]})`);
  const again = await query();
  if (again.length)
    fail(
      `a second ${what} of the stopped device reports ${again.length} pages (first: pfn ${again[0]}): reading did not clear`,
    );
  return `${changed.length} written pages, all among the ${reported.size} reported; the second ${what} reported none`;
}
