// The RAM fast paths: RamPayloadWriter (one contiguous payload, page contents copied in) writes the
// same bytes as RamPayloadBuilder for the same records; scanRamPages (the loader's scan without an object
// per record) agrees with decodeRamPayload on everything it accepts, and leaves everything else to it.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { be64, concat } from '../../src/stream/bytes.ts';
import { StreamError } from '../../src/stream/errors.ts';
import {
  decodeRamPayload,
  RamPageScan,
  RamPayloadBuilder,
  RamPayloadWriter,
  type RamRecord,
  scanRamPages,
} from '../../src/stream/ram.ts';
import { crcRef } from './crc-ref.ts';
import { pageOf, RAM_BLOCKS } from './support.ts';

const PC_RAM = new TextEncoder().encode('pc.ram');
const PC_RAM_SIZE = RAM_BLOCKS.get('pc.ram')!;

const recordArb = fc.record({
  block: fc.constantFrom('pc.ram', 'vga.vram'),
  page: fc.nat(3),
  zero: fc.boolean(),
  seed: fc.nat(),
});

/** Scans a payload; on success, the records it found in decodeRamPayload's shape (block pc.ram). */
function scanned(payload: Uint8Array): RamRecord[] | null {
  const scan = new RamPageScan();
  if (!scanRamPages(payload, PC_RAM, PC_RAM_SIZE, scan)) return null;
  const out: RamRecord[] = [];
  for (let r = 0; r < scan.count; r++) {
    const offset = BigInt(scan.offsets[r]!);
    const at = scan.data[r]!;
    out.push(
      at >= 0
        ? { kind: 'page', block: 'pc.ram', offset, data: payload.subarray(at, at + 4096) }
        : { kind: 'zero', block: 'pc.ram', offset, fill: -1 - at },
    );
  }
  out.push({ kind: 'eos' });
  return out;
}

function reference(payload: Uint8Array): RamRecord[] | StreamError {
  try {
    return decodeRamPayload(payload, { blocks: RAM_BLOCKS });
  } catch (e) {
    assert.ok(e instanceof StreamError, `${e}`);
    return e;
  }
}

/** A copy of the writer's payload, after checking the CRC it computed while building it. */
function taken(w: RamPayloadWriter): Uint8Array {
  const { payload, crc } = w.take();
  assert.equal(crc, crcRef(payload), "the running CRC is the payload's");
  return payload.slice();
}

interface Rec {
  block: string;
  page: number;
  zero: boolean;
  seed: number;
}

/** Each payload is what RamPayloadBuilder makes of its group of records, page by page. */
function assertBuiltAlike(payloads: Uint8Array[], groups: Rec[][]): void {
  assert.equal(payloads.length, groups.length);
  groups.forEach((g, i) => {
    const b = new RamPayloadBuilder();
    for (const r of g) {
      if (r.zero) b.zero(r.block, r.page * 4096, r.seed & 255);
      else b.page(r.block, r.page * 4096, pageOf(r.seed));
    }
    b.eos();
    assert.deepEqual(payloads[i], concat(b.take().pieces), `payload ${i}`);
  });
}

describe('RamPayloadWriter', () => {
  test('property: the same bytes as RamPayloadBuilder, split where the buffer is full, EOS always fitting', () => {
    fc.assert(
      fc.property(fc.array(recordArb, { maxLength: 30 }), fc.integer({ min: 0, max: 3 }), (list, extraPages) => {
        // A buffer that holds a few page records, so some lists need several payloads.
        const w = new RamPayloadWriter(new Uint8Array(4400 + extraPages * 4104));
        const payloads: Uint8Array[] = [];
        const groups: (typeof list)[] = [[]];
        for (const r of list) {
          const ok = r.zero
            ? w.zero(r.block, r.page * 4096, r.seed & 255)
            : w.page(r.block, r.page * 4096, pageOf(r.seed));
          if (!ok) {
            payloads.push(taken(w));
            groups.push([]);
            assert.ok(
              r.zero ? w.zero(r.block, r.page * 4096, r.seed & 255) : w.page(r.block, r.page * 4096, pageOf(r.seed)),
              'a record always fits an empty writer',
            );
          }
          groups[groups.length - 1]!.push(r);
        }
        payloads.push(taken(w));
        assertBuiltAlike(payloads, groups);
      }),
      { numRuns: 100 },
    );
  });

  test('property: a run of pages written at once (pages) is the same bytes as its pages one by one', () => {
    const runArb = fc.record({
      block: fc.constantFrom('pc.ram', 'vga.vram'),
      page: fc.nat(2),
      count: fc.integer({ min: 1, max: 6 }),
      zero: fc.boolean(),
      seed: fc.nat(),
    });
    fc.assert(
      fc.property(fc.array(runArb, { maxLength: 12 }), fc.integer({ min: 0, max: 4 }), (list, extraPages) => {
        const w = new RamPayloadWriter(new Uint8Array(4400 + extraPages * 4104));
        const payloads: Uint8Array[] = [];
        // The records each payload should hold, one page (or zero page) at a time.
        const groups: Rec[][] = [[]];
        for (const r of list) {
          if (r.zero) {
            if (!w.zero(r.block, r.page * 4096, r.seed & 255)) {
              payloads.push(taken(w));
              groups.push([]);
              assert.ok(w.zero(r.block, r.page * 4096, r.seed & 255));
            }
            groups[groups.length - 1]!.push(r);
            continue;
          }
          const run = concat(Array.from({ length: r.count }, (_, k) => pageOf(r.seed + k)));
          for (let done = 0; done < r.count; ) {
            const n = w.pages(r.block, (r.page + done) * 4096, run.subarray(done * 4096));
            for (let k = done; k < done + n; k++)
              groups[groups.length - 1]!.push({ block: r.block, page: r.page + k, zero: false, seed: r.seed + k });
            done += n;
            if (done < r.count) {
              assert.ok(n > 0 || w.isEmpty === false, 'an empty writer takes at least one page');
              payloads.push(taken(w));
              groups.push([]);
            }
          }
        }
        payloads.push(taken(w));
        assertBuiltAlike(payloads, groups);
      }),
      { numRuns: 150 },
    );
    const w = new RamPayloadWriter(new Uint8Array(1 << 16));
    assert.throws(() => w.pages('pc.ram', 0, new Uint8Array(0)), RangeError);
    assert.throws(() => w.pages('pc.ram', 0, new Uint8Array(4096 + 1)), RangeError);
  });

  test('the page is copied: changing the source afterwards does not change the payload', () => {
    const w = new RamPayloadWriter(new Uint8Array(1 << 16));
    const page = pageOf(7);
    w.page('pc.ram', 4096, page);
    page.fill(0);
    const recs = decodeRamPayload(taken(w), { blocks: RAM_BLOCKS });
    assert.deepEqual(recs[0], { kind: 'page', block: 'pc.ram', offset: 4096n, data: pageOf(7) });
  });

  test('refuses what it cannot encode, and a buffer too small for one page', () => {
    const w = new RamPayloadWriter(new Uint8Array(1 << 16));
    assert.throws(() => w.page('pc.ram', 4095, pageOf(1)), RangeError);
    assert.throws(() => w.page('pc.ram', 0, new Uint8Array(4095)), RangeError);
    assert.throws(() => w.zero('pc.ram', 0, 256), RangeError);
    assert.throws(() => w.zero('', 0), RangeError);
    assert.throws(() => new RamPayloadWriter(new Uint8Array(4096)), RangeError);
  });
});

describe('scanRamPages', () => {
  test('property: on pc.ram pages it finds exactly what decodeRamPayload finds', () => {
    fc.assert(
      fc.property(fc.array(recordArb, { maxLength: 30 }), (list) => {
        const b = new RamPayloadBuilder();
        for (const r of list) {
          if (r.zero) b.zero('pc.ram', r.page * 4096, r.seed & 255);
          else b.page('pc.ram', r.page * 4096, pageOf(r.seed));
        }
        b.eos();
        const payload = concat(b.take().pieces);
        assert.deepEqual(scanned(payload), reference(payload));
      }),
      { numRuns: 100 },
    );
  });

  test('property: on any payload, whatever it accepts decodeRamPayload accepts with the same records', () => {
    // Valid payloads with one byte changed, several blocks mixed, or cut: the scan either declines (the
    // full decoder then decides) or agrees with the full decoder.
    let accepted = 0;
    let declined = 0;
    fc.assert(
      fc.property(
        fc.array(recordArb, { maxLength: 12 }),
        fc.nat(),
        fc.integer({ min: 0, max: 255 }),
        fc.constantFrom('flip', 'cut', 'none'),
        (list, at, value, how) => {
          const b = new RamPayloadBuilder();
          for (const r of list) {
            if (r.zero) b.zero(r.block, r.page * 4096, r.seed & 255);
            else b.page(r.block, r.page * 4096, pageOf(r.seed));
          }
          b.eos();
          let payload = concat(b.take().pieces);
          if (how === 'flip') payload[at % payload.byteLength] = value;
          if (how === 'cut') payload = payload.subarray(0, at % payload.byteLength);
          const got = scanned(payload);
          if (got === null) {
            declined++;
            return;
          }
          accepted++;
          assert.deepEqual(got, reference(payload));
        },
      ),
      { numRuns: 400 },
    );
    assert.ok(accepted > 0 && declined > 0, `accepted ${accepted}, declined ${declined}`);
  });

  test('declines MEM_SIZE, another block, CONTINUE first, a page past the block, a missing or early EOS', () => {
    const page = (v: bigint, named = true) =>
      concat([be64(v), named ? Uint8Array.of(6, ...PC_RAM) : new Uint8Array(0)]);
    const EOS = be64(0x10n);
    const cases: [string, Uint8Array][] = [
      ['MEM_SIZE', concat([be64(0x8000n | 0x04n), Uint8Array.of(6, ...PC_RAM), be64(0x8000n), EOS])],
      [
        'another block',
        concat([be64(0x02n), Uint8Array.of(8, ...new TextEncoder().encode('vga.vram')), Uint8Array.of(0), EOS]),
      ],
      ['CONTINUE first', concat([be64(0x22n), Uint8Array.of(0), EOS])],
      ['outside the block', concat([page(BigInt(PC_RAM_SIZE) | 0x02n), Uint8Array.of(0), EOS])],
      ['huge offset', concat([page((1n << 60n) | 0x02n), Uint8Array.of(0), EOS])],
      ['no EOS', concat([page(0x02n), Uint8Array.of(0)])],
      ['bytes after EOS', concat([page(0x02n), Uint8Array.of(0), EOS, Uint8Array.of(0)])],
      ['EOS with CONTINUE', concat([page(0x02n), Uint8Array.of(0), be64(0x30n)])],
      ['short page', concat([page(0x08n), new Uint8Array(100)])],
      ['empty', new Uint8Array(0)],
    ];
    for (const [what, payload] of cases) {
      assert.equal(scanRamPages(payload, PC_RAM, PC_RAM_SIZE, new RamPageScan()), false, what);
    }
  });

  test('the scan arrays grow past their first size', () => {
    const pages = 3000;
    const b = new RamPayloadBuilder();
    for (let i = 0; i < pages; i++) b.zero('pc.ram', (i % 8) * 4096, i & 255);
    b.eos();
    const scan = new RamPageScan();
    assert.ok(scanRamPages(concat(b.take().pieces), PC_RAM, PC_RAM_SIZE, scan));
    assert.equal(scan.count, pages);
    assert.equal(scan.data[pages - 1], -1 - ((pages - 1) & 255));
    assert.equal(scan.offsets[pages - 1], ((pages - 1) % 8) * 4096);
  });
});
