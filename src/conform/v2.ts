// The v2 flavor's rules (Linux 5.18+ include/uapi/linux/vfio.h: VFIO_DEVICE_FEATURE MIGRATION and
// MIG_DEVICE_STATE, the core's next-step rule in drivers/vfio/vfio_main.c vfio_mig_get_next_state, the
// DMA_LOGGING_START/STOP/REPORT features; carried over vfio-user as libvfio-user's lib/migration.c does,
// with MIG_DATA_READ/WRITE for the data fd), checked from outside against any vfio-user device that answers
// DEVICE_FEATURE MIGRATION: every arc of the state table for the features offered (multi-arc requests
// included; a refused request changes nothing), data only in the states that carry it, stop-copy saved on A
// and resumed on B in other chunk sizes, then re-saved from B and compared, pre-copy when offered, device
// dirty tracking (read and clear), the error state and reset. A VMM (QEMU 8.1+'s hw/vfio/migration.c, our
// src/vmm/vfio/v2-driver.ts) relies on all of them. vfio-user has no VFIO_MIG_GET_PRECOPY_INFO: a short
// MIG_DATA_READ is the only "nothing more now", so pre-copy is checked through the data alone.

import { Errno } from '../abi/errno.ts';
import { FeatureId, MIGRATION_FLAGS_KNOWN, MigrationFlag, MigState, migStateName } from '../abi/migration-v2.ts';
import {
  decodeDmaLoggingReportReply,
  dmaLoggingBitmapSize,
  encodeDmaLoggingControl,
  encodeDmaLoggingReportRequest,
} from '../abi/vfio-user/feature-dma-logging.ts';
import { decodeMigStateData, encodeMigStateData } from '../abi/vfio-user/feature-migration.ts';
import { type V2Features, v2Path } from '../device/v2-fsm.ts';
import { VfioError } from '../errors.ts';
import type { VfioUserClient } from '../vfio-user/client.ts';
import type { GuestMemory } from '../vmm/guest/guest-memory.ts';
import {
  type Bar,
  barsEqual,
  bitmapPages,
  checkDirtyReported,
  concat,
  errorName,
  fail,
  firstDifference,
  type Rule,
  refused,
  skip,
} from './checks.ts';

const { ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P } = MigState;
const ALL_STATES = [ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P];
const PAGE = 4096n;

export interface V2Target {
  client: VfioUserClient;
  /** The MIGRATION feature's flags (STOP_COPY, P2P, PRE_COPY). */
  flags: bigint;
  bars: Bar[];
}

export interface V2Context {
  a: V2Target;
  b: V2Target;
  /** Guest memory DMA-mapped into A at IOVA 0 (one DMA region), for the dirty-tracking rules. */
  guest: GuestMemory;
  startDma(): Promise<boolean>;
  dmaWaitMs: number;
  /** A's stop-copy data, read by read, for the resume rules. */
  saved?: Uint8Array[];
  /** A device failure seen by an earlier rule (a data access failing with an errno other than a refusal). */
  failure?: { target: V2Target; what: string };
}

function features(t: V2Target): V2Features {
  return { preCopy: (t.flags & MigrationFlag.PRE_COPY) !== 0n, p2p: (t.flags & MigrationFlag.P2P) !== 0n };
}

async function state(t: V2Target): Promise<number> {
  const reply = await t.client.deviceFeature({ feature: FeatureId.MIG_DEVICE_STATE, get: true });
  return decodeMigStateData(reply.data).deviceState;
}

function setState(t: V2Target, s: number): Promise<unknown> {
  return t.client.deviceFeature({
    feature: FeatureId.MIG_DEVICE_STATE,
    set: true,
    data: encodeMigStateData({ deviceState: s }),
  });
}

async function expectState(t: V2Target, want: number, after: string): Promise<void> {
  const now = await state(t);
  if (now !== want) fail(`after ${after} the device is in ${migStateName(now)}, expected ${migStateName(want)}`);
}

/** A request the rule needs: a refusal fails the rule, naming it. */
async function arc(t: V2Target, to: number, why = ''): Promise<void> {
  const from = await state(t);
  const name = `${migStateName(from)} -> ${migStateName(to)}${why}`;
  await setState(t, to).catch((e: unknown) => fail(`${name} refused: ${errorName(e)}`));
  await expectState(t, to, name);
}

/** Back to RUNNING: a SET, or a reset from ERROR and RESUMING (then a SET if the reset left the state). */
async function toRunning(t: V2Target): Promise<void> {
  let s = await state(t);
  if (s === RUNNING) return;
  if (s === ERROR || s === RESUMING) {
    await t.client.reset();
    s = await state(t);
  }
  if (s !== RUNNING) await arc(t, RUNNING, ' (returning to RUNNING)');
}

/** Into RESUMING for a fresh resume: straight from STOP or RUNNING (a direct arc), else through RUNNING. */
async function enterResuming(t: V2Target): Promise<void> {
  const s = await state(t);
  if (s !== STOP && s !== RUNNING) await toRunning(t);
  await arc(t, RESUMING);
}

function readSize(t: V2Target): number {
  return Math.min(1 << 20, t.client.maxMigData);
}

/** A data access whose failure (other than a refusal) is remembered for the error-state rule. */
async function deviceStep<T>(ctx: V2Context, t: V2Target, what: string, p: Promise<T>): Promise<T> {
  try {
    return await p;
  } catch (err) {
    if (!(err instanceof VfioError && err.errno === Errno.EINVAL))
      ctx.failure ??= { target: t, what: `${what}: ${errorName(err)}` };
    fail(`${what} failed: ${errorName(err)}`);
  }
}

/** MIG_DATA_READ until a read returns less than asked (pre-copy: nothing more now) or 0 (stop-copy: the end). */
async function readData(ctx: V2Context, t: V2Target, until: 'short' | 'empty'): Promise<Uint8Array[]> {
  const chunks: Uint8Array[] = [];
  const want = readSize(t);
  for (let i = 0; ; i++) {
    if (i > 1_000_000) fail('the data never ends: a million reads');
    const chunk = await deviceStep(ctx, t, 'MIG_DATA_READ', t.client.migDataRead(want));
    if (chunk.byteLength > 0) chunks.push(chunk);
    if (chunk.byteLength === 0 || (until === 'short' && chunk.byteLength < want)) return chunks;
  }
}

/** MIG_DATA_WRITE in pieces of `piece` bytes; returns how many. */
async function writeData(t: V2Target, data: Uint8Array, piece: number): Promise<number> {
  let writes = 0;
  for (let at = 0; at < data.byteLength; at += piece, writes++) {
    await t.client
      .migDataWrite(data.subarray(at, at + piece))
      .catch((e: unknown) => fail(`MIG_DATA_WRITE of bytes ${at}+${piece} refused: ${errorName(e)}`));
  }
  return writes;
}

/** Pieces that fall across the source's read boundaries: about 0.61 of the largest read. */
function otherPiece(t: V2Target, chunks: readonly Uint8Array[]): number {
  const largest = Math.max(1, ...chunks.map((c) => c.byteLength));
  return Math.max(1, Math.min(t.client.maxMigData, Math.floor(largest * 0.61)));
}

async function startLogging(ctx: V2Context): Promise<void> {
  await ctx.a.client.deviceFeature({
    feature: FeatureId.DMA_LOGGING_START,
    set: true,
    data: encodeDmaLoggingControl({ pageSize: PAGE, ranges: [{ iova: 0n, length: BigInt(ctx.guest.size) }] }),
  });
}

const stopLogging = (ctx: V2Context) => ctx.a.client.deviceFeature({ feature: FeatureId.DMA_LOGGING_STOP, set: true });

async function report(ctx: V2Context): Promise<number[]> {
  const req = { iova: 0n, length: BigInt(ctx.guest.size), pageSize: PAGE };
  const reply = await ctx.a.client.deviceFeature({
    feature: FeatureId.DMA_LOGGING_REPORT,
    get: true,
    argsz: 8 + 24 + dmaLoggingBitmapSize(req),
    data: encodeDmaLoggingReportRequest(req),
  });
  const rep = decodeDmaLoggingReportReply(reply.data);
  if (rep.iova !== 0n || rep.length !== req.length) fail(`DMA_LOGGING_REPORT answered for ${rep.iova}+${rep.length}`);
  return bitmapPages(rep.bitmap, ctx.guest.pages);
}

/** DMA_LOGGING_START, or a skip when the device does not offer device dirty tracking. */
async function startLoggingOrSkip(ctx: V2Context): Promise<void> {
  try {
    await startLogging(ctx);
  } catch (err) {
    if (err instanceof VfioError && ([Errno.EINVAL, Errno.ENOTTY, Errno.ENOTSUP] as number[]).includes(err.errno))
      skip(`the device refuses DMA_LOGGING_START (${err.code}): it offers no device dirty tracking`);
    throw err;
  }
}

export const V2_RULES: readonly Rule<V2Context>[] = [
  {
    id: 'v2.feature.migration',
    rule: 'DEVICE_FEATURE MIGRATION GET answers with STOP_COPY set and no unknown flag, the same on A and B',
    async run({ a, b }) {
      if ((a.flags & MigrationFlag.STOP_COPY) === 0n) fail(`flags ${a.flags}: no STOP_COPY`);
      if ((a.flags & ~MIGRATION_FLAGS_KNOWN) !== 0n) fail(`flags ${a.flags}: unknown bits`);
      if (a.flags !== b.flags) fail(`A offers flags ${a.flags}, B ${b.flags}`);
      const names = Object.entries(MigrationFlag)
        .filter(([, v]) => (a.flags & v) !== 0n)
        .map(([k]) => k);
      return `flags ${a.flags} (${names.join(' | ')})`;
    },
  },
  {
    id: 'v2.state.initial',
    rule: 'A device starts in RUNNING',
    async run({ a, b }) {
      for (const t of [a, b]) await expectState(t, RUNNING, 'connecting');
      return 'both devices read RUNNING';
    },
  },
  {
    id: 'v2.state.invalid',
    // Values from 8 up are not sent: our codec refuses to encode them (the uAPI enum ends at 7).
    rule: 'SET of ERROR or of a state the device does not offer is refused with EINVAL; the state stays',
    async run({ a }) {
      const f = features(a);
      const bad: number[] = [ERROR];
      if (!f.p2p) bad.push(RUNNING_P2P, PRE_COPY_P2P);
      if (!f.preCopy) bad.push(PRE_COPY);
      for (const s of bad) {
        await refused(`SET ${migStateName(s)}`, setState(a, s), Errno.EINVAL);
        await expectState(a, RUNNING, `the refused SET ${migStateName(s)}`);
      }
      return `${bad.map(migStateName).join(', ')} refused, still RUNNING`;
    },
  },
  {
    id: 'v2.data.outside',
    rule: 'MIG_DATA_READ and MIG_DATA_WRITE in RUNNING are refused; the state stays (STOP: see the stop-copy rule)',
    async run({ a }) {
      const codes = [
        await refused('MIG_DATA_READ in RUNNING', a.client.migDataRead(Math.min(4096, a.client.maxMigData))),
        await refused('MIG_DATA_WRITE in RUNNING', a.client.migDataWrite(new Uint8Array(16))),
      ];
      await expectState(a, RUNNING, 'the refused accesses');
      return `refused (${[...new Set(codes)].join(', ')}), state kept`;
    },
  },
  {
    id: 'v2.save.stop-copy',
    rule: 'RUNNING -> STOP_COPY in one request (through STOP); MIG_DATA_READ yields the state until a read of 0 bytes, and again 0 after; STOP_COPY -> STOP; in STOP a read is refused',
    async run(ctx) {
      const { a } = ctx;
      await toRunning(a);
      await arc(a, STOP_COPY);
      const chunks = await readData(ctx, a, 'empty');
      if (chunks.length === 0) fail('the stop-copy data is empty');
      const after = await deviceStep(ctx, a, 'MIG_DATA_READ after the end', a.client.migDataRead(readSize(a)));
      if (after.byteLength !== 0) fail(`a read after the end returned ${after.byteLength} bytes`);
      ctx.saved = chunks;
      await arc(a, STOP);
      await refused('MIG_DATA_READ in STOP', a.client.migDataRead(Math.min(4096, a.client.maxMigData)));
      return `${chunks.reduce((n, c) => n + c.byteLength, 0)} bytes in ${chunks.length} reads of up to ${readSize(a)}`;
    },
  },
  {
    id: 'v2.resume.rechunked',
    rule: "RUNNING -> RESUMING in one request; A's data written in other chunk sizes is taken; RESUMING -> STOP accepts it",
    async run(ctx) {
      if (!ctx.saved) skip('no saved data (the stop-copy rule failed)');
      const data = concat(ctx.saved);
      const piece = otherPiece(ctx.b, ctx.saved);
      await enterResuming(ctx.b);
      const writes = await writeData(ctx.b, data, piece);
      await arc(ctx.b, STOP, ' (the device checking what it got)');
      return `${data.byteLength} bytes in ${writes} writes of up to ${piece} bytes (source: ${ctx.saved.length} reads)`;
    },
  },
  {
    id: 'v2.resume.equal',
    rule: "After the resume every readable BAR of B (in STOP) holds A's bytes at its stop point",
    async run({ a, b, saved }) {
      if (!saved) skip('no saved data (the stop-copy rule failed)');
      await expectState(a, STOP, 'the save');
      await expectState(b, STOP, 'the resume');
      return barsEqual(a, b);
    },
  },
  {
    id: 'v2.resume.resaved',
    rule: "B, saved in turn (STOP -> STOP_COPY), yields exactly A's stop-copy data",
    async run(ctx) {
      if (!ctx.saved) skip('no saved data (the stop-copy rule failed)');
      await expectState(ctx.b, STOP, 'the resume');
      await arc(ctx.b, STOP_COPY);
      const again = concat(await readData(ctx, ctx.b, 'empty'));
      await arc(ctx.b, STOP);
      const diff = firstDifference(concat(ctx.saved), again);
      if (diff !== 'equal') fail(`B's data differs from A's: ${diff}`);
      return `${again.byteLength} bytes, equal`;
    },
  },
  {
    id: 'v2.error.state',
    // Right after the data rules: the next rules return the device to RUNNING, by a reset if need be.
    rule: 'A device that failed a data access reads ERROR, refuses every SET, and a reset returns it to RUNNING',
    async run(ctx) {
      if (!ctx.failure) skip('no device failure was seen, so ERROR was never entered');
      const t = ctx.failure.target;
      const now = await state(t);
      if (now !== ERROR) fail(`after "${ctx.failure.what}" the device is in ${migStateName(now)}, not ERROR`);
      for (const s of [STOP, RUNNING]) await refused(`SET ${migStateName(s)} in ERROR`, setState(t, s));
      await t.client.reset();
      await expectState(t, RUNNING, 'a reset in ERROR');
      return `ERROR after "${ctx.failure.what}"; SETs refused; reset ran it`;
    },
  },
  {
    id: 'v2.resume.incomplete',
    rule: 'RESUMING -> STOP with half a state is refused, leaving the device in RESUMING or ERROR',
    async run(ctx) {
      if (!ctx.saved) skip('no saved data (the stop-copy rule failed)');
      const data = concat(ctx.saved);
      if (data.byteLength < 2) skip(`a ${data.byteLength}-byte state cannot be cut short`);
      const { b } = ctx;
      await enterResuming(b);
      await writeData(b, data.subarray(0, data.byteLength >> 1), b.client.maxMigData);
      const code = await refused(
        `RESUMING -> STOP with ${data.byteLength >> 1} of ${data.byteLength} bytes`,
        setState(b, STOP),
      );
      const now = await state(b);
      if (now !== RESUMING && now !== ERROR) fail(`after the refusal the device is in ${migStateName(now)}`);
      return `refused (${code}), left in ${migStateName(now)}`;
    },
  },
  {
    id: 'v2.precopy.resume',
    rule: "Where PRE_COPY is offered: RUNNING -> PRE_COPY, reads until a short one, PRE_COPY -> STOP_COPY, reads until 0; B resumes the pre-copy and stop-copy data together and its BARs equal A's",
    async run(ctx) {
      const { a, b } = ctx;
      if (!features(a).preCopy) skip('the device does not offer PRE_COPY');
      await toRunning(a);
      await arc(a, PRE_COPY);
      const pre = await readData(ctx, a, 'short');
      await arc(a, STOP_COPY);
      const stop = await readData(ctx, a, 'empty');
      await arc(a, STOP);
      const all = [...pre, ...stop];
      const data = concat(all);
      await enterResuming(b);
      await writeData(b, data, otherPiece(b, all));
      await arc(b, STOP, ` (after ${concat(pre).byteLength} pre-copy and ${concat(stop).byteLength} stop-copy bytes)`);
      const equal = await barsEqual(a, b);
      return `pre-copy ${concat(pre).byteLength} bytes, stop-copy ${concat(stop).byteLength} bytes; resumed, ${equal}`;
    },
  },
  {
    id: 'v2.dirty.control',
    rule: 'DMA logging: REPORT before START is refused; START, REPORT and STOP are accepted; REPORT after STOP is refused',
    async run(ctx) {
      await toRunning(ctx.a);
      const before = await refused('DMA_LOGGING_REPORT before START', report(ctx));
      await startLoggingOrSkip(ctx);
      await report(ctx).catch((e: unknown) => fail(`DMA_LOGGING_REPORT while logging refused: ${errorName(e)}`));
      await stopLogging(ctx).catch((e: unknown) => fail(`DMA_LOGGING_STOP refused: ${errorName(e)}`));
      const after = await refused('DMA_LOGGING_REPORT after STOP', report(ctx));
      return `REPORT refused before START (${before}) and after STOP (${after}); START, REPORT, STOP accepted`;
    },
  },
  {
    id: 'v2.dirty.reported',
    rule: 'Every guest page the device wrote by DMA while logging is reported once the device is in STOP; a report clears it (a second report of the stopped device is empty)',
    async run(ctx) {
      const { a, guest } = ctx;
      await toRunning(a);
      if (!(await ctx.startDma())) skip('the device does no DMA this check knows how to start');
      await startLoggingOrSkip(ctx);
      try {
        // STOP: no DMA, so no page changes after that.
        return await checkDirtyReported(
          guest,
          ctx.dmaWaitMs,
          'report',
          () => arc(a, STOP),
          () => report(ctx),
        );
      } finally {
        await stopLogging(ctx).catch(() => {});
        await toRunning(a).catch(() => {});
      }
    },
  },
  {
    id: 'v2.reset',
    // Not from STOP or STOP_COPY: libvfio-user serves little but region access and DEVICE_FEATURE there.
    rule: 'A device reset returns the device to RUNNING from RESUMING and from PRE_COPY (where offered)',
    async run({ a }) {
      const from = features(a).preCopy ? [RESUMING, PRE_COPY] : [RESUMING];
      for (const s of from) {
        await toRunning(a);
        await arc(a, s);
        await a.client.reset().catch((e: unknown) => fail(`reset in ${migStateName(s)} refused: ${errorName(e)}`));
        await expectState(a, RUNNING, `a reset in ${migStateName(s)}`);
      }
      return `RUNNING after a reset in ${from.map(migStateName).join(' and in ')}`;
    },
  },
  {
    id: 'v2.state.arcs',
    // Last: entering RESUMING and leaving it may wipe the device's state.
    rule: 'From every state offered, every target is accepted exactly when the next-step table has a path to it (ending there); a refused SET is EINVAL and changes nothing',
    async run({ a }) {
      const f = features(a);
      const offered = ALL_STATES.filter((s) => s !== ERROR && v2Path(RUNNING, s, f) !== undefined);
      let accepted = 0;
      let refusedCount = 0;
      for (const from of offered) {
        for (const to of ALL_STATES) {
          const path = to === ERROR ? undefined : v2Path(from, to, f);
          // Leaving RESUMING needs a whole state (the resume rules check it); the refusals from it are checked.
          if (from === RESUMING && path !== undefined && to !== RESUMING) continue;
          await toRunning(a);
          if (from !== RUNNING) await arc(a, from);
          const name = `${migStateName(from)} -> ${migStateName(to)}`;
          if (path) {
            await setState(a, to).catch((e: unknown) =>
              fail(`${name} (path ${path.map(migStateName).join(' -> ')}) refused: ${errorName(e)}`),
            );
            await expectState(a, to, name);
            accepted++;
          } else {
            await refused(name, setState(a, to), Errno.EINVAL);
            await expectState(a, from, `the refused ${name}`);
            refusedCount++;
          }
        }
      }
      await toRunning(a);
      return `${offered.length} states: ${accepted} requests accepted, ${refusedCount} refused, as the table says`;
    },
  },
];
