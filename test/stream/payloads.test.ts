// RAM and VFIO payloads: what the builders refuse to write, and what the decoders refuse to read (each a
// StreamError with the offset of the bad record, in stream terms when the section is given).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { be64, concat } from '../../src/stream/bytes.ts';
import { VfioTag } from '../../src/stream/constants.ts';
import { StreamError } from '../../src/stream/errors.ts';
import { decodeRamPayload, RamPayloadBuilder } from '../../src/stream/ram.ts';
import {
  decodeVfioPayload,
  vfioConfigPayload,
  vfioDataPayload,
  vfioSetupPayload,
  X_DEV_FLAVOR,
} from '../../src/stream/vfio.ts';
import { pageOf, RAM_BLOCKS } from './support.ts';

const rec = (v: bigint) => be64(v);
const name = (s: string) => Uint8Array.of(s.length, ...new TextEncoder().encode(s));
const EOS = rec(0x10n);
const tag = (t: bigint) => be64(t);

function refused(f: () => unknown, re: RegExp, offset?: number): void {
  assert.throws(f, (e: unknown) => {
    assert.ok(e instanceof StreamError, `${e}`);
    assert.equal(e.code, 'payload');
    assert.match(e.message, re);
    if (offset !== undefined) assert.equal(e.offset, offset, e.message);
    return true;
  });
}

describe('RAM payloads', () => {
  const ram =
    (...parts: Uint8Array[]) =>
    () =>
      decodeRamPayload(concat(parts), { blocks: RAM_BLOCKS });

  test('refused: unknown or contradictory flags', () => {
    refused(ram(rec(0x400n), EOS), /unsupported flags 0x400/, 0);
    refused(ram(rec(0x01n), EOS), /unsupported flags 0x1/); // FULL, obsolete
    refused(ram(rec(0x40n), EOS), /unsupported flags 0x40/); // XBZRLE
    refused(ram(rec(0x1200n), EOS), /malformed MULTIFD_FLUSH record 0x1200/); // MULTIFD_FLUSH takes no address
    refused(ram(rec(0x0an), name('pc.ram'), EOS), /name no record kind/); // PAGE | ZERO
    refused(ram(rec(0x30n)), /malformed EOS/); // EOS | CONTINUE
    refused(ram(rec(0x1010n)), /malformed EOS/); // EOS with an address
    refused(ram(rec(0x24n), EOS), /MEM_SIZE with CONTINUE/);
  });

  test('refused: CONTINUE with no block named earlier in the section, an unknown block, a page outside it', () => {
    refused(ram(rec(0x22n), Uint8Array.of(0), EOS), /CONTINUE with no block named earlier/, 0);
    refused(ram(rec(0x02n), name('other'), Uint8Array.of(0), EOS), /unknown RAM block "other"/);
    refused(
      ram(rec(0x8000n | 0x02n), name('pc.ram'), Uint8Array.of(0), EOS),
      /page at 32768 is outside block "pc.ram"/,
    );
    refused(ram(rec(0x02n), Uint8Array.of(0), EOS), /empty block name/);
  });

  test('refused: records cut short, no EOS, bytes after EOS', () => {
    refused(ram(rec(0x08n), name('pc.ram'), new Uint8Array(100)), /page runs past the end/, 0);
    refused(ram(rec(0x02n), name('pc.ram')), /fill byte runs past the end/);
    refused(ram(rec(0x02n), Uint8Array.of(6, 0x70)), /block name runs past/);
    refused(ram(new Uint8Array(5)), /record header runs past/);
    refused(ram(rec(0x02n), name('pc.ram'), Uint8Array.of(0)), /payload ends without EOS/, 16);
    refused(ram(new Uint8Array(0)), /payload ends without EOS/);
    refused(ram(EOS, Uint8Array.of(1)), /1 bytes after EOS/, 8);
  });

  test('refused: MEM_SIZE that does not match this side, does not add up, or sits outside START', () => {
    const mem = (total: bigint, ...blocks: [string, bigint][]) =>
      concat([rec(total | 4n), ...blocks.flatMap(([n, l]) => [name(n), be64(l)]), EOS]);
    const both: [string, bigint][] = [
      ['pc.ram', 0x8000n],
      ['vga.vram', 0x4000n],
    ];
    assert.equal(decodeRamPayload(mem(0xc000n, ...both), { blocks: RAM_BLOCKS }).length, 2);
    refused(
      () => decodeRamPayload(mem(0x8000n, ['pc.ram', 0x8000n]), { blocks: RAM_BLOCKS }),
      /1 RAM block\(s\), this side 2/,
    );
    refused(
      () => decodeRamPayload(mem(0xd000n, ['pc.ram', 0x9000n], ['vga.vram', 0x4000n]), { blocks: RAM_BLOCKS }),
      /"pc.ram" is 36864 bytes at the source, 32768 here/,
    );
    refused(
      () => decodeRamPayload(mem(0xb000n, ...both), { blocks: RAM_BLOCKS }),
      /add up to 49152, MEM_SIZE says 45056/,
    );
    refused(() => decodeRamPayload(mem(0x1000n, ['x', 0n]), {}), /has length 0/);
    const section = { type: 'part' as const, idstr: 'ram', sectionId: 0, seq: 4, payloadOffset: 1000 };
    assert.throws(
      () => decodeRamPayload(mem(0xc000n, ...both), { blocks: RAM_BLOCKS, section }),
      (e: unknown) =>
        e instanceof StreamError &&
        /MEM_SIZE in a PART section/.test(e.message) &&
        e.offset === 1000 &&
        e.section?.seq === 4 &&
        e.section.idstr === 'ram',
    );
  });

  test('without a block map (the analyzer), any block is accepted', () => {
    const recs = decodeRamPayload(concat([rec(0x7000_0002n), name('whatever'), Uint8Array.of(3), EOS]));
    assert.deepEqual(recs[0], { kind: 'zero', block: 'whatever', offset: 0x7000_0000n, fill: 3 });
  });

  test('a bad record late in the payload refuses the whole payload (nothing half-applied)', () => {
    const b = new RamPayloadBuilder();
    for (let i = 0; i < 4; i++) b.page('pc.ram', i * 4096, pageOf(i));
    const good = concat(b.take().pieces);
    const bad = concat([good, rec(0x22n | 0x10000n), Uint8Array.of(0), EOS]);
    refused(() => decodeRamPayload(bad, { blocks: RAM_BLOCKS }), /outside block/, good.byteLength);
  });

  test('the builder refuses what it cannot encode', () => {
    const b = new RamPayloadBuilder();
    assert.throws(() => b.page('pc.ram', 100, new Uint8Array(4096)), /offset 100 is not a multiple of 4096/);
    assert.throws(() => b.page('pc.ram', 0, new Uint8Array(4095)), /a RAM page is 4096 bytes/);
    assert.throws(() => b.zero('pc.ram', 0, 256), /fill byte 256/);
    assert.throws(() => b.zero('', 0), /1 to 255 bytes/);
    assert.throws(() => b.zero('x'.repeat(256), 0), /1 to 255 bytes/);
    assert.throws(() => b.memSize(8192, [{ name: 'a', usedLength: 4096 }]), /add up to 4096 bytes, total says 8192/);
    assert.throws(() => b.memSize(100, [{ name: 'a', usedLength: 100 }]), /not a positive multiple of 4096/);
    assert.ok(b.isEmpty, 'nothing half-written');
    assert.equal(b.byteLength, 0);
  });

  test('property: builder output decodes to what went in; headers share pieces, pages are the callers', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            block: fc.constantFrom('pc.ram', 'vga.vram'),
            page: fc.nat(3),
            zero: fc.boolean(),
            seed: fc.nat(),
          }),
          { maxLength: 40 },
        ),
        (list) => {
          const b = new RamPayloadBuilder();
          const pages: Uint8Array[] = [];
          for (const r of list) {
            if (r.zero) b.zero(r.block, r.page * 4096, r.seed & 255);
            else {
              const p = pageOf(r.seed);
              pages.push(p);
              b.page(r.block, r.page * 4096, p);
            }
          }
          b.eos();
          const { pieces, byteLength } = b.take();
          assert.equal(
            byteLength,
            pieces.reduce((n, p) => n + p.byteLength, 0),
          );
          // Page contents are the caller's arrays; record headers between two pages are one piece.
          assert.equal(pieces.filter((p) => pages.includes(p)).length, pages.length);
          assert.equal(pieces.length, 2 * pages.length + 1);
          const recs = decodeRamPayload(concat(pieces), { blocks: RAM_BLOCKS });
          assert.equal(recs.length, list.length + 1);
          list.forEach((r, i) => {
            const d = recs[i]!;
            assert.equal(d.kind, r.zero ? 'zero' : 'page');
            assert.ok(d.kind === 'zero' || d.kind === 'page');
            assert.equal(d.block, r.block);
            assert.equal(d.offset, BigInt(r.page * 4096));
          });
        },
      ),
      { numRuns: 100 },
    );
  });
});

describe('VFIO payloads', () => {
  const T = VfioTag;
  const vfio =
    (...parts: Uint8Array[]) =>
    () =>
      decodeVfioPayload(concat(parts));

  test('the tag sequences decode as written', () => {
    assert.deepEqual(decodeVfioPayload(concat(vfioSetupPayload())), [{ kind: 'setup' }, { kind: 'end' }]);
    assert.deepEqual(decodeVfioPayload(concat(vfioDataPayload([Uint8Array.of(1), Uint8Array.of(2, 3)]))), [
      { kind: 'data', data: Uint8Array.of(1) },
      { kind: 'data', data: Uint8Array.of(2, 3) },
      { kind: 'end' },
    ]);
    // A config blob may contain anything, tags included: it runs to the closing END_OF_STATE.
    const blob = concat([tag(T.END_OF_STATE), tag(T.DEV_DATA_STATE), Uint8Array.of(1)]);
    assert.deepEqual(decodeVfioPayload(concat(vfioConfigPayload(blob))), [
      { kind: 'config', data: blob },
      { kind: 'end' },
    ]);
    assert.deepEqual(decodeVfioPayload(concat([tag(T.DEV_INIT_DATA_SENT)])), [{ kind: 'init-data-sent' }]);
  });

  test('a v1 or v2 START names its flavor first (our X_DEV_FLAVOR); a seed START is as before', () => {
    const v2 = concat(vfioSetupPayload('v2'));
    assert.deepEqual(v2.subarray(0, 16), concat([tag(X_DEV_FLAVOR), be64(2n)]));
    assert.deepEqual(decodeVfioPayload(v2), [{ kind: 'flavor', flavor: 'v2' }, { kind: 'setup' }, { kind: 'end' }]);
    assert.deepEqual(decodeVfioPayload(concat(vfioSetupPayload('v1')))[0], { kind: 'flavor', flavor: 'v1' });
    assert.deepEqual(concat(vfioSetupPayload('seed')), concat(vfioSetupPayload()));
    assert.equal(concat(vfioSetupPayload('seed')).byteLength, 16);
    assert.deepEqual(decodeVfioPayload(concat([tag(X_DEV_FLAVOR), be64(9n), tag(T.END_OF_STATE)]))[0], {
      kind: 'flavor',
      flavor: 'code 9',
    });
    refused(vfio(tag(X_DEV_FLAVOR), Uint8Array.of(0, 2)), /X_DEV_FLAVOR code runs past the end/);
  });

  test('refused: unknown tags, a tag we do not support, stray bytes', () => {
    refused(vfio(tag(0xffffffffef100009n)), /unknown tag 0xffffffffef100009/, 0);
    refused(vfio(tag(0x1234n)), /unknown tag 0x0000000000001234/);
    refused(vfio(tag(0xffffffffef100006n)), /tag DEV_CONFIG_LOAD_READY is not supported/);
    refused(vfio(tag(T.DEV_DATA_STATE), be64(0n), Uint8Array.of(1, 2)), /2 stray bytes where a tag belongs/, 16);
  });

  test('refused: SETUP not followed by END_OF_STATE, a DATA block past the end, CONFIG not closed', () => {
    refused(
      vfio(tag(T.DEV_SETUP_STATE), tag(T.DEV_DATA_STATE), be64(0n), tag(T.END_OF_STATE)),
      /SETUP_STATE is not followed/,
    );
    refused(vfio(tag(T.DEV_SETUP_STATE)), /SETUP_STATE is not followed/);
    refused(
      vfio(tag(T.DEV_DATA_STATE), be64(100n), new Uint8Array(50), tag(T.END_OF_STATE)),
      /block of 100 bytes runs past/,
    );
    refused(vfio(tag(T.DEV_DATA_STATE), Uint8Array.of(0, 0)), /size runs past/);
    refused(vfio(tag(T.DEV_CONFIG_STATE), Uint8Array.of(1, 2, 3)), /not closed by END_OF_STATE/);
  });

  test('refused: no terminator, or bytes after it', () => {
    refused(vfio(new Uint8Array(0)), /payload ends without END_OF_STATE/);
    refused(vfio(tag(T.DEV_DATA_STATE), be64(1n), Uint8Array.of(7)), /payload ends without END_OF_STATE/, 17);
    refused(vfio(tag(T.END_OF_STATE), tag(T.END_OF_STATE)), /8 bytes after END_OF_STATE/, 8);
    refused(vfio(tag(T.DEV_INIT_DATA_SENT), Uint8Array.of(0)), /1 bytes after DEV_INIT_DATA_SENT/);
  });

  test('errors carry stream offsets and the section when it is given', () => {
    const section = { idstr: '0000:00:05.0/vfio', sectionId: 1, seq: 7, payloadOffset: 5000 };
    assert.throws(
      () => decodeVfioPayload(concat([tag(T.END_OF_STATE), tag(0n)]), { section }),
      (e: unknown) =>
        e instanceof StreamError &&
        e.offset === 5008 &&
        /in "0000:00:05.0\/vfio", section id 1, seq 7 at byte 5008$/.test(e.message),
    );
  });
});
