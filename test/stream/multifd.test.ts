// The multifd codec: init and page packets round-trip in QEMU's byte layout (checked field by field at
// their C offsets), and every malformed packet is refused with a StreamError naming what is wrong.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { concat } from '../../src/stream/bytes.ts';
import { StreamError } from '../../src/stream/errors.ts';
import {
  decodeMultifdHeader,
  decodeMultifdInit,
  encodeMultifdInit,
  MULTIFD_FLAG_SYNC,
  MULTIFD_HEADER_BYTES,
  MULTIFD_INIT_BYTES,
  MULTIFD_PACKET_PAGES,
  readMultifdOffsets,
  writeMultifdHeader,
} from '../../src/stream/multifd.ts';
import { decodeRamPayload, RamPayloadBuilder } from '../../src/stream/ram.ts';

const BLOCK = 1 << 30;

function packet(normal: number[], zero: number[], flags = 0, packetNum = 7): Uint8Array {
  const out = new Uint8Array(MULTIFD_HEADER_BYTES + 8 * (normal.length + zero.length));
  const n = writeMultifdHeader(
    out,
    { flags, pagesAlloc: MULTIFD_PACKET_PAGES, packetNum, ramblock: 'pc.ram' },
    normal,
    zero,
  );
  assert.equal(n, out.byteLength);
  return out;
}

function refused(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof StreamError && re.test(e.message));
}

describe('multifd init packet', () => {
  test('layout: magic, version, uuid, channel id, 64 bytes', () => {
    const uuid = Uint8Array.from({ length: 16 }, (_, i) => i + 1);
    const b = encodeMultifdInit({ uuid, id: 3 });
    assert.equal(b.byteLength, MULTIFD_INIT_BYTES);
    assert.deepEqual([...b.subarray(0, 8)], [0x11, 0x22, 0x33, 0x44, 0, 0, 0, 1]);
    assert.deepEqual([...b.subarray(8, 24)], [...uuid]);
    assert.equal(b[24], 3);
    assert.ok(b.subarray(25).every((x) => x === 0));
    const d = decodeMultifdInit(b);
    assert.deepEqual([...d.uuid], [...uuid]);
    assert.equal(d.id, 3);
  });

  test('refuses a wrong magic, version or a short packet', () => {
    const b = encodeMultifdInit({ uuid: new Uint8Array(16), id: 0 });
    const bad = b.slice();
    bad[0] = 0x51; // "QEVM": a main stream where a channel was expected
    refused(() => decodeMultifdInit(bad), /init packet magic 0x51223344/);
    const v2 = b.slice();
    v2[7] = 2;
    refused(() => decodeMultifdInit(v2), /version 2/);
    refused(() => decodeMultifdInit(b.subarray(0, 10)), /10 bytes/);
    assert.throws(() => encodeMultifdInit({ uuid: new Uint8Array(4), id: 0 }), RangeError);
    assert.throws(() => encodeMultifdInit({ uuid: new Uint8Array(16), id: 256 }), RangeError);
  });
});

describe('multifd page packet', () => {
  test('fields at QEMU offsets: flags 8, pages_alloc 12, normal 16, next size 20, packet_num 24, zero 32, ramblock 64', () => {
    const b = packet([0x3000, 0x1000], [0x5000], MULTIFD_FLAG_SYNC, 0x1_0000_0002);
    const v = new DataView(b.buffer);
    assert.equal(v.getUint32(0), 0x11223344);
    assert.equal(v.getUint32(4), 1);
    assert.equal(v.getUint32(8), 1);
    assert.equal(v.getUint32(12), 128);
    assert.equal(v.getUint32(16), 2);
    assert.equal(v.getUint32(20), 8192);
    assert.equal(v.getBigUint64(24), 0x1_0000_0002n);
    assert.equal(v.getUint32(32), 1);
    assert.equal(new TextDecoder().decode(b.subarray(64, 70)), 'pc.ram');
    assert.equal(b[70], 0);
    assert.equal(v.getBigUint64(320), 0x3000n);
    assert.equal(v.getBigUint64(328), 0x1000n);
    assert.equal(v.getBigUint64(336), 0x5000n);
  });

  test('round trip (property)', () => {
    const pages = fc.array(fc.nat(BLOCK / 4096 - 1), { maxLength: 64 });
    fc.assert(
      fc.property(pages, pages, fc.boolean(), fc.nat(2 ** 40), (normal, zero, sync, num) => {
        const no = normal.map((p) => p * 4096);
        const zo = zero.map((p) => p * 4096);
        const b = packet(no, zo, sync ? MULTIFD_FLAG_SYNC : 0, num);
        const h = decodeMultifdHeader(b);
        assert.equal(h.flags, sync ? 1 : 0);
        assert.equal(h.normalPages, no.length);
        assert.equal(h.zeroPages, zo.length);
        assert.equal(h.packetNum, num);
        assert.equal(h.ramblock, 'pc.ram');
        assert.equal(h.bodyBytes, 8 * (no.length + zo.length) + 4096 * no.length);
        const offs = new Float64Array(MULTIFD_PACKET_PAGES);
        const n = readMultifdOffsets(b, MULTIFD_HEADER_BYTES, h, BLOCK, offs);
        assert.deepEqual([...offs.subarray(0, n)], [...no, ...zo]);
      }),
    );
  });

  test('refusals: magic, version, compression flags, too many pages, size mismatch, block name, offsets', () => {
    const good = packet([0x1000], [0x2000]);
    const with32 = (at: number, value: number) => {
      const b = good.slice();
      new DataView(b.buffer).setUint32(at, value);
      return b;
    };
    refused(() => decodeMultifdHeader(with32(0, 0x5145564d)), /packet magic 0x5145564d/);
    refused(() => decodeMultifdHeader(with32(4, 9)), /version 9/);
    refused(() => decodeMultifdHeader(with32(8, 2)), /flags 0x2: compression/);
    refused(() => decodeMultifdHeader(with32(12, 4096)), /allocates 4096 pages, at most 128/);
    refused(() => decodeMultifdHeader(with32(16, 200)), /200 normal and 1 zero pages/);
    refused(() => decodeMultifdHeader(with32(20, 4095)), /data of 4095 bytes for 1 pages/);
    const noNul = good.slice();
    noNul.fill(0x61, 64, 320);
    refused(() => decodeMultifdHeader(noNul), /not NUL-terminated/);
    const noName = good.slice();
    noName.fill(0, 64, 320);
    refused(() => decodeMultifdHeader(noName), /names no RAM block/);
    refused(() => decodeMultifdHeader(good.subarray(0, 100)), /header of 100 bytes/);
    const h = decodeMultifdHeader(good);
    const offs = new Float64Array(2);
    const outside = packet([BLOCK], []);
    refused(
      () => readMultifdOffsets(outside, MULTIFD_HEADER_BYTES, decodeMultifdHeader(outside), BLOCK, offs),
      /offset 0x40000000 is not a page of "pc.ram"/,
    );
    const unaligned = good.slice();
    new DataView(unaligned.buffer).setUint32(MULTIFD_HEADER_BYTES + 4, 0x1001);
    refused(() => readMultifdOffsets(unaligned, MULTIFD_HEADER_BYTES, h, BLOCK, offs), /offset 0x1001/);
    // Checked only (no array to read into: a receiver whose pages were placed already): the same refusals.
    refused(() => readMultifdOffsets(unaligned, MULTIFD_HEADER_BYTES, h, BLOCK), /offset 0x1001/);
    assert.equal(readMultifdOffsets(good, MULTIFD_HEADER_BYTES, h, BLOCK), 2);
    refused(
      () => readMultifdOffsets(good.subarray(0, MULTIFD_HEADER_BYTES + 4), MULTIFD_HEADER_BYTES, h, BLOCK, offs),
      /truncated: 4 of 16 bytes/,
    );
    refused(() => decodeMultifdHeader(with32(24, 0x200000)), /packet number 9007199254740999 out of range/);
    const badUtf8 = good.slice();
    badUtf8.set([0x70, 0xc3, 0x28, 0], 64);
    refused(() => decodeMultifdHeader(badUtf8), /not UTF-8/);
  });

  test('packets back to back, as a channel hands them over: each decoded where it starts, refusals placed in the whole', () => {
    const first = packet([0x1000, 0x3000], [0x2000], 0, 41);
    const second = packet([], [0x5000], MULTIFD_FLAG_SYNC, 42);
    const both = concat([first, second]);
    const h1 = decodeMultifdHeader(both, 0);
    const at2 = MULTIFD_HEADER_BYTES + 8 * 3;
    const h2 = decodeMultifdHeader(both, at2);
    assert.deepEqual([h1.packetNum, h1.normalPages, h1.zeroPages, h1.flags], [41, 2, 1, 0]);
    assert.deepEqual([h2.packetNum, h2.normalPages, h2.zeroPages, h2.flags], [42, 0, 1, MULTIFD_FLAG_SYNC]);
    const offs = new Float64Array(MULTIFD_PACKET_PAGES);
    assert.equal(readMultifdOffsets(both, at2 + MULTIFD_HEADER_BYTES, h2, BLOCK, offs), 1);
    assert.equal(offs[0], 0x5000);
    const bad = both.slice();
    bad[at2 + 7] = 9; // the second packet's version
    assert.throws(
      () => decodeMultifdHeader(bad, at2),
      (e: unknown) => e instanceof StreamError && /version 9/.test(e.message) && e.offset === at2 + 4,
    );
    refused(() => decodeMultifdHeader(both, both.byteLength - 100), /header of 100 bytes/);
  });

  test('the encoder refuses what it cannot write', () => {
    const out = new Uint8Array(4096);
    const base = { flags: 0, pagesAlloc: 2, packetNum: 0, ramblock: 'pc.ram' };
    assert.throws(() => writeMultifdHeader(out, base, [0, 4096], [8192]), /3 pages in a packet of 2/);
    assert.throws(() => writeMultifdHeader(out, base, [100], []), /not a multiple/);
    assert.throws(() => writeMultifdHeader(out, { ...base, ramblock: '' }, [], []), /1 to 255 bytes/);
    assert.throws(() => writeMultifdHeader(new Uint8Array(10), base, [], []), /needs 320 bytes/);
    assert.throws(() => writeMultifdHeader(out, { ...base, ramblock: 'r'.repeat(256) }, [], []), /1 to 255 bytes/);
    assert.throws(() => writeMultifdHeader(out, { ...base, ramblock: 'é'.repeat(128) }, [], []), /1 to 255 bytes/);
    assert.throws(() => writeMultifdHeader(out, { ...base, packetNum: -1 }, [], []), /packet number -1/);
    assert.throws(() => writeMultifdHeader(out, { ...base, packetNum: 2 ** 53 }, [], []), /packet number/);
  });

  test('block names: ASCII and UTF-8 ones, up to 255 bytes, read back as written', () => {
    for (const ramblock of ['pc.ram', 'r'.repeat(255), 'mem-é', 'é'.repeat(127)]) {
      const out = new Uint8Array(MULTIFD_HEADER_BYTES);
      writeMultifdHeader(out, { flags: 0, pagesAlloc: 2, packetNum: 1, ramblock }, [], []);
      assert.equal(decodeMultifdHeader(out).ramblock, ramblock);
    }
  });
});

describe('RAM_SAVE_FLAG_MULTIFD_FLUSH in the main stream', () => {
  test('the builder writes be64 0x200 and the decoder reads it back; a flush with other bits is refused', () => {
    const b = new RamPayloadBuilder();
    b.multifdFlush();
    b.eos();
    const bytes = concat(b.take().pieces);
    assert.deepEqual([...bytes.subarray(0, 8)], [0, 0, 0, 0, 0, 0, 2, 0]);
    assert.deepEqual(decodeRamPayload(bytes), [{ kind: 'multifd-flush' }, { kind: 'eos' }]);
    const bad = bytes.slice();
    bad[6] = 0x12; // 0x1200: an address with the flag
    refused(() => decodeRamPayload(bad), /malformed MULTIFD_FLUSH/);
  });
});
