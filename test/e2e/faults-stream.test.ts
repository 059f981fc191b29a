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
import { after, before, describe, test } from 'node:test';
import { concat } from '../../src/stream/bytes.ts';
import type { DecodedSection } from '../../src/stream/decoder.ts';
import { decodeVfioPayload, vfioDataPayload } from '../../src/stream/vfio.ts';
import {
  assertDestinationRefused,
  attempt,
  type DevicePair,
  retryTo,
  startDevicePair,
} from './support/device-faults.ts';
import { assertSourceIntact, faultMatrix } from './support/faults.ts';
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

describe('a damaged migration stream is refused by the destination; the source resumes', () => {
  let pair: DevicePair;
  let first = true;
  before(async () => {
    pair = await startDevicePair();
  });
  after(() => pair?.stop());

  /** One attempt through a proxy applying `edit` (to a fresh destination after the first); returns the
   * destination's error. */
  async function damaged(
    fault: string,
    edit: SectionEdit & { hit: DecodedSection | null },
    why: RegExp,
    options: { renumber?: boolean } = {},
  ): Promise<string> {
    if (!first) await pair.freshDestination();
    first = false;
    const proxy = await startStreamProxy(pair.uri, edit, options);
    try {
      const info = await attempt(pair, proxy.uri);
      assert.ok(edit.hit, 'the proxy found the section to damage');
      assert.equal(info.status, 'failed');
      const desc = await assertDestinationRefused(pair.dst, why);
      console.log(`  destination: ${desc}`);
      const pagesLost = await assertSourceIntact(pair, pair.start);
      const s = edit.hit;
      faultMatrix({
        fault,
        phase: `${s.idstr === 'ram' ? 'ram' : 'vfio'}-${s.type}-seq${s.seq}`,
        outcome: 'destination-refused,source-resumed',
        pagesLost,
      });
      return desc;
    } finally {
      await proxy.close();
    }
  }

  test('one flipped byte in a device data section: checksum mismatch naming the section', async () => {
    const edit = at(isVfioPart, 2, flipMiddle);
    const desc = await damaged('stream-flipped-byte', edit, /checksum mismatch/);
    assert.ok(desc.includes(`in "${VFIO}", section id 1, seq ${edit.hit!.seq}`), desc);
  });

  test('one flipped byte in a RAM section: checksum mismatch naming "ram"', async () => {
    const edit = at(isRamPages, 1, flipMiddle);
    const desc = await damaged('stream-flipped-byte', edit, /checksum mismatch/);
    assert.ok(desc.includes(`in "ram", section id 0, seq ${edit.hit!.seq}`), desc);
  });

  test('the stream cut in the middle of a section: truncated, naming the section', async () => {
    const edit = at(isVfioPart, 1, (_s, raw) => ({ out: [raw.subarray(0, raw.byteLength >> 1)], end: true }));
    const desc = await damaged('stream-truncated', edit, /stream ends inside a record/);
    assert.ok(desc.includes(`in "${VFIO}", section id 1, seq ${edit.hit!.seq}`), desc);
  });

  test('a section sent twice: sequence error naming the section', async () => {
    const edit = at(isRamPages, 1, (_s, raw) => ({ out: [raw, raw] }));
    const desc = await damaged('stream-duplicated-section', edit, /a section repeated or out of order/);
    assert.ok(desc.includes(`in "ram", section id 0, seq ${edit.hit!.seq}`), desc);
  });

  test('two sections swapped: sequence error naming the one that came early', async () => {
    // The first VFIO PART is held back and sent after the section that followed it.
    let held: Uint8Array | null = null;
    let early: DecodedSection | null = null;
    const hold = at(isVfioPart, 1, (_s, raw) => {
      held = raw;
      return { out: [] };
    });
    const edit = (s: DecodedSection, raw: Uint8Array): EditResult => {
      if (!held) return hold(s, raw);
      const out = [raw, held];
      held = null;
      early = s;
      edit.hit = hold.hit;
      return { out };
    };
    edit.hit = null as DecodedSection | null;
    const desc = await damaged('stream-reordered-sections', edit, /section\(s\) before it are missing/);
    assert.ok(early, 'a section was moved ahead');
    assert.ok(desc.includes(`seq ${hold.hit!.seq + 1}`), desc);
  });

  test('re-encoded, checksums valid: a device data chunk cut in half is refused by the device loader', async () => {
    const edit = at(isVfioPart, 2, (s, raw) => {
      const recs = decodeVfioPayload(s.payload);
      const data = recs.find((r) => r.kind === 'data');
      assert.ok(data && data.kind === 'data' && data.data.byteLength > 2);
      const half = data.data.subarray(0, data.data.byteLength >> 1);
      return { out: [withPayload(s, raw, concat(vfioDataPayload(half)))] };
    });
    const desc = await damaged('stream-truncated-vfio-chunk', edit, new RegExp(`"${VFIO}"|${VFIO.split('/')[0]}`), {
      renumber: true,
    });
    // Framing and checksums are valid here: only the device's loader can tell, and it does.
    assert.doesNotMatch(desc, /checksum|sequence/);
  });

  test('re-encoded, checksums valid: a device data chunk sent twice is refused by the device loader', async () => {
    const edit = at(isVfioPart, 2, (_s, raw) => ({ out: [raw, raw] }));
    const desc = await damaged('stream-duplicated-vfio-chunk', edit, new RegExp(VFIO.split('/')[0]!), {
      renumber: true,
    });
    assert.doesNotMatch(desc, /checksum|sequence/);
  });

  test('then the same proxy, re-encoding every section unchanged, carries a migration that succeeds', async () => {
    let proxy: StreamProxy | undefined;
    try {
      const lost = await retryTo(pair, {
        via: async (uri) => {
          proxy = await startStreamProxy(uri, passThrough, { renumber: true });
          return proxy.uri;
        },
      });
      assert.equal(lost, 0);
      assert.ok(proxy!.seen.some(isVfioPart) && proxy!.seen.some(isRamPages), 'RAM and device data went through');
    } finally {
      await proxy?.close();
    }
  });
});
