// The seed flavor's rules, checked from outside against any vfio-user device that offers the 2019 region:
// the register block's access rules, the device_state table, the save and resume sequences (saved on A,
// resumed on B in other chunk sizes), and dirty-page reporting. Each rule is the one docs/migration-region.md
// states; a VMM (QEMU's hw/vfio/migration.c in the seed's series, our src/vmm/vfio/seed-driver.ts) relies on
// all of them.

import { Errno } from '../abi/errno.ts';
import { fieldNamed } from '../abi/fields.ts';
import { DeviceState, deviceStateName, SEED_MIGRATION_INFO, type SeedField } from '../abi/migration.ts';
import { SEED_TRANSITIONS } from '../device/seed-state-table.ts';
import type { VfioUserClient } from '../vfio-user/client.ts';
import type { MigrationRegionFound, VfioRegionPort } from '../vfio-user/region-port.ts';
import type { GuestMemory } from '../vmm/guest/guest-memory.ts';
import type { SeedRegionClient } from '../vmm/vfio/seed-region-client.ts';
import {
  type Bar,
  barsEqual,
  changedPages,
  collectPages,
  concat,
  errorName,
  fail,
  type Rule,
  refused,
} from './checks.ts';
import { RuleSkipped } from './report.ts';

/** The seed refuses with EINVAL. */
const refusedEinval = (what: string, p: Promise<unknown>) => refused(what, p, Errno.EINVAL);

const { STOPPED, RUNNING, SAVING, RESUMING } = DeviceState;
const PRE_COPY = SAVING | RUNNING;

export interface SeedTarget {
  client: VfioUserClient;
  found: MigrationRegionFound;
  port: VfioRegionPort;
  region: SeedRegionClient;
  /** The readable BARs (index and size), as region info gave them at connect. */
  bars: Bar[];
}

export interface SeedContext {
  a: SeedTarget;
  b: SeedTarget;
  /** Guest memory DMA-mapped into A at IOVA 0, for the dirty-page rule. */
  guest: GuestMemory;
  /** Makes A do DMA into `guest` if its driver is known (a sample device); false if it is not. */
  startDma(): Promise<boolean>;
  /** How long to wait for a DMA write before the dirty-page rule is skipped. */
  dmaWaitMs: number;
  /** What the save on A produced, for the resume rules. */
  saved?: Uint8Array[];
}

async function state(t: SeedTarget): Promise<number> {
  return t.region.deviceState();
}

async function write(t: SeedTarget, v: number): Promise<void> {
  await t.region.writeField('device_state', BigInt(v >>> 0));
}

async function expectState(t: SeedTarget, want: number, after: string): Promise<void> {
  const now = await state(t);
  if (now !== want) fail(`after ${after} device_state is ${deviceStateName(now)}, expected ${deviceStateName(want)}`);
}

/** Back to running from any state: the table's arcs, or a reset from resuming (the only way out of a half-load). */
async function toRunning(t: SeedTarget): Promise<void> {
  const s = await state(t);
  if (s === RUNNING) return;
  if (s === RESUMING) await t.client.reset();
  else await write(t, RUNNING);
  await expectState(t, RUNNING, 'returning to running');
}

/** From running into `s` by the shortest accepted path. */
async function enter(t: SeedTarget, s: number): Promise<void> {
  await toRunning(t);
  if (s !== RUNNING) await write(t, s);
  await expectState(t, s, `entering ${deviceStateName(s)}`);
}

const field = (name: SeedField) => fieldNamed(SEED_MIGRATION_INFO, name);

/** One stop-and-copy of A's whole state, checking pending_bytes falls exactly as chunks are released. */
async function saveWhole(t: SeedTarget): Promise<{ chunks: Uint8Array[]; checks: number }> {
  const chunks: Uint8Array[] = [];
  let checks = 0;
  let pending = await t.region.pendingBytes();
  let last = 0n;
  for (let i = 0; pending > 0n; i++) {
    if (i > 1_000_000) fail('stop-and-copy never ends: a million chunks and pending_bytes is still not 0');
    const offset = Number(await t.region.readField('data_offset'));
    const after = await t.region.pendingBytes();
    // The data_offset read released the previous chunk: pending fell by exactly its size.
    if (after !== pending - last) {
      fail(`pending_bytes went ${pending} -> ${after} when a ${last}-byte chunk was released`);
    }
    checks++;
    const size = Number(await t.region.readField('data_size'));
    const again = Number(await t.region.readField('data_size'));
    if (again !== size) fail(`data_size read twice gave ${size} then ${again}: it must be pure`);
    if (offset <= 0 || offset + size > t.port.size) fail(`chunk of ${size} at ${offset} lies outside the region`);
    if (size === 0 && after > 0n && last === 0n) fail(`${after} bytes pending but two empty chunks in a row`);
    if (size > 0) chunks.push(await readData(t, offset, size));
    pending = after;
    last = BigInt(size);
    if (size === 0) pending = await t.region.pendingBytes();
  }
  return { chunks, checks };
}

async function readData(t: SeedTarget, offset: number, size: number): Promise<Uint8Array> {
  const out = new Uint8Array(size);
  for (let at = 0; at < size; at += 1 << 20) {
    out.set(await t.port.read(offset + at, Math.min(1 << 20, size - at)), at);
  }
  return out;
}

/** Writes `data` into a resuming device in pieces of `piece` bytes (each bounded by the room at data_offset). */
async function load(t: SeedTarget, data: Uint8Array, piece: number): Promise<number> {
  let writes = 0;
  for (let at = 0; at < data.byteLength; ) {
    const offset = Number(await t.region.readField('data_offset'));
    const n = Math.min(piece, t.port.size - offset, data.byteLength - at);
    if (n <= 0) fail(`no room at data_offset ${offset} in a ${t.port.size}-byte region`);
    for (let w = 0; w < n; w += 1 << 20) {
      await t.port.write(offset + w, data.subarray(at + w, at + Math.min(n, w + (1 << 20))));
    }
    await t.region.writeField('data_size', BigInt(n));
    at += n;
    writes++;
  }
  return writes;
}

export const SEED_RULES: readonly Rule<SeedContext>[] = [
  {
    id: 'seed.region.found',
    rule: 'The migration region is a device-specific region (index >= 9) with TYPE cap 2/1, readable, writable, not empty',
    async run({ a }) {
      const { index, info } = a.found;
      if (index < 9) fail(`found at index ${index}`);
      if (!info.readable || !info.writable) fail(`flags ${info.flags}: not readable and writable`);
      if (info.size < BigInt(SEED_MIGRATION_INFO.size)) fail(`only ${info.size} bytes, smaller than the header`);
      return `region ${index}, ${info.size} bytes${a.port.areas.length ? `, ${a.port.areas.length} mmapped area(s)` : ', trapped'}`;
    },
  },
  {
    id: 'seed.state.initial',
    rule: 'A device starts in running (device_state 1)',
    async run({ a, b }) {
      for (const t of [a, b]) await expectState(t, RUNNING, 'connecting');
      return 'both devices read running';
    },
  },
  {
    id: 'seed.header.width',
    rule: 'A header field is accessed only at its native width and offset; any other access fails with EINVAL and changes nothing',
    async run({ a }) {
      const bad: [number, number][] = [
        [0, 2],
        [0, 8],
        [2, 4],
        [4, 4],
        [8, 4],
        [12, 4],
        [16, 2],
        [20, 8],
        [60, 4],
      ];
      const pending = await a.region.pendingBytes();
      for (const [off, len] of bad) {
        await refusedEinval(`a ${len}-byte read at ${off}`, a.port.read(off, len));
        await refusedEinval(`a ${len}-byte write at ${off}`, a.port.write(off, new Uint8Array(len)));
      }
      await expectState(a, RUNNING, 'the refused accesses');
      if ((await a.region.pendingBytes()) !== pending) fail('pending_bytes changed');
      return `${bad.length * 2} misaligned or mis-sized accesses refused, nothing changed`;
    },
  },
  {
    id: 'seed.header.direction',
    rule: 'Writing a read-only field or reading a write-only field fails with EINVAL',
    async run({ a }) {
      for (const name of ['pending_bytes', 'data_offset', 'copied_pfns'] as const) {
        const f = field(name);
        await refusedEinval(`writing ${name}`, a.port.write(f.offset, new Uint8Array(f.width)));
      }
      for (const name of ['start_pfn', 'page_size', 'total_pfns'] as const) {
        const f = field(name);
        await refusedEinval(`reading ${name}`, a.port.read(f.offset, f.width));
      }
      await expectState(a, RUNNING, 'the refused accesses');
      return '3 read-only fields refused writes, 3 write-only fields refused reads';
    },
  },
  {
    id: 'seed.state.invalid-values',
    rule: 'device_state 5, 6 and 7, and any value with bits 3-31 set, are refused with EINVAL; the state stays',
    async run({ a }) {
      for (const v of [5, 6, 7, RUNNING | 8, 0x8000_0001]) {
        await refusedEinval(`device_state ${v}`, write(a, v));
        await expectState(a, RUNNING, `the refused write of ${v}`);
      }
      return 'five invalid values refused, device still running';
    },
  },
  {
    id: 'seed.save.stop-and-copy',
    rule: 'In stop-and-copy, each data_offset read releases the previous chunk (pending_bytes falls by its size) and produces the next, inside the region, until pending_bytes is 0',
    async run(ctx) {
      await enter(ctx.a, SAVING);
      const { chunks, checks } = await saveWhole(ctx.a);
      ctx.saved = chunks;
      await write(ctx.a, STOPPED);
      const bytes = chunks.reduce((n, c) => n + c.byteLength, 0);
      return `${bytes} bytes in ${chunks.length} chunks, pending_bytes exact at ${checks} steps`;
    },
  },
  {
    id: 'seed.resume.rechunked',
    rule: 'A saved state resumes on another device of the same kind written in other chunk sizes; leaving resuming validates it',
    async run(ctx) {
      if (!ctx.saved) throw new RuleSkipped('no saved state (the stop-and-copy rule failed)');
      const data = concat(ctx.saved);
      const largest = Math.max(1, ...ctx.saved.map((c) => c.byteLength));
      // Pieces that fall across the source's chunk boundaries: about 0.61 of the largest chunk.
      const piece = Math.max(1, Math.floor(largest * 0.61));
      await enter(ctx.b, RESUMING);
      const writes = await load(ctx.b, data, piece);
      await write(ctx.b, STOPPED).catch((e: Error) => fail(`leaving resuming refused the whole state: ${e.message}`));
      return `${data.byteLength} bytes in ${writes} writes of ${piece} bytes (source chunks: ${ctx.saved.length})`;
    },
  },
  {
    id: 'seed.resume.equal',
    rule: "After the resume, every readable BAR of B holds the same bytes as A's at its stop point",
    async run({ a, b }) {
      await expectState(a, STOPPED, 'the save');
      await expectState(b, STOPPED, 'the resume');
      return barsEqual(a, b);
    },
  },
  {
    id: 'seed.resume.incomplete',
    rule: 'Leaving resuming with an incomplete state fails and the device stays resuming; reset returns it to running',
    async run(ctx) {
      if (!ctx.saved) throw new RuleSkipped('no saved state (the stop-and-copy rule failed)');
      const data = concat(ctx.saved);
      if (data.byteLength < 2) throw new RuleSkipped(`a ${data.byteLength}-byte state cannot be cut short`);
      await enter(ctx.b, RESUMING);
      await load(ctx.b, data.subarray(0, data.byteLength >> 1), 1 << 20);
      const err = await write(ctx.b, RUNNING).then(
        () => null,
        (e: unknown) => e,
      );
      if (!err) fail('a half-loaded device was allowed to run');
      await expectState(ctx.b, RESUMING, 'the refused start');
      await ctx.b.client.reset();
      await expectState(ctx.b, RUNNING, 'reset');
      return `start refused (${errorName(err)}) with ${data.byteLength >> 1} of ${data.byteLength} bytes; reset ran it`;
    },
  },
  {
    id: 'seed.save.cancel',
    rule: 'Pre-copy -> running ends the save: the device runs, and pending_bytes reads 0 outside a save',
    async run({ a }) {
      await enter(a, PRE_COPY);
      await a.region.readField('data_offset');
      await write(a, RUNNING);
      await expectState(a, RUNNING, 'the cancel');
      const pending = await a.region.pendingBytes();
      if (pending !== 0n) fail(`pending_bytes reads ${pending} while not saving`);
      return 'back to running, nothing pending';
    },
  },
  {
    id: 'seed.dirty.outside-saving',
    rule: 'A dirty-page query while not saving is refused with EINVAL',
    async run({ a }) {
      await toRunning(a);
      await a.region.writeField('start_pfn', 0n);
      await a.region.writeField('page_size', 4096n);
      await a.region.writeField('total_pfns', 16n);
      const f = field('copied_pfns');
      await refusedEinval('copied_pfns while running', a.port.read(f.offset, f.width));
      return 'refused';
    },
  },
  {
    id: 'seed.dirty.reported',
    rule: 'Every guest page the device wrote by DMA while saving is reported dirty by the next query',
    async run(ctx) {
      const { a, guest } = ctx;
      await toRunning(a);
      if (!(await ctx.startDma())) throw new RuleSkipped('the device does no DMA this check knows how to start');
      await write(a, PRE_COPY);
      const before = guest.pageDigests();
      const deadline = performance.now() + ctx.dmaWaitMs;
      let after = guest.pageDigests();
      while (Buffer.compare(before, after) === 0 && performance.now() < deadline) {
        await new Promise((r) => setTimeout(r, 20));
        after = guest.pageDigests();
      }
      const changed = changedPages(before, after);
      if (changed.length === 0) throw new RuleSkipped(`the device wrote no guest page within ${ctx.dmaWaitMs} ms`);
      const reported = new Set<number>();
      await a.region.dirtyBitmap(0n, 4096n, BigInt(guest.pages), collectPages(reported));
      const missed = changed.filter((p) => !reported.has(p));
      if (missed.length)
        fail(`${missed.length} of ${changed.length} written pages not reported (first: pfn ${missed[0]})`);
      // The save ends here; a rule that failed above leaves that to the next rule's return to running.
      await write(a, RUNNING);
      return `${changed.length} written pages, all among the ${reported.size} reported`;
    },
  },
  {
    id: 'seed.state.table',
    // Last: entering resuming and resetting out of it may wipe the device's state, which the save rules need.
    rule: 'Exactly the transitions of the seed table are accepted; a refused one is EINVAL and leaves the state',
    async run({ a }) {
      let checked = 0;
      for (const from of [STOPPED, RUNNING, SAVING, PRE_COPY, RESUMING]) {
        for (const to of [STOPPED, RUNNING, SAVING, PRE_COPY, RESUMING]) {
          const allowed = from === to || (SEED_TRANSITIONS[from]?.includes(to) ?? false);
          // Leaving resuming is allowed by the table but needs a complete saved state: the resume rules check it.
          if (from === RESUMING && to !== RESUMING && allowed) continue;
          await enter(a, from);
          const arc = `${deviceStateName(from)} -> ${deviceStateName(to)}`;
          if (allowed) {
            await write(a, to).catch((e: Error) => fail(`${arc} refused: ${e.message}`));
            await expectState(a, to, arc);
          } else {
            await refusedEinval(arc, write(a, to));
            await expectState(a, from, `the refused ${arc}`);
          }
          checked++;
        }
      }
      await toRunning(a);
      return `${checked} arcs as the table says`;
    },
  },
];
