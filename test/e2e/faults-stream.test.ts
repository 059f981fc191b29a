// Stream corruption end to end: a TCP proxy between the source and the destination VMM
// (support/stream-proxy.ts) damages the migration stream on its way — one flipped byte, a truncated stream,
// a duplicated or reordered section — or re-encodes it so that framing and checksums are valid but the
// content is wrong (a VFIO data chunk cut in half, or sent twice). The destination must refuse each by its
// checksums, framing or loaders, name the section in its error, and never start a half-loaded VM; the
// source resumes with every page and its device state as before, the device in RUNNING.
//
// One source serves every attempt (four processes per case would cost more than these tests' budget);
// each attempt goes to a fresh destination, and the last one, through the same proxy re-encoding every
// section, completes with identical pages and device: the proxy itself is faithful, the edits are the
// only damage.
import assert from 'node:assert/strict';
import { concat } from '../../src/stream/bytes.ts';
import type { DecodedSection } from '../../src/stream/decoder.ts';
import { decodeVfioPayload, vfioDataPayload } from '../../src/stream/vfio.ts';
import { startDeviceBench } from './support/device-faults.ts';
import { checkRetry, type FaultRow, faultTable, retryToFresh } from './support/fault-table.ts';
import type { Info } from './support/faults.ts';
import {
  type EditResult,
  passThrough,
  type SectionEdit,
  type StreamProxy,
  startStreamProxy,
  withPayload,
} from './support/stream-proxy.ts';

const VFIO = '0000:00:05.0/vfio';
const isVfioPart = (s: DecodedSection) => s.idstr === VFIO && s.type === 'part';
/** A RAM PART that carries pages (not only zero-page records). */
const isRamPages = (s: DecodedSection) => s.idstr === 'ram' && s.type === 'part' && s.payload.byteLength > 4096;

/** Applies `change` to the `nth` (1-based) section matching `which`; every other section passes. */
function at(
  which: (s: DecodedSection) => boolean,
  nth: number,
  change: (s: DecodedSection, raw: Uint8Array) => EditResult,
): SectionEdit & { hit: DecodedSection | null } {
  let n = 0;
  const edit = (s: DecodedSection, raw: Uint8Array): EditResult => {
    if (!which(s) || ++n !== nth) return { out: [raw] };
    edit.hit = s;
    return change(s, raw);
  };
  edit.hit = null as DecodedSection | null;
  return edit;
}

/** Flips one bit of the byte in the middle of the section's payload. */
function flipMiddle(s: DecodedSection, raw: Uint8Array): EditResult {
  const out = Uint8Array.from(raw);
  out[s.payloadOffset - s.offset + (s.payload.byteLength >> 1)]! ^= 0x10;
  return { out: [out] };
}

type Edit = SectionEdit & { hit: DecodedSection | null };

/**
 * A row: the attempt goes through a stream proxy applying `edit`; the destination refuses it for `why`,
 * and `check` looks at its error. The FAULT-MATRIX line names the section that was damaged.
 */
function damaged(
  name: string,
  fault: string,
  edit: Edit,
  why: RegExp,
  check: (desc: string) => void,
  options: { renumber?: boolean } = {},
): FaultRow {
  return {
    name,
    fault,
    phase: 'stream',
    inject: async (ctx) => {
      const proxy = await startStreamProxy(ctx.pair.uri, edit, options);
      ctx.defer(() => proxy.close());
      await ctx.pair.src.execute('migrate', { uri: proxy.uri });
      return undefined;
    },
    after: async (ctx) => {
      assert.ok(edit.hit, 'the proxy found the section to damage');
      const desc = (await ctx.pair.dst.execute<Info>('query-migrate'))['error-desc'] ?? '';
      console.log(`  destination: ${desc}`);
      check(desc);
      const s = edit.hit;
      return { section: `${s.idstr === 'ram' ? 'ram' : 'vfio'}-${s.type}-seq${s.seq}` };
    },
    expect: { status: 'failed', destination: { refused: why }, retry: false },
  };
}

/** The error names the damaged section. */
const names = (edit: Edit, where: string) => (desc: string) =>
  assert.ok(desc.includes(`in ${where}, seq ${edit.hit!.seq}`), desc);
/** Framing and checksums are valid here: only the device's loader can tell, and it does. */
const notFraming = (desc: string) => assert.doesNotMatch(desc, /checksum|sequence/);

const flippedVfio = at(isVfioPart, 2, flipMiddle);
const flippedRam = at(isRamPages, 1, flipMiddle);
const cut = at(isVfioPart, 1, (_s, raw) => ({ out: [raw.subarray(0, raw.byteLength >> 1)], end: true }));
const twice = at(isRamPages, 1, (_s, raw) => ({ out: [raw, raw] }));

// Two sections swapped: the first VFIO PART is held back and sent after the section that followed it.
let held: Uint8Array | null = null;
let early: DecodedSection | null = null;
const hold = at(isVfioPart, 1, (_s, raw) => {
  held = raw;
  return { out: [] };
});
const swapped: Edit = Object.assign(
  (s: DecodedSection, raw: Uint8Array): EditResult => {
    if (!held) return hold(s, raw);
    const out = [raw, held];
    held = null;
    early = s;
    swapped.hit = hold.hit;
    return { out };
  },
  { hit: null as DecodedSection | null },
);

const halfChunk = at(isVfioPart, 2, (s, raw) => {
  const recs = decodeVfioPayload(s.payload);
  const data = recs.find((r) => r.kind === 'data');
  assert.ok(data && data.kind === 'data' && data.data.byteLength > 2);
  const half = data.data.subarray(0, data.data.byteLength >> 1);
  return { out: [withPayload(s, raw, concat(vfioDataPayload(half)))] };
});
const chunkTwice = at(isVfioPart, 2, (_s, raw) => ({ out: [raw, raw] }));
const DEVICE = VFIO.split('/')[0]!;

faultTable(
  'a damaged migration stream is refused by the destination; the source resumes',
  [
    damaged(
      'one flipped byte in a device data section: checksum mismatch naming the section',
      'stream-flipped-byte',
      flippedVfio,
      /checksum mismatch/,
      names(flippedVfio, `"${VFIO}", section id 1`),
    ),
    damaged(
      'one flipped byte in a RAM section: checksum mismatch naming "ram"',
      'stream-flipped-byte',
      flippedRam,
      /checksum mismatch/,
      names(flippedRam, '"ram", section id 0'),
    ),
    damaged(
      'the stream cut in the middle of a section: truncated, naming the section',
      'stream-truncated',
      cut,
      /stream ends inside a record/,
      names(cut, `"${VFIO}", section id 1`),
    ),
    damaged(
      'a section sent twice: sequence error naming the section',
      'stream-duplicated-section',
      twice,
      /a section repeated or out of order/,
      names(twice, '"ram", section id 0'),
    ),
    damaged(
      'two sections swapped: sequence error naming the one that came early',
      'stream-reordered-sections',
      swapped,
      /section\(s\) before it are missing/,
      (desc) => {
        assert.ok(early, 'a section was moved ahead');
        assert.ok(desc.includes(`seq ${hold.hit!.seq + 1}`), desc);
      },
    ),
    damaged(
      're-encoded, checksums valid: a device data chunk cut in half is refused by the device loader',
      'stream-truncated-vfio-chunk',
      halfChunk,
      new RegExp(`"${VFIO}"|${DEVICE}`),
      notFraming,
      { renumber: true },
    ),
    damaged(
      're-encoded, checksums valid: a device data chunk sent twice is refused by the device loader',
      'stream-duplicated-vfio-chunk',
      chunkTwice,
      new RegExp(DEVICE),
      notFraming,
      { renumber: true },
    ),
  ],
  {
    bench: () => startDeviceBench(),
    last: {
      name: 'then the same proxy, re-encoding every section unchanged, carries a migration that succeeds',
      run: async (bench) => {
        let proxy: StreamProxy | undefined;
        try {
          const via = async (uri: string) => {
            proxy = await startStreamProxy(uri, passThrough, { renumber: true });
            return proxy.uri;
          };
          checkRetry(await retryToFresh(bench.pair, bench.start, { via }));
          assert.ok(proxy!.seen.some(isVfioPart) && proxy!.seen.some(isRamPages), 'RAM and device data went through');
        } finally {
          await proxy?.close();
        }
      },
    },
  },
);
