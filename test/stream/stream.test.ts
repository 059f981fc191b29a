// The migration stream: round trips through random chunking, and every kind of damage refused with an
// error naming the section.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { concat } from '../../src/stream/bytes.ts';
import { crc32c } from '../../src/stream/crc32c.ts';
import { type DecodedSection, StreamDecoder } from '../../src/stream/decoder.ts';
import { StreamEncoder } from '../../src/stream/encoder.ts';
import { StreamError } from '../../src/stream/errors.ts';
import { decodeRamPayload, RamPayloadBuilder } from '../../src/stream/ram.ts';
import { decodeVfioPayload, vfioConfigPayload, vfioDataPayload, vfioSetupPayload } from '../../src/stream/vfio.ts';

function crcRef(data: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of data) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return ~c >>> 0;
}

/** A small stream: header, RAM START, a PART with pages, VFIO START + data, ENDs, a FULL, EOF. */
function sampleStream(pages: Uint8Array[]): { bytes: Uint8Array; sections: number } {
  const e = new StreamEncoder();
  const parts: Uint8Array[][] = [e.header()];
  const ram = new RamPayloadBuilder();
  ram.memSize(pages.length * 4096, [{ name: 'pc.ram', usedLength: pages.length * 4096 }]);
  ram.eos();
  parts.push(e.start({ sectionId: 0, idstr: 'ram', instanceId: 0, versionId: 4 }, ram.take().pieces));
  parts.push(e.start({ sectionId: 1, idstr: '0000:00:05.0/vfio', instanceId: 0, versionId: 1 }, vfioSetupPayload()));
  pages.forEach((p, i) => {
    if (p.every((b) => b === 0)) ram.zero('pc.ram', i * 4096);
    else ram.page('pc.ram', i * 4096, p);
  });
  ram.eos();
  parts.push(e.part(0, ram.take().pieces));
  parts.push(e.part(1, vfioDataPayload(Uint8Array.from([1, 2, 3, 4, 5]))));
  ram.eos();
  parts.push(e.end(0, ram.take().pieces));
  parts.push(e.end(1, [new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xef, 0x10, 0, 1])]));
  parts.push(
    e.full(
      { sectionId: 1, idstr: '0000:00:05.0/vfio', instanceId: 0, versionId: 1 },
      vfioConfigPayload(new Uint8Array(256).fill(9)),
    ),
  );
  parts.push(e.eof());
  return { bytes: concat(parts.flat()), sections: 7 };
}

function decodeAll(bytes: Uint8Array, splits: number[]): DecodedSection[] {
  const d = new StreamDecoder();
  const out: DecodedSection[] = [];
  let at = 0;
  let i = 0;
  while (at < bytes.byteLength) {
    const n = Math.max(1, splits[i++ % splits.length] ?? 1);
    out.push(...d.push(bytes.slice(at, at + n)));
    at += n;
  }
  d.finish();
  return out;
}

const pagesArb = fc.array(
  fc.oneof(fc.constant(new Uint8Array(4096)), fc.uint8Array({ minLength: 4096, maxLength: 4096 })),
  { minLength: 1, maxLength: 6 },
);

describe('migration stream', () => {
  test('CRC-32C: the standard check value and a bitwise reference on random data at any alignment', () => {
    assert.equal(crc32c(new TextEncoder().encode('123456789')), 0xe3069283);
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.nat(7), (data, skew) => {
        const v = data.subarray(Math.min(skew, data.byteLength));
        assert.equal(crc32c(v), crcRef(v));
        const cut = v.byteLength >> 1;
        assert.equal(crc32c(v.subarray(cut), crc32c(v.subarray(0, cut))), crcRef(v));
      }),
    );
  });

  test('golden bytes: the VFIO setup payload and a section trailer', () => {
    assert.deepEqual(
      [...concat(vfioSetupPayload())],
      [0xff, 0xff, 0xff, 0xff, 0xef, 0x10, 0, 3, 0xff, 0xff, 0xff, 0xff, 0xef, 0x10, 0, 1],
    );
    const e = new StreamEncoder();
    const s = concat(e.part(2, [Uint8Array.of(0xaa)]));
    // 02 | 00000002 | 00000001 | aa | 7e 00000002 | seq 00000000 | crc
    assert.deepEqual([...s.subarray(0, 15)], [2, 0, 0, 0, 2, 0, 0, 0, 1, 0xaa, 0x7e, 0, 0, 0, 2]);
    assert.deepEqual([...s.subarray(15, 19)], [0, 0, 0, 0]);
    assert.equal(new DataView(s.buffer).getUint32(19, false), crc32c(s.subarray(0, 19)));
  });

  test('round trip through any chunking: sections, RAM pages and VFIO data come back exactly', () => {
    fc.assert(
      fc.property(
        pagesArb,
        fc.array(fc.integer({ min: 1, max: 9000 }), { minLength: 1, maxLength: 5 }),
        (pages, splits) => {
          const { bytes, sections } = sampleStream(pages);
          const out = decodeAll(bytes, splits);
          assert.equal(out.length, sections);
          assert.deepEqual(
            out.map((s) => s.type),
            ['start', 'start', 'part', 'part', 'end', 'end', 'full'],
          );
          const blocks = new Map([['pc.ram', pages.length * 4096]]);
          const recs = [...decodeRamPayload(out[2]!.payload, { blocks })];
          pages.forEach((p, i) => {
            const r = recs[i]!;
            if (p.every((b) => b === 0))
              assert.deepEqual(r, { kind: 'zero', block: 'pc.ram', offset: BigInt(i * 4096), fill: 0 });
            else assert.ok(r.kind === 'page' && Buffer.from(r.data).equals(p) && r.offset === BigInt(i * 4096));
          });
          const vfio = [...decodeVfioPayload(out[3]!.payload)];
          assert.ok(vfio[0]!.kind === 'data' && [...vfio[0]!.data].join() === '1,2,3,4,5');
          const cfg = [...decodeVfioPayload(out[6]!.payload)];
          assert.ok(cfg[0]!.kind === 'config' && cfg[0]!.data.byteLength === 256);
        },
      ),
      { numRuns: 60 },
    );
  });

  test('any single flipped byte is refused (never a delivered wrong section)', () => {
    const { bytes } = sampleStream([new Uint8Array(4096).fill(7), new Uint8Array(4096)]);
    const clean = decodeAll(bytes, [bytes.byteLength]);
    for (let i = 0; i < bytes.byteLength; i += bytes.byteLength > 4000 ? 7 : 1) {
      const bad = bytes.slice();
      bad[i]! ^= 0x40;
      let got: DecodedSection[] = [];
      assert.throws(
        () => {
          got = decodeAll(bad, [bad.byteLength]);
        },
        (e: unknown) => e instanceof StreamError,
        `flip at ${i} went unnoticed`,
      );
      // Whatever was delivered before the error is byte-identical to the clean decode.
      for (const [k, s] of got.entries()) assert.deepEqual(s.payload, clean[k]!.payload);
    }
  });

  test('a truncated stream fails at finish(), naming where', () => {
    const { bytes } = sampleStream([new Uint8Array(4096).fill(1)]);
    for (const cut of [5, 20, 40, bytes.byteLength - 1]) {
      const d = new StreamDecoder();
      d.push(bytes.slice(0, cut));
      assert.throws(
        () => d.finish(),
        (e: unknown) => e instanceof StreamError && /ends/.test(e.message),
      );
    }
  });

  test('duplicated, dropped or swapped sections are refused with the section named', () => {
    const e = new StreamEncoder();
    const head = concat(e.header());
    const s0 = concat(e.start({ sectionId: 0, idstr: 'ram', instanceId: 0, versionId: 4 }, [new Uint8Array(8)]));
    const s1 = concat(e.part(0, [new Uint8Array(8)]));
    const s2 = concat(e.end(0, [new Uint8Array(8)]));
    const eof = concat(e.eof());
    for (const [name, body] of [
      ['duplicate', [s0, s1, s1, s2]],
      ['drop', [s0, s2]],
      ['swap', [s0, s2, s1]],
    ] as const) {
      assert.throws(
        () => decodeAll(concat([head, ...body, eof]), [1 << 20]),
        (err: unknown) => err instanceof StreamError && /ram/.test(err.message),
        name,
      );
    }
  });

  test('a section over the limit is refused from its header, before it is buffered whole', () => {
    const e = new StreamEncoder();
    const d = new StreamDecoder({ maxSectionBytes: 1 << 16 });
    d.push(concat(e.header()));
    const big = concat(e.start({ sectionId: 0, idstr: 'ram', instanceId: 0, versionId: 4 }, [new Uint8Array(1 << 17)]));
    assert.throws(
      () => d.push(big.subarray(0, 64)),
      (err: unknown) => err instanceof StreamError && /exceeds/.test(err.message),
    );
  });

  test('RAM payload damage: unknown flags, CONTINUE without a block, an unknown block, a page past the end', () => {
    const blocks = new Map([['pc.ram', 8192]]);
    const bad = (b: Uint8Array) => assert.throws(() => [...decodeRamPayload(b, { blocks })], StreamError);
    const rec = (v: bigint) => {
      const x = new Uint8Array(8);
      new DataView(x.buffer).setBigUint64(0, v, false);
      return x;
    };
    bad(rec(0x400n));
    bad(concat([rec(0x22n), Uint8Array.of(0)]));
    const other = new RamPayloadBuilder();
    other.zero('other', 0);
    other.eos();
    bad(concat(other.take().pieces));
    const past = new RamPayloadBuilder();
    past.zero('pc.ram', 8192);
    past.eos();
    bad(concat(past.take().pieces));
  });
});
