// The v1 flavor's rules (the Linux 5.8 migration region: include/uapi/linux/vfio.h of Linux 5.8-5.17,
// struct vfio_device_migration_info, and vfio-user's DIRTY_PAGES command of libvfio-user's v1 era),
// checked from outside against any vfio-user device that offers a region of TYPE 3 / SUBTYPE 1: the
// header's access rules, the VALID rule, the state sequences the header draws, the save and resume loops
// (saved on A, resumed on B in other chunk sizes, then re-saved from B and compared), dirty pages
// (START/GET_BITMAP read and clear/STOP), the error state and reset. A VMM (QEMU 5.2-7.2's
// hw/vfio/migration.c, our src/vmm/vfio/v1-driver.ts) relies on all of them.
//
// Every access is trapped (REGION_READ/WRITE), never mmapped, and a data chunk is read and written in one
// access: the split every device accepts (libvfio-user's v1 sample wants exactly that).

import { Errno } from '../abi/errno.ts';
import { fieldNamed, readField, writeField } from '../abi/fields.ts';
import { DeviceState, deviceStateName, V1_MIGRATION_INFO, type V1Field, v1StateIsError } from '../abi/migration.ts';
import { VfioError } from '../errors.ts';
import type { VfioUserClient } from '../vfio-user/client.ts';
import type { MigrationRegionFound } from '../vfio-user/region-port.ts';
import type { GuestMemory } from '../vmm/guest/guest-memory.ts';
import {
  type Bar,
  barsEqual,
  bitmapPages,
  checkDirtyReported,
  concat,
  errorName,
  fail,
  type Rule,
  refused,
  skip,
} from './checks.ts';

const { STOPPED, RUNNING, SAVING, RESUMING } = DeviceState;
const PRE_COPY = SAVING | RUNNING;
const PAGE = 4096n;

export interface V1Target {
  client: VfioUserClient;
  found: MigrationRegionFound;
  bars: Bar[];
}

export interface V1Context {
  a: V1Target;
  b: V1Target;
  /** Guest memory DMA-mapped into A at IOVA 0 (one DMA region), for the dirty-page rules. */
  guest: GuestMemory;
  startDma(): Promise<boolean>;
  dmaWaitMs: number;
  /** A's stop-and-copy data, chunk by chunk, for the resume rules. */
  saved?: Uint8Array[];
  /** B took the whole of A's data (it is still resuming). */
  loaded?: boolean;
  /** A device failure seen by an earlier rule (an access failing with an errno other than a refusal). */
  failure?: { target: V1Target; what: string };
}

async function read(t: V1Target, name: V1Field): Promise<bigint> {
  const f = fieldNamed(V1_MIGRATION_INFO, name);
  return readField(await t.client.regionRead(t.found.index, f.offset, f.width), 0, f.width);
}

async function write(t: V1Target, name: V1Field, value: bigint): Promise<void> {
  const f = fieldNamed(V1_MIGRATION_INFO, name);
  const buf = new Uint8Array(f.width);
  writeField(buf, 0, f.width, value);
  await t.client.regionWrite(t.found.index, f.offset, buf);
}

const state = async (t: V1Target) => Number(await read(t, 'device_state'));
const setState = (t: V1Target, s: number) => write(t, 'device_state', BigInt(s >>> 0));

async function expectState(t: V1Target, want: number, after: string): Promise<void> {
  const now = await state(t);
  if ((now & DeviceState.MASK) !== want)
    fail(`after ${after} device_state is ${deviceStateName(now)} (${now}), expected ${deviceStateName(want)}`);
}

/** An arc the rule needs: a refusal fails the rule, naming the arc. */
async function arc(t: V1Target, to: number, why = ''): Promise<void> {
  const from = await state(t);
  await setState(t, to).catch((e: unknown) =>
    fail(`${deviceStateName(from)} -> ${deviceStateName(to)}${why} refused: ${errorName(e)}`),
  );
  await expectState(t, to, `${deviceStateName(from)} -> ${deviceStateName(to)}`);
}

/** Back to running: a state write, or a reset from resuming and from the error state. */
async function toRunning(t: V1Target): Promise<void> {
  const s = (await state(t)) & DeviceState.MASK;
  if (s === RUNNING) return;
  if (s === RESUMING || v1StateIsError(s)) await t.client.reset();
  else await setState(t, RUNNING);
  await expectState(t, RUNNING, s === RESUMING || v1StateIsError(s) ? 'a reset' : 'returning to running');
}

/**
 * The save loop of the 5.8 header: pending_bytes, then data_offset (the device prepares a chunk),
 * data_size, the data; the next pending_bytes read releases the chunk; the save ends at pending_bytes 0.
 */
async function saveAll(ctx: V1Context, t: V1Target): Promise<Uint8Array[]> {
  const chunks: Uint8Array[] = [];
  let empty = 0;
  for (let i = 0; ; i++) {
    if (i > 1_000_000) fail('the save never ends: a million chunks and pending_bytes is still not 0');
    const pending = await deviceStep(ctx, t, 'reading pending_bytes', read(t, 'pending_bytes'));
    if (pending === 0n) return chunks;
    const offset = await deviceStep(ctx, t, 'reading data_offset', read(t, 'data_offset'));
    const size = await deviceStep(ctx, t, 'reading data_size', read(t, 'data_size'));
    const again = await read(t, 'data_size');
    if (again !== size)
      fail(`data_size read twice gave ${size} then ${again}: it must not change before the data is read`);
    if (offset < BigInt(V1_MIGRATION_INFO.size) || offset + size > t.found.info.size)
      fail(`a chunk of ${size} bytes at ${offset} lies outside the data section of a ${t.found.info.size}-byte region`);
    if (size === 0n) {
      if (++empty > 1) fail(`${pending} bytes pending but two empty chunks in a row`);
      continue;
    }
    empty = 0;
    chunks.push(await deviceStep(ctx, t, 'reading data', t.client.regionRead(t.found.index, offset, Number(size))));
  }
}

/** A device access whose failure (other than a refusal) is remembered for the error-state rule. */
async function deviceStep<T>(ctx: V1Context, t: V1Target, what: string, p: Promise<T>): Promise<T> {
  try {
    return await p;
  } catch (err) {
    // A refusal (EINVAL) is the device keeping a rule, not failing; anything else puts it in the error state.
    if (!(err instanceof VfioError && err.errno === Errno.EINVAL))
      ctx.failure ??= { target: t, what: `${what}: ${errorName(err)}` };
    fail(`${what} failed: ${errorName(err)}`);
  }
}

/** The resume loop: data_offset, the bytes in one access, then data_size; pieces of `piece` bytes. */
async function load(t: V1Target, data: Uint8Array, piece: number): Promise<number> {
  let writes = 0;
  for (let at = 0; at < data.byteLength; writes++) {
    const offset = await read(t, 'data_offset');
    const room = Number(t.found.info.size - offset);
    if (offset < BigInt(V1_MIGRATION_INFO.size) || room <= 0)
      fail(`data_offset ${offset} leaves no room in the region`);
    const n = Math.min(piece, room, data.byteLength - at);
    await t.client.regionWrite(t.found.index, offset, data.subarray(at, at + n));
    await write(t, 'data_size', BigInt(n));
    at += n;
  }
  return writes;
}

async function getBitmap(ctx: V1Context): Promise<number[]> {
  const size = BigInt(ctx.guest.size);
  const bitmap = await ctx.a.client.dirtyPages('get-bitmap', { iova: 0n, size, pgsize: PAGE });
  return bitmapPages(bitmap, ctx.guest.pages);
}

export const V1_RULES: readonly Rule<V1Context>[] = [
  {
    id: 'v1.region.found',
    rule: 'The migration region is a device-specific region (index >= 9) of TYPE 3 / SUBTYPE 1, readable, writable, larger than its 32-byte header',
    async run({ a }) {
      const { index, info } = a.found;
      if (index < 9) fail(`found at index ${index}`);
      if (!info.readable || !info.writable) fail(`flags ${info.flags}: not readable and writable`);
      if (info.size <= BigInt(V1_MIGRATION_INFO.size)) fail(`only ${info.size} bytes: no room for data`);
      return `region ${index}, ${info.size} bytes`;
    },
  },
  {
    id: 'v1.state.initial',
    rule: 'A device starts in running (device_state 1)',
    async run({ a, b }) {
      for (const t of [a, b]) await expectState(t, RUNNING, 'connecting');
      return 'both devices read running';
    },
  },
  {
    id: 'v1.header.width',
    rule: 'A header field is accessed at its own width and offset; a partial or straddling access is refused and changes nothing',
    async run({ a }) {
      const bad: [number, number][] = [
        [0, 2],
        [2, 4],
        [8, 4],
        [12, 8],
        [16, 2],
        [24, 4],
      ];
      for (const [off, len] of bad) {
        await refused(`a ${len}-byte read at ${off}`, a.client.regionRead(a.found.index, off, len));
        await refused(`a ${len}-byte write at ${off}`, a.client.regionWrite(a.found.index, off, new Uint8Array(len)));
      }
      await expectState(a, RUNNING, 'the refused accesses');
      return `${bad.length * 2} partial or straddling accesses refused, still running`;
    },
  },
  {
    id: 'v1.save.stop-and-copy',
    rule: 'Running -> stop-and-copy; the save loop (pending_bytes, data_offset, data_size, data) yields chunks inside the data section until pending_bytes is 0; then stopped',
    async run(ctx) {
      await toRunning(ctx.a);
      await arc(ctx.a, SAVING);
      const chunks = await saveAll(ctx, ctx.a);
      if (chunks.length === 0) fail('the save produced no data at all');
      ctx.saved = chunks;
      await arc(ctx.a, STOPPED);
      const bytes = chunks.reduce((n, c) => n + c.byteLength, 0);
      return `${bytes} bytes in ${chunks.length} chunks`;
    },
  },
  {
    id: 'v1.resume.rechunked',
    rule: "A's data resumes on B (running -> resuming) written in other chunk sizes: data_offset, the bytes, data_size, each accepted",
    async run(ctx) {
      if (!ctx.saved) skip('no saved data (the save rule failed)');
      const data = concat(ctx.saved);
      const largest = Math.max(...ctx.saved.map((c) => c.byteLength));
      // Pieces that fall across the source's chunk boundaries.
      const piece = Math.max(1, Math.floor(largest * 0.61));
      await toRunning(ctx.b);
      await arc(ctx.b, RESUMING);
      const writes = await load(ctx.b, data, piece).catch((e: unknown) => fail(`loading refused: ${errorName(e)}`));
      ctx.loaded = true;
      return `${data.byteLength} bytes in ${writes} writes of up to ${piece} bytes (source: ${ctx.saved.length} chunks)`;
    },
  },
  {
    id: 'v1.resume.equal',
    // Compared before B runs: a running device may change its registers at once, and 5.8 has no way from
    // resuming to stopped (its diagram leaves resuming only for running).
    rule: "With the whole state written, every readable BAR of B (still resuming) holds A's bytes at its stop point",
    async run({ a, b, loaded }) {
      if (!loaded) skip('no state was loaded (the resume rule failed)');
      await expectState(b, RESUMING, 'the load');
      return barsEqual(a, b);
    },
  },
  {
    id: 'v1.resume.start',
    rule: 'Resuming -> running accepts the whole state: the resumed device starts',
    async run({ b, loaded }) {
      if (!loaded) skip('no state was loaded (the resume rule failed)');
      await arc(b, RUNNING, ' (the resumed device starting)');
      return 'running';
    },
  },
  {
    id: 'v1.resume.round-trip',
    // Not byte for byte: B has run since, and a running device may change its state at once.
    rule: 'B, saved in turn (running -> stop-and-copy), yields a state A takes back (resuming -> running)',
    async run(ctx) {
      if (!ctx.loaded) skip('no state was loaded (the resume rule failed)');
      const { a, b } = ctx;
      await expectState(b, RUNNING, 'the resume');
      await arc(b, SAVING);
      const chunks = await saveAll(ctx, b);
      await arc(b, STOPPED);
      const data = concat(chunks);
      await toRunning(a);
      await arc(a, RESUMING);
      await load(a, data, Math.max(1, Math.floor(Math.max(...chunks.map((c) => c.byteLength)) * 0.61))).catch(
        (e: unknown) => fail(`A refused B's state: ${errorName(e)}`),
      );
      await arc(a, RUNNING, " (A starting from B's state)");
      await toRunning(b);
      return `${data.byteLength} bytes saved from B (A's: ${concat(ctx.saved!).byteLength}), taken back by A`;
    },
  },
  {
    id: 'v1.error.state',
    // Right after the data rules: the next rules return the device to running, by a reset if need be.
    rule: 'A device that failed an access reads the error state (saving|resuming), refuses every state write, and a reset returns it to running',
    async run(ctx) {
      if (!ctx.failure) skip('no device failure was seen, so the error state was never entered');
      const t = ctx.failure.target;
      const now = await state(t);
      if (!v1StateIsError(now))
        fail(`after "${ctx.failure.what}" device_state is ${deviceStateName(now)}, not the error state`);
      for (const s of [STOPPED, RUNNING]) {
        await refused(`device_state ${s} in the error state`, setState(t, s));
      }
      await t.client.reset();
      await expectState(t, RUNNING, 'a reset in the error state');
      return `error state after "${ctx.failure.what}"; writes refused; reset ran it`;
    },
  },
  {
    id: 'v1.save.cancel',
    rule: 'Pre-copy -> running cancels a save: the device runs and a new save starts from the beginning',
    async run(ctx) {
      const { a } = ctx;
      await toRunning(a);
      await arc(a, PRE_COPY);
      await deviceStep(ctx, a, 'reading pending_bytes', read(a, 'pending_bytes'));
      await arc(a, RUNNING, ' (cancel)');
      return 'back to running';
    },
  },
  {
    id: 'v1.dirty.control',
    rule: 'DIRTY_PAGES: GET_BITMAP before START is refused; START and STOP are accepted, each twice in a row',
    async run(ctx) {
      const { client } = ctx.a;
      const size = BigInt(ctx.guest.size);
      const code = await refused(
        'GET_BITMAP before START',
        client.dirtyPages('get-bitmap', { iova: 0n, size, pgsize: PAGE }),
      );
      for (const op of ['start', 'start', 'stop', 'stop'] as const) {
        await client
          .dirtyPages(op)
          .catch((e: unknown) => fail(`DIRTY_PAGES ${op.toUpperCase()} refused: ${errorName(e)}`));
      }
      return `GET_BITMAP before START refused (${code}); START, START, STOP, STOP accepted`;
    },
  },
  {
    id: 'v1.dirty.reported',
    rule: 'Every guest page the device wrote by DMA while logging is reported by GET_BITMAP once the device stops; reading clears it (a second query of the stopped device reports nothing)',
    async run(ctx) {
      const { a, guest } = ctx;
      await toRunning(a);
      if (!(await ctx.startDma())) skip('the device does no DMA this check knows how to start');
      await a.client.dirtyPages('start');
      try {
        await arc(a, PRE_COPY);
        // Stop-and-copy: the device is stopped, so no page changes after that.
        return await checkDirtyReported(
          guest,
          ctx.dmaWaitMs,
          'GET_BITMAP',
          () => arc(a, SAVING),
          () => getBitmap(ctx),
        );
      } finally {
        await a.client.dirtyPages('stop').catch(() => {});
        await toRunning(a).catch(() => {});
      }
    },
  },
  {
    id: 'v1.reset',
    rule: 'A device reset returns the device to running from pre-copy and from resuming',
    async run({ a }) {
      for (const s of [PRE_COPY, RESUMING]) {
        await toRunning(a);
        await arc(a, s);
        await a.client.reset();
        await expectState(a, RUNNING, `a reset in ${deviceStateName(s)}`);
      }
      return 'running after each reset';
    },
  },
  {
    id: 'v1.state.invalid-values',
    // Late: a device may fail hard on these (libvfio-user's v1 sample aborts), and the data rules come first.
    rule: 'device_state values failing VFIO_DEVICE_STATE_VALID (5, 6 and 7: resuming with another bit) are refused; the state stays',
    async run({ a }) {
      const codes: string[] = [];
      for (const v of [5, 6, 7]) {
        codes.push(await refused(`device_state ${v}`, setState(a, v)));
        await expectState(a, RUNNING, `the refused write of ${v}`);
      }
      return `5, 6, 7 refused (${[...new Set(codes)].join(', ')}), still running`;
    },
  },
  {
    id: 'v1.state.sequences',
    // Last: entering resuming and resetting out of it may wipe the device's state.
    rule: "The header's sequences are accepted: shutdown (running -> stopped), suspend (running -> stop-and-copy -> stopped), live migration (running -> pre-copy -> stop-and-copy -> stopped), resuming (running -> resuming)",
    async run({ a }) {
      const sequences = [[STOPPED], [SAVING, STOPPED], [PRE_COPY, SAVING, STOPPED], [RESUMING]];
      for (const seq of sequences) {
        await toRunning(a);
        for (const s of seq) await arc(a, s);
      }
      await toRunning(a);
      return `${sequences.length} sequences`;
    },
  },
];
