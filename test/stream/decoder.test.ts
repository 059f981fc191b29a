// The decoder: random streams come back exactly through any chunking; every kind of damage (a flipped
// byte, truncation, a duplicated, dropped or swapped section, sections out of QEMU's order, a section over
// the size limit, a foreign header) is refused with a StreamError naming the section and the offset, and
// nothing wrong is ever delivered.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { be32, concat } from '../../src/stream/bytes.ts';
import { FORMAT_VERSION, RecordType } from '../../src/stream/constants.ts';
import { type DecodedSection, StreamDecoder } from '../../src/stream/decoder.ts';
import { encodeHeader, StreamEncoder } from '../../src/stream/encoder.ts';
import { StreamError } from '../../src/stream/errors.ts';
import { decodeRamPayload } from '../../src/stream/ram.ts';
import { decodeVfioPayload } from '../../src/stream/vfio.ts';
import { type BuiltStream, buildStream, decodeChunked, RAM_BLOCKS, sampleStream, streamPlanArb } from './support.ts';

const chunkSizesArb = fc.array(fc.integer({ min: 1, max: 5000 }), { minLength: 1, maxLength: 6 });

function isStreamError(e: unknown, code?: StreamError['code']): e is StreamError {
  return e instanceof StreamError && (code === undefined || e.code === code);
}

/** Every delivered section is the built stream's section at that position, byte for byte. */
function assertPrefix(got: DecodedSection[], built: BuiltStream): void {
  assert.ok(got.length <= built.sections.length);
  got.forEach((s, i) => {
    const want = built.sections[i]!;
    assert.equal(s.seq, i);
    assert.equal(s.type, want.type);
    assert.equal(s.sectionId, want.sectionId);
    assert.deepEqual(s.payload, want.payload);
  });
}

describe('StreamDecoder', () => {
  test('round trip: random streams through random chunkings come back exactly, payloads decoded', () => {
    fc.assert(
      fc.property(streamPlanArb, chunkSizesArb, (plan, sizes) => {
        const built = buildStream(plan);
        const { sections, error, decoder } = decodeChunked(built.bytes, sizes);
        assert.equal(error, null);
        assert.ok(decoder.ended);
        assert.equal(sections.length, built.sections.length);
        let offset = encodeHeader().byteLength;
        sections.forEach((s, i) => {
          const want = built.sections[i]!;
          assert.equal(s.seq, i);
          assert.equal(s.offset, offset);
          assert.equal(s.byteLength, built.records[i + 1]!.byteLength);
          offset += s.byteLength;
          const { ram, vfio, payload, ...ids } = want;
          assert.deepEqual(
            { type: s.type, sectionId: s.sectionId, idstr: s.idstr, instanceId: s.instanceId, versionId: s.versionId },
            ids,
          );
          assert.deepEqual(s.payload, payload);
          assert.deepEqual(built.bytes.subarray(s.payloadOffset, s.payloadOffset + s.payload.byteLength), payload);
          if (ram) assert.deepEqual(decodeRamPayload(s.payload, { blocks: RAM_BLOCKS, section: s }), ram);
          if (vfio) assert.deepEqual(decodeVfioPayload(s.payload, { section: s }), vfio);
        });
      }),
      { numRuns: 150 },
    );
  });

  test('one byte pushed at a time works too (and the chunk queue stays short)', () => {
    const built = sampleStream();
    const d = new StreamDecoder();
    const got: DecodedSection[] = [];
    for (let i = 0; i < built.bytes.byteLength; i++) got.push(...d.push(built.bytes.subarray(i, i + 1)));
    d.finish();
    assertPrefix(got, built);
    assert.equal(got.length, built.sections.length);
  });

  test('every single flipped byte of a sample stream is refused, with any flip pattern', () => {
    const built = sampleStream();
    const clean = built.bytes;
    // 0x04 turns FULL (0x04) into EOF (0x00), 0x01 turns PART into START and EOF into START …
    for (const mask of [0x01, 0x04, 0x80, 0xff]) {
      for (let i = 0; i < clean.byteLength; i++) {
        const bad = clean.slice();
        bad[i]! ^= mask;
        const { sections, error } = decodeChunked(bad, [977]);
        assert.ok(isStreamError(error), `flip 0x${mask.toString(16)} at ${i} went unnoticed`);
        assertPrefix(sections, built);
        assert.ok(
          error.offset <= i + 1 || error.code === 'truncated' || error.code === 'too-large',
          `${error.message}`,
        );
      }
    }
  });

  test('property: a flipped byte anywhere in a random stream is refused; what came before it is intact', () => {
    fc.assert(
      fc.property(streamPlanArb, fc.nat(), fc.integer({ min: 1, max: 255 }), chunkSizesArb, (plan, at, mask, sizes) => {
        const built = buildStream(plan);
        const bad = built.bytes.slice();
        const i = at % bad.byteLength;
        bad[i]! ^= mask;
        const { sections, error } = decodeChunked(bad, sizes);
        assert.ok(isStreamError(error), `flip at ${i} went unnoticed`);
        assertPrefix(sections, built);
        // Sections wholly before the flipped byte are all delivered.
        let end = encodeHeader().byteLength;
        let before = 0;
        for (const r of built.records.slice(1, -1)) {
          end += r.byteLength;
          if (end <= i) before++;
        }
        assert.ok(sections.length >= before, `${sections.length} delivered, ${before} lie before byte ${i}`);
      }),
      { numRuns: 300 },
    );
  });

  test('property: a stream cut anywhere fails at finish() as truncated, after delivering a clean prefix', () => {
    fc.assert(
      fc.property(streamPlanArb, fc.nat(), chunkSizesArb, (plan, at, sizes) => {
        const built = buildStream(plan);
        const cut = at % built.bytes.byteLength;
        const { sections, error } = decodeChunked(built.bytes.subarray(0, cut), sizes);
        assert.ok(isStreamError(error, 'truncated'), `cut at ${cut}: ${error}`);
        assert.equal(error.offset, cut);
        assertPrefix(sections, built);
      }),
      { numRuns: 200 },
    );
    // And the smallest cases.
    for (const bytes of [new Uint8Array(0), encodeHeader().subarray(0, 10), encodeHeader()]) {
      const { error } = decodeChunked(bytes, [1]);
      assert.ok(isStreamError(error, 'truncated'));
    }
  });

  test('property: a duplicated, dropped or swapped section is refused, naming the section', () => {
    fc.assert(
      fc.property(
        streamPlanArb,
        fc.constantFrom('duplicate', 'drop', 'swap'),
        fc.nat(),
        chunkSizesArb,
        (plan, op, at, sizes) => {
          const built = buildStream(plan);
          const secs = built.records.slice(1, -1);
          const k = at % secs.length;
          const bodies = secs.slice();
          if (op === 'duplicate') bodies.splice(k, 0, secs[k]!);
          else if (op === 'drop') bodies.splice(k, 1);
          else if (k + 1 < secs.length) [bodies[k], bodies[k + 1]] = [bodies[k + 1]!, bodies[k]!];
          else return; // nothing to swap with
          const bytes = concat([built.records[0]!, ...bodies, built.records.at(-1)!]);
          const { sections, error } = decodeChunked(bytes, sizes);
          assert.ok(isStreamError(error, 'sequence'), `${op} ${k}: ${error}`);
          assertPrefix(sections, built);
          assert.equal(sections.length, op === 'duplicate' ? k + 1 : k);
          if (op === 'drop' && k === secs.length - 1) {
            // The last section is gone: the EOF record's count says so.
            assert.match(error.message, /EOF record counts/);
            assert.equal(error.section?.seq, k);
          } else {
            // The section found in the wrong place is named: its idstr, id and the sequence number it carries.
            const shown = op === 'duplicate' ? k : op === 'drop' ? k + 1 : k + 1;
            const want = built.sections[shown]!;
            assert.equal(error.section?.sectionId, want.sectionId);
            assert.equal(error.section?.seq, shown);
            assert.match(error.message, new RegExp(`section id ${want.sectionId}, seq ${shown} at byte`));
            // The idstr too, when the reader can know it: in the section's own header, or from its START.
            const knowable =
              want.type === 'start' || want.type === 'full' || sections.some((s) => s.sectionId === want.sectionId);
            assert.equal(error.section?.idstr, knowable ? want.idstr : undefined);
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  describe("sections out of QEMU's order are refused (code 'order')", () => {
    const ram = { sectionId: 0, idstr: 'ram', instanceId: 0, versionId: 4 };
    const dev = { sectionId: 1, idstr: 'dev/vfio', instanceId: 0, versionId: 1 };
    const cases: [string, (e: StreamEncoder) => Uint8Array[][], RegExp][] = [
      ['PART before START', (e) => [e.part(0, [])], /PART for section id 0, which no START opened/],
      ['END before START', (e) => [e.end(3, [])], /END for section id 3, which no START/],
      ['START twice', (e) => [e.start(ram, []), e.start(ram, [])], /already started/],
      ['PART after END', (e) => [e.start(ram, []), e.end(0, []), e.part(0, [])], /PART after the section's END/],
      ['END twice', (e) => [e.start(ram, []), e.end(0, []), e.end(0, [])], /END after the section's END/],
      ['FULL before END', (e) => [e.start(dev, []), e.full(dev, [])], /FULL for section id 1 before its END/],
      [
        'PART after a FULL',
        (e) => [e.start(ram, []), e.start(dev, []), e.end(1, []), e.full(dev, []), e.part(0, [])],
        /PART after the FULL sections began/,
      ],
      ['START after a FULL', (e) => [e.full(dev, []), e.start(ram, [])], /START after the FULL sections began/],
      ['two FULLs for one id', (e) => [e.full(dev, []), e.full(dev, [])], /second FULL/],
      [
        'FULL naming another entry than its START',
        (e) => [e.start(dev, []), e.end(1, []), e.full({ ...dev, idstr: 'other/vfio' }, [])],
        /FULL names "other\/vfio" instance 0, its START "dev\/vfio"/,
      ],
      [
        'two section ids for one entry',
        (e) => [e.start(ram, []), e.start({ ...ram, sectionId: 5 }, [])],
        /"ram" instance 0 already has section id 0/,
      ],
      ['EOF with a section not ended', (e) => [e.start(ram, []), e.part(0, [])], /EOF before the END section/],
    ];
    for (const [name, make, re] of cases) {
      test(name, () => {
        const e = new StreamEncoder();
        const bytes = concat([...e.header(), ...make(e).flat(), ...e.eof()]);
        const { error } = decodeChunked(bytes, [7]);
        assert.ok(isStreamError(error, 'order'), `${error}`);
        assert.match(error.message, re);
        assert.ok(error.section?.sectionId !== undefined);
      });
    }

    test('the allowed interleavings: PARTs of one section after another END, a FULL with no START', () => {
      const e = new StreamEncoder();
      const bytes = concat(
        [
          e.header(),
          e.start(ram, []),
          e.start(dev, []),
          e.part(0, []),
          e.end(0, []),
          e.part(1, []),
          e.end(1, []),
          e.full(dev, []),
          e.full({ sectionId: 2, idstr: 'timer', instanceId: 0, versionId: 1 }, []),
          e.eof(),
        ].flat(),
      );
      const { sections, error } = decodeChunked(bytes);
      assert.equal(error, null);
      assert.equal(sections.length, 8);
      // PART/END carry the identity from their START.
      assert.equal(sections[4]!.idstr, 'dev/vfio');
      assert.equal(sections[4]!.versionId, 1);
    });
  });

  test('the memory bound: a section over the limit is refused from its header, before it is buffered', () => {
    const big = new Uint8Array(1 << 17);
    const e = new StreamEncoder({ maxSectionBytes: Number.POSITIVE_INFINITY });
    const head = concat(e.header());
    const section = concat(e.start({ sectionId: 0, idstr: 'ram', instanceId: 0, versionId: 4 }, [big]));
    const d = new StreamDecoder({ maxSectionBytes: 1 << 16 });
    d.push(head);
    // The first 4 KiB of the section hold its header: that is enough to refuse it.
    assert.throws(
      () => d.push(section.subarray(0, 4096)),
      (err: unknown) =>
        isStreamError(err, 'too-large') &&
        /START section of 131106 bytes is over the 65536-byte limit/.test(err.message) &&
        err.offset === head.byteLength &&
        err.section?.idstr === 'ram',
    );
    assert.ok(d.pendingBytes <= 4096);
    // The decoder stays failed.
    assert.throws(
      () => d.push(section.subarray(4096)),
      (err: unknown) => isStreamError(err, 'too-large'),
    );
    assert.throws(
      () => d.finish(),
      (err: unknown) => isStreamError(err, 'too-large'),
    );
  });

  test('the limit is exact: the largest section passes at its own size and fails one byte under it', () => {
    const built = sampleStream();
    const largest = Math.max(...built.records.slice(1, -1).map((r) => r.byteLength));
    assert.equal(decodeChunked(built.bytes, [1000], { maxSectionBytes: largest }).error, null);
    const { error } = decodeChunked(built.bytes, [1000], { maxSectionBytes: largest - 1 });
    assert.ok(isStreamError(error, 'too-large'));
  });

  test('the encoder refuses to build what a reader would refuse (split the payload instead)', () => {
    const e = new StreamEncoder({ maxSectionBytes: 1000 });
    assert.throws(() => e.part(0, [new Uint8Array(1000)]), /over the 1000-byte limit: split its payload/);
    assert.equal(e.sequence, 0, 'a refused section takes no sequence number');
    assert.throws(() => e.start({ sectionId: 0, idstr: 'x'.repeat(256), instanceId: 0, versionId: 1 }, []), RangeError);
    assert.throws(() => e.part(-1, []), RangeError);
    assert.throws(() => e.start({ sectionId: 0, idstr: 'x', instanceId: 2 ** 32, versionId: 1 }, []), RangeError);
  });

  describe('foreign or damaged headers are refused, saying what they are', () => {
    const header = encodeHeader();
    const cases: [string, Uint8Array, RegExp][] = [
      [
        'not a stream',
        new TextEncoder().encode('hello world, this is not a stream at all.............'),
        /no "QEVM" magic/,
      ],
      ['QEMU compat version 2', concat([header.subarray(0, 4), be32(2), header.subarray(8)]), /stream file version 2/],
      [
        'a QEMU stream without configuration',
        concat([header.subarray(0, 8), Uint8Array.of(RecordType.SECTION_START), new Uint8Array(60)]),
        /record 0x1 where the CONFIGURATION record belongs/,
      ],
      [
        'a QEMU stream for machine pc-q35-8.2',
        concat([header.subarray(0, 9), be32(10), new TextEncoder().encode('pc-q35-8.2'), new Uint8Array(40)]),
        /machine type "pc-q35-8.2", not "vfio-migrate"/,
      ],
      [
        'our machine name without the format subsection',
        concat([header.subarray(0, 25), Uint8Array.of(RecordType.SECTION_START), new Uint8Array(40)]),
        /lacks the "configuration\/vfio-migrate-stream" subsection/,
      ],
      [
        'format version 1 (the layout without a checksummed EOF)',
        concat([header.subarray(0, 26), Uint8Array.of(19), new TextEncoder().encode('vfio-migrate/format'), be32(1)]),
        /subsection "vfio-migrate\/format" where "configuration\/vfio-migrate-stream" belongs/,
      ],
      [
        'a newer format version',
        concat([header.subarray(0, 60), be32(FORMAT_VERSION + 1)]),
        new RegExp(`stream format version ${FORMAT_VERSION + 1}; this reader reads version ${FORMAT_VERSION}`),
      ],
    ];
    for (const [name, bytes, re] of cases) {
      test(name, () => {
        for (const sizes of [[bytes.byteLength], [1], [3]]) {
          const { error } = decodeChunked(bytes, sizes);
          assert.ok(isStreamError(error, 'header'), `${error}`);
          assert.match(error.message, re);
        }
      });
    }
  });

  test('QEMU-only records where a section belongs are refused by name', () => {
    const e = new StreamEncoder();
    const bytes = concat([...e.header(), Uint8Array.of(RecordType.VMDESCRIPTION, 0, 0, 0, 0)]);
    const { error } = decodeChunked(bytes);
    assert.ok(isStreamError(error, 'record-type'));
    assert.match(error.message, /QEMU record VMDESCRIPTION/);
    const { error: e2 } = decodeChunked(concat([...e.header(), Uint8Array.of(0x42)]));
    assert.ok(isStreamError(e2, 'record-type'));
    assert.match(e2.message, /unknown record type 0x42 .* at byte 64/);
  });

  test('bytes after EOF are kept for the caller (the return path), not read as stream', () => {
    const built = sampleStream();
    const rp = Uint8Array.of(0x52, 0x50, 1, 0, 0, 0, 0);
    const d = new StreamDecoder();
    const got = d.push(concat([built.bytes, rp]));
    assert.equal(got.length, built.sections.length);
    assert.ok(d.ended);
    assert.deepEqual(d.push(Uint8Array.of(9)), []);
    d.finish();
    assert.deepEqual(d.takeRemainder(), Uint8Array.of(...rp, 9));
  });

  test('errors read like a location: what, which section, which byte', () => {
    const built = sampleStream();
    const bad = built.bytes.slice();
    const third = encodeHeader().byteLength + built.records[1]!.byteLength + built.records[2]!.byteLength;
    bad[third + 20]! ^= 1; // inside the third section (seq 2, the RAM PART)
    const { error } = decodeChunked(bad);
    assert.ok(isStreamError(error, 'checksum'));
    assert.deepEqual(error.section, { idstr: 'ram', sectionId: 0, seq: 2 });
    assert.equal(error.offset, third);
    assert.match(error.message, /^migration stream: checksum mismatch .* in "ram", section id 0, seq 2 at byte \d+$/);
  });
});
