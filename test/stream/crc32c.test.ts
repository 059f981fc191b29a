// CRC-32C: the native addon (VPCLMULQDQ folding, the SSE4.2 instruction, or tables) and the TypeScript
// fallback against known vectors and a bitwise reference, at every alignment and across the native code's
// block boundaries. Each native implementation this CPU has runs the whole file (the others in children).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { native } from '../../src/native/addon.ts';
import {
  crc32c,
  crc32cCombine,
  crc32cCopy,
  crc32cCopySpaced,
  crc32cCopySpacedJs,
  crc32cImplementation,
  crc32cJs,
} from '../../src/stream/crc32c.ts';
import { crcRef } from './crc-ref.ts';

const text = (s: string) => new TextEncoder().encode(s);

// Published CRC-32C check values (RFC 3720 appendix B.4 and the usual "123456789").
const VECTORS: [Uint8Array, number][] = [
  [new Uint8Array(0), 0x00000000],
  [text('123456789'), 0xe3069283],
  [text('a'), 0xc1d04330],
  [new Uint8Array(32), 0x8a9136aa],
  [new Uint8Array(32).fill(0xff), 0x62a8ab43],
  [Uint8Array.from({ length: 32 }, (_, i) => i), 0x46dd794e],
  [Uint8Array.from({ length: 32 }, (_, i) => 31 - i), 0x113fdb5c],
];

const impls = {
  native: (d: Uint8Array, s?: number) => native().crc32c(d, s),
  typescript: crc32cJs,
  dispatch: crc32c,
};

describe('CRC-32C', () => {
  const forced = process.env.VFIO_NATIVE_CRC32C;
  const flags = new Set(/^flags\s*:(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim().split(/\s+/));
  const sse42 = flags.has('sse4_2');
  const fold = sse42 && ['avx512f', 'avx512vl', 'vpclmulqdq', 'pclmulqdq'].every((f) => flags.has(f));
  const best = fold ? 'vpclmulqdq' : sse42 ? 'sse4.2' : 'table';

  test('the addon is loaded for long inputs: the fastest code this CPU runs, unless one is forced', () => {
    const want = forced === 'table' ? 'table' : forced === 'sse4.2' && fold ? 'sse4.2' : best;
    assert.equal(crc32cImplementation(), `native ${want}`);
  });

  for (const [impl, has] of [
    ['table', true],
    ['sse4.2', fold],
  ] as const) {
    const skip = forced ? 'a child run already' : has ? false : `this CPU's best (${best}) runs this file already`;
    test(`the ${impl} code passes this whole file too (VFIO_NATIVE_CRC32C=${impl}, in a child process)`, {
      skip,
    }, () => {
      const r = spawnSync(process.execPath, ['--import', 'tsx', '--test', fileURLToPath(import.meta.url)], {
        // Without NODE_TEST_CONTEXT the child reports as a top-level run, in text.
        env: { ...process.env, NODE_TEST_CONTEXT: undefined, VFIO_NATIVE_CRC32C: impl },
        encoding: 'utf8',
      });
      assert.equal(r.status, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /# pass \d+/);
      assert.match(r.stdout, /# fail 0/);
    });
  }

  for (const [name, f] of Object.entries(impls)) {
    test(`${name}: known vectors`, () => {
      for (const [data, want] of VECTORS) assert.equal(f(data), want, `${data.byteLength} bytes`);
    });

    test(`${name}: equals the bitwise reference on random data at any offset, length and seed`, () => {
      fc.assert(
        fc.property(
          fc.uint8Array({ maxLength: 2000 }),
          fc.nat(15),
          fc.nat(15),
          fc.nat(0xffffffff),
          (data, head, tail, seed) => {
            const v = data.subarray(Math.min(head, data.byteLength), Math.max(head, data.byteLength - tail));
            assert.equal(f(v, seed), crcRef(v, seed));
          },
        ),
        { numRuns: 300 },
      );
    });

    test(`${name}: chaining, f(b, f(a)) === f(a ++ b), at every cut`, () => {
      const data = randomBytes(300);
      const whole = crcRef(data);
      for (let cut = 0; cut <= data.byteLength; cut++)
        assert.equal(f(data.subarray(cut), f(data.subarray(0, cut))), whole, `cut ${cut}`);
    });
  }

  test('native: long inputs around the three-stream block sizes (3 x 256, 3 x 8192) and misaligned', () => {
    const buf = randomBytes(3 * 8192 * 2 + 64);
    for (const len of [
      767,
      768,
      769,
      775,
      776,
      3 * 8192 - 1,
      3 * 8192,
      3 * 8192 + 1,
      3 * 8192 + 3 * 256 + 9,
      buf.length - 8,
    ]) {
      for (const off of [0, 1, 3, 7]) {
        const v = buf.subarray(off, off + len);
        assert.equal(native().crc32c(v), crcRef(v), `len ${len} off ${off}`);
      }
    }
  });

  test('native: lengths around the folding boundaries (1024 bytes to start, 256 a round, 16 a lane), copied too', () => {
    const buf = randomBytes(4096 + 64);
    const lens = [1023, 1024, 1025, 1039, 1040, 1041, 1279, 1280, 1281, 1024 + 255 + 15, 2048 + 17, 4096];
    for (const len of lens) {
      for (const off of [0, 1, 5]) {
        for (const seed of [0, 0xdeadbeef]) {
          const v = buf.subarray(off, off + len);
          const want = crcRef(v, seed);
          assert.equal(native().crc32c(v, seed), want, `len ${len} off ${off}`);
          const dst = new Uint8Array(len + 9);
          assert.equal(native().crc32cCopy(dst, 3, 3, v, seed), want, `copy: len ${len} off ${off}`);
          assert.deepEqual(dst.subarray(3, 3 + len), new Uint8Array(v), `copy: len ${len} off ${off}`);
        }
      }
    }
  });

  test('native: a large random buffer matches the TypeScript version (which matches the reference)', () => {
    const big = randomBytes((4 << 20) + 13);
    const v = big.subarray(5);
    assert.equal(native().crc32c(v), crc32cJs(v));
    assert.equal(native().crc32c(v, 0x12345678), crc32cJs(v, 0x12345678));
  });

  test('native: argument checks', () => {
    const n = native();
    assert.throws(() => n.crc32c('abc' as unknown as Uint8Array), TypeError);
    assert.throws(() => n.crc32c(new Uint16Array(4) as unknown as Uint8Array), TypeError);
    assert.throws(() => n.crc32c(new Uint8Array(4), -1), RangeError);
    assert.throws(() => n.crc32c(new Uint8Array(4), 2 ** 32), RangeError);
    assert.throws(() => n.crc32c(new Uint8Array(4), 1.5), RangeError);
    assert.equal(n.crc32c(new Uint8Array(4), undefined), n.crc32c(new Uint8Array(4)));
    // A Buffer is a Uint8Array.
    assert.equal(n.crc32c(Buffer.from('123456789')), 0xe3069283);
  });

  test('crc32cCopy: copies src and checksums the bytes ahead of it then the copy, at any alignment and length', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 5000 }),
        fc.nat(40),
        fc.nat(24),
        fc.nat(7),
        fc.nat(0xffffffff),
        (src, from, ahead, srcOff, seed) => {
          const s = new Uint8Array(src.byteLength + srcOff);
          s.set(src, srcOff);
          const view = s.subarray(srcOff);
          const dst = randomBytes(from + ahead + src.byteLength + 9);
          const before = Uint8Array.from(dst);
          const at = from + ahead;
          const got = crc32cCopy(dst, from, at, view, seed);
          assert.deepEqual(dst.subarray(at, at + src.byteLength), Buffer.from(src));
          // Nothing outside [at, at + n) changes.
          assert.deepEqual(dst.subarray(0, at), Buffer.from(before.subarray(0, at)));
          assert.deepEqual(dst.subarray(at + src.byteLength), Buffer.from(before.subarray(at + src.byteLength)));
          assert.equal(got, crcRef(dst.subarray(from, at + src.byteLength), seed));
        },
      ),
      { numRuns: 300 },
    );
  });

  test('crc32cCopy: a page at every block boundary of the three-stream loop; refused when out of bounds or overlapping', () => {
    const src = randomBytes(3 * 8192 * 2 + 64);
    for (const len of [4096, 767, 768, 769, 3 * 8192, 3 * 8192 + 3 * 256 + 9]) {
      const dst = new Uint8Array(len + 16);
      assert.equal(
        crc32cCopy(dst, 0, 3, src.subarray(1, 1 + len), 7),
        crcRef(dst.subarray(0, 3 + len), 7),
        `len ${len}`,
      );
    }
    const n = native();
    assert.throws(() => n.crc32cCopy(new Uint8Array(10), 0, 5, new Uint8Array(6), 0), RangeError);
    assert.throws(() => n.crc32cCopy(new Uint8Array(10), 6, 5, new Uint8Array(1), 0), RangeError);
    assert.throws(() => n.crc32cCopy(new Uint8Array(10), 0, 11, new Uint8Array(0), 0), RangeError);
    const buf = new Uint8Array(100);
    assert.throws(() => n.crc32cCopy(buf, 0, 10, buf.subarray(5, 20), 0), RangeError);
    // Adjacent is not overlapping: the checksum runs over [0, 50) then the copy of it.
    assert.equal(n.crc32cCopy(buf, 0, 50, buf.subarray(0, 50), 0), crcRef(new Uint8Array(100)));
  });

  test("crc32cCopySpaced (native and TypeScript): pieces land with the caller's gap bytes between them, all checksummed", () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 3000 }),
        fc.integer({ min: 1, max: 700 }),
        fc.nat(12),
        fc.nat(20),
        fc.nat(0xffffffff),
        (src, piece, gap, ahead, seed) => {
          const pieces = Math.ceil(src.byteLength / piece);
          const span = src.byteLength + Math.max(0, pieces - 1) * gap;
          const dst = randomBytes(ahead + span + 5);
          const before = Uint8Array.from(dst);
          // What the result must be: each piece at its place, the gaps and everything else as they were.
          const want = Uint8Array.from(dst);
          for (let k = 0; k < pieces; k++)
            want.set(src.subarray(k * piece, (k + 1) * piece), ahead + k * (piece + gap));
          const wantCrc = crcRef(want.subarray(0, ahead + span), seed);
          for (const fn of [crc32cCopySpaced, crc32cCopySpacedJs]) {
            dst.set(before);
            assert.equal(fn(dst, 0, ahead, src, seed, piece, gap), wantCrc, fn.name);
            assert.deepEqual(dst, Buffer.from(want), fn.name);
          }
        },
      ),
      { numRuns: 300 },
    );
    for (const fn of [crc32cCopySpaced, crc32cCopySpacedJs]) {
      // Two pieces of 4 with a gap of 3 need 11 bytes at `at`.
      assert.throws(() => fn(new Uint8Array(12), 0, 2, new Uint8Array(8), 0, 4, 3), RangeError, fn.name);
      assert.equal(fn(new Uint8Array(11), 0, 0, new Uint8Array(8), 0, 4, 3), crcRef(new Uint8Array(11)), fn.name);
      assert.throws(() => fn(new Uint8Array(20), 0, 0, new Uint8Array(8), 0, 0, 3), RangeError, fn.name);
    }
  });

  test('crc32cCombine: crc(a ++ b) from crc(a), crc(b) and the length of b, for any lengths', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 3000 }), fc.uint8Array({ maxLength: 3000 }), (a, b) => {
        const whole = new Uint8Array(a.byteLength + b.byteLength);
        whole.set(a);
        whole.set(b, a.byteLength);
        assert.equal(crc32cCombine(crcRef(a), crcRef(b), b.byteLength), crcRef(whole));
      }),
      { numRuns: 200 },
    );
    // A long b: the operators for lengths past 2^20 bytes.
    const a = randomBytes(33);
    const b = randomBytes((5 << 20) + 3);
    assert.equal(crc32cCombine(crc32c(a), crc32c(b), b.byteLength), crc32c(Buffer.concat([a, b])));
    assert.throws(() => crc32cCombine(0, 0, -1), RangeError);
  });
});
