import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Errno } from '../../../src/abi/errno.ts';
import {
  DmaUnmapFlag,
  type DmaUnmapReply,
  type DmaUnmapRequest,
  decodeDmaUnmapReply,
  decodeDmaUnmapRequest,
  encodeDmaUnmapReply,
  encodeDmaUnmapRequest,
} from '../../../src/abi/vfio-user/index.ts';
import { VfioError } from '../../../src/errors.ts';

const hex = (...fields: string[]) => new Uint8Array(Buffer.from(fields.join(''), 'hex'));
const einval = (fn: () => unknown, re: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof VfioError && e.errno === Errno.EINVAL && re.test(e.message));

describe('DMA_UNMAP', () => {
  it('golden: plain request and its 24-byte echo reply', () => {
    const bytes = hex('18000000', '00000000', '0000000001000000', '0000004000000000');
    const m = { argsz: 24, flags: 0, address: 1n << 32n, size: 1n << 30n };
    assert.deepEqual(encodeDmaUnmapRequest(m), bytes);
    assert.deepEqual(decodeDmaUnmapRequest(bytes), m);
    assert.deepEqual(encodeDmaUnmapReply(m), bytes);
    assert.deepEqual(decodeDmaUnmapReply(bytes), m);
  });

  it('golden: ALL with address and size 0', () => {
    const bytes = hex('18000000', '02000000', '0000000000000000', '0000000000000000');
    const m = { argsz: 24, flags: DmaUnmapFlag.ALL, address: 0n, size: 0n };
    assert.deepEqual(encodeDmaUnmapRequest(m), bytes);
    assert.deepEqual(decodeDmaUnmapRequest(bytes), m);
  });

  it('golden: GET_DIRTY_BITMAP of 1 MiB at 4 KiB pages (argsz 40 + 32-byte bitmap), request and reply', () => {
    const head = [
      '48000000',
      '01000000',
      '0000000001000000',
      '0000100000000000',
      '0010000000000000',
      '2000000000000000',
    ];
    const req: DmaUnmapRequest = {
      argsz: 72,
      flags: DmaUnmapFlag.GET_DIRTY_BITMAP,
      address: 1n << 32n,
      size: 1n << 20n,
      bitmap: { pgsize: 4096n, size: 32n },
    };
    assert.deepEqual(encodeDmaUnmapRequest(req), hex(...head));
    assert.deepEqual(decodeDmaUnmapRequest(hex(...head)), req);
    // pages 0, 2 and 71 dirty: byte 0 = 0b101, byte 8 bit 7.
    const bitmap = hex('0500000000000000', '8000000000000000', '00'.repeat(16));
    const rep: DmaUnmapReply = { ...req, bitmap: { pgsize: 4096n, data: bitmap } };
    const bytes = hex(...head, '0500000000000000', '8000000000000000', '00'.repeat(16));
    assert.deepEqual(encodeDmaUnmapReply(rep), bytes);
    assert.deepEqual(decodeDmaUnmapReply(bytes), rep);
  });

  it('rejects bad flags, ALL with a range, bad bitmap sizes and argsz', () => {
    const tail = ['0000000001000000', '0000100000000000'];
    einval(() => decodeDmaUnmapRequest(hex('18000000', '03000000', ...tail)), /flags is 0x3/);
    einval(() => decodeDmaUnmapRequest(hex('18000000', '04000000', ...tail)), /flags is 0x4/);
    einval(() => decodeDmaUnmapRequest(hex('18000000', '02000000', ...tail)), /must be 0 with ALL/);
    einval(() => decodeDmaUnmapRequest(hex('17000000', '00000000', ...tail)), /argsz is 23/);
    einval(
      () => decodeDmaUnmapRequest(hex('18000000', '01000000', ...tail)),
      /payload is 24 bytes, must be exactly 40/,
    );
    einval(
      () => decodeDmaUnmapRequest(hex('48000000', '01000000', ...tail, '0010000000000000', '1800000000000000')),
      /bitmap.size is 24, must be 32/,
    );
    einval(
      () => decodeDmaUnmapRequest(hex('47000000', '01000000', ...tail, '0010000000000000', '2000000000000000')),
      /argsz is 71, must be at least 72/,
    );
    einval(
      () => decodeDmaUnmapRequest(hex('48000000', '01000000', ...tail, '0000000000000000', '2000000000000000')),
      /pgsize is 0/,
    );
    einval(() => decodeDmaUnmapRequest(hex('01001000', '00000000', ...tail)), /argsz is 1048577, above 1048576/);
    einval(
      () => decodeDmaUnmapReply(hex('48000000', '01000000', ...tail, '0010000000000000', '2000000000000000', '00')),
      /payload is 41 bytes, must be exactly 72/,
    );
  });

  it('property: round-trip with and without bitmap', () => {
    const plain = fc.record(
      {
        flags: fc.constant(0),
        address: fc.bigInt({ min: 0n, max: 1n << 48n }),
        size: fc.bigInt({ min: 0n, max: 1n << 48n }),
      },
      { noNullPrototype: true },
    );
    const dirty = fc
      .record({ address: fc.bigInt({ min: 0n, max: 1n << 48n }), pages: fc.integer({ min: 1, max: 4096 }) })
      .chain(({ address, pages }) =>
        fc.uint8Array({ minLength: Math.ceil(pages / 64) * 8, maxLength: Math.ceil(pages / 64) * 8 }).map((data) => ({
          flags: DmaUnmapFlag.GET_DIRTY_BITMAP,
          address,
          size: BigInt(pages) * 4096n,
          data,
        })),
      );
    fc.assert(
      fc.property(plain, (m) => {
        const req = { argsz: 24, ...m };
        assert.deepEqual(decodeDmaUnmapRequest(encodeDmaUnmapRequest(req)), req);
        assert.deepEqual(decodeDmaUnmapReply(encodeDmaUnmapReply(req)), req);
      }),
      { numRuns: 200 },
    );
    fc.assert(
      fc.property(dirty, ({ data, ...m }) => {
        const req = { ...m, argsz: 40 + data.byteLength, bitmap: { pgsize: 4096n, size: BigInt(data.byteLength) } };
        assert.deepEqual(decodeDmaUnmapRequest(encodeDmaUnmapRequest(req)), req);
        const rep = { ...req, bitmap: { pgsize: 4096n, data } };
        assert.deepEqual(decodeDmaUnmapReply(encodeDmaUnmapReply(rep)), rep);
      }),
      { numRuns: 200 },
    );
  });
});
