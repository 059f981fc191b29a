import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Errno } from '../../../src/abi/errno.ts';
import {
  type BitmapRange,
  DirtyPagesFlag,
  decodeDirtyPagesBitmapReply,
  decodeDirtyPagesControlReply,
  decodeDirtyPagesRequest,
  dirtyBitmapSize,
  encodeDirtyPagesBitmapReply,
  encodeDirtyPagesControlReply,
  encodeDirtyPagesRequest,
  encodeDirtyPagesShortReply,
} from '../../../src/abi/vfio-user/index.ts';
import { VfioError } from '../../../src/errors.ts';

const hex = (...fields: string[]) => new Uint8Array(Buffer.from(fields.join(''), 'hex'));
const einval = (fn: () => unknown, re: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof VfioError && e.errno === Errno.EINVAL && re.test(e.message));

// 256 KiB at 4 GiB, 4 KiB pages: 64 pages → one u64 word of bitmap.
const RANGE = ['0000000001000000', '0000040000000000', '0010000000000000', '0800000000000000'];
const range: BitmapRange = { iova: 1n << 32n, size: 0x40000n, pgsize: 4096n, bitmapSize: 8n };

describe('DIRTY_PAGES (v1 era)', () => {
  it('golden: START and STOP requests, empty replies', () => {
    assert.deepEqual(encodeDirtyPagesRequest({ flags: DirtyPagesFlag.START }), hex('08000000', '01000000'));
    assert.deepEqual(decodeDirtyPagesRequest(hex('08000000', '02000000')), { argsz: 8, flags: DirtyPagesFlag.STOP });
    assert.deepEqual(encodeDirtyPagesControlReply(), new Uint8Array(0));
    decodeDirtyPagesControlReply(new Uint8Array(0));
  });

  it('golden: GET_BITMAP request (argsz 48) and reply (range echoed, bitmap @40)', () => {
    const req = hex('30000000', '04000000', ...RANGE);
    const m = { argsz: 48, flags: DirtyPagesFlag.GET_BITMAP, range };
    assert.deepEqual(encodeDirtyPagesRequest({ flags: DirtyPagesFlag.GET_BITMAP, range }), req);
    assert.deepEqual(decodeDirtyPagesRequest(req), m);
    // pages 0, 1 and 63 dirty
    const rep = hex('30000000', '04000000', ...RANGE, '0300000000000080');
    const bitmap = hex('0300000000000080');
    assert.deepEqual(encodeDirtyPagesBitmapReply({ range, bitmap }), rep);
    assert.deepEqual(decodeDirtyPagesBitmapReply(rep), { complete: true, argsz: 48, range, bitmap });
  });

  it('golden: short reply when the request argsz (16) is below the 48 needed', () => {
    const rep = hex('30000000', '04000000', '0000000000000000');
    assert.deepEqual(encodeDirtyPagesShortReply(48, 16), rep);
    assert.deepEqual(decodeDirtyPagesBitmapReply(rep), { complete: false, argsz: 48 });
    assert.equal(decodeDirtyPagesRequest(hex('10000000', '04000000', ...RANGE)).argsz, 16);
  });

  it('bitmap size is ceil(pages / 64) * 8 with pages rounded up', () => {
    assert.equal(dirtyBitmapSize('t', 4096n, 4096n), 8n);
    assert.equal(dirtyBitmapSize('t', 64n * 4096n + 1n, 4096n), 16n);
    assert.equal(dirtyBitmapSize('t', 1n << 30n, 4096n), 32768n);
    einval(() => dirtyBitmapSize('t', 4095n, 4096n), /smaller than the page size/);
  });

  it('rejects bad flags, sizes and argsz', () => {
    einval(() => decodeDirtyPagesRequest(hex('08000000', '03000000')), /flags is 0x3/);
    einval(() => decodeDirtyPagesRequest(hex('08000000', '00000000')), /flags is 0x0/);
    einval(() => decodeDirtyPagesRequest(hex('07000000', '01000000')), /argsz is 7/);
    einval(() => decodeDirtyPagesRequest(hex('08000000', '01000000', '00')), /must be exactly 8/);
    einval(() => decodeDirtyPagesRequest(hex('30000000', '04000000')), /must be exactly 40/);
    einval(
      () => decodeDirtyPagesRequest(hex('30000000', '04000000', ...RANGE.slice(0, 3), '1000000000000000')),
      /bitmap.size is 16, must be 8/,
    );
    einval(() => decodeDirtyPagesRequest(hex('01001000', '04000000', ...RANGE)), /argsz is 1048577/);
    einval(() => decodeDirtyPagesBitmapReply(hex('30000000', '01000000', ...RANGE, '00'.repeat(8))), /flags is 0x1/);
    einval(
      () => decodeDirtyPagesBitmapReply(hex('38000000', '04000000', ...RANGE, '00'.repeat(16))),
      /argsz is 56, must be 48/,
    );
    einval(() => decodeDirtyPagesBitmapReply(hex('30000000', '04000000', ...RANGE, '00'.repeat(9))), /exactly 48/);
  });

  it('property: round-trip', () => {
    const arb = fc.record(
      {
        iova: fc.bigInt({ min: 0n, max: 1n << 48n }),
        pages: fc.integer({ min: 1, max: 8192 }),
        shift: fc.integer({ min: 12, max: 21 }),
      },
      { noNullPrototype: true },
    );
    fc.assert(
      fc.property(arb, fc.integer({ min: 0, max: 255 }), ({ iova, pages, shift }, fill) => {
        const pgsize = 1n << BigInt(shift);
        const size = BigInt(pages) * pgsize;
        const r = { iova, size, pgsize, bitmapSize: dirtyBitmapSize('t', size, pgsize) };
        const req = { argsz: 40 + Number(r.bitmapSize), flags: DirtyPagesFlag.GET_BITMAP, range: r };
        assert.deepEqual(decodeDirtyPagesRequest(encodeDirtyPagesRequest(req)), req);
        const bitmap = new Uint8Array(Number(r.bitmapSize)).fill(fill);
        assert.deepEqual(decodeDirtyPagesBitmapReply(encodeDirtyPagesBitmapReply({ range: r, bitmap })), {
          complete: true,
          argsz: req.argsz,
          range: r,
          bitmap,
        });
      }),
      { numRuns: 200 },
    );
  });
});
