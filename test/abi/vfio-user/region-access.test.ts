import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Errno } from '../../../src/abi/errno.ts';
import {
  decodeRegionReadReply,
  decodeRegionReadRequest,
  decodeRegionWriteReply,
  decodeRegionWriteRequest,
  encodeRegionReadReply,
  encodeRegionReadRequest,
  encodeRegionWriteReply,
  encodeRegionWriteRequest,
} from '../../../src/abi/vfio-user/index.ts';
import { VfioError } from '../../../src/errors.ts';

const hex = (...fields: string[]) => new Uint8Array(Buffer.from(fields.join(''), 'hex'));
const einval = (fn: () => unknown, re: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof VfioError && e.errno === Errno.EINVAL && re.test(e.message));

describe('REGION_READ / REGION_WRITE', () => {
  it('golden: READ of 4 bytes at config space offset 0 and its reply with the data', () => {
    const req = hex('0000000000000000', '07000000', '04000000');
    assert.deepEqual(encodeRegionReadRequest({ offset: 0n, region: 7, count: 4 }), req);
    assert.deepEqual(decodeRegionReadRequest(req), { offset: 0n, region: 7, count: 4 });
    const rep = hex('0000000000000000', '07000000', '04000000', '86801000');
    const m = { offset: 0n, region: 7, data: hex('86801000') };
    assert.deepEqual(encodeRegionReadReply(m), rep);
    assert.deepEqual(decodeRegionReadReply(rep), m);
  });

  it('golden: WRITE of 8 bytes to BAR0 + 0x1000 and its header-only reply', () => {
    const req = hex('0010000000000000', '00000000', '08000000', '0102030405060708');
    const m = { offset: 0x1000n, region: 0, data: hex('0102030405060708') };
    assert.deepEqual(encodeRegionWriteRequest(m), req);
    assert.deepEqual(decodeRegionWriteRequest(req), m);
    const rep = hex('0010000000000000', '00000000', '08000000');
    assert.deepEqual(encodeRegionWriteReply({ offset: 0x1000n, region: 0, count: 8 }), rep);
    assert.deepEqual(decodeRegionWriteReply(rep), { offset: 0x1000n, region: 0, count: 8 });
  });

  it('rejects inconsistent counts, oversize counts and wrapping offsets', () => {
    einval(
      () => decodeRegionWriteRequest(hex('0000000000000000', '00000000', '04000000', '010203')),
      /WRITE request: payload \(count 4\)/,
    );
    einval(() => decodeRegionReadReply(hex('0000000000000000', '00000000', '04000000', '0102030405')), /is 21 bytes/);
    einval(() => decodeRegionReadRequest(hex('0000000000000000', '00000000', '01001000')), /count is 1048577/);
    assert.equal(
      decodeRegionReadRequest(hex('0000000000000000', '00000000', '01001000'), { maxCount: 2 << 20 }).count,
      1048577,
    );
    einval(() => decodeRegionReadRequest(hex('ffffffffffffffff', '00000000', '02000000')), /wraps past 2\^64/);
    einval(() => decodeRegionReadRequest(hex('0000000000000000', '00000000', '04000000', '00')), /must be exactly 16/);
    einval(() => decodeRegionWriteReply(new Uint8Array(0)), /REGION_WRITE reply: payload is 0 bytes/);
  });

  it('property: round-trip', () => {
    const arb = fc.record(
      { offset: fc.bigInt({ min: 0n, max: 1n << 62n }), region: fc.nat(), data: fc.uint8Array({ maxLength: 128 }) },
      { noNullPrototype: true },
    );
    fc.assert(
      fc.property(arb, (m) => {
        assert.deepEqual(decodeRegionWriteRequest(encodeRegionWriteRequest(m)), m);
        assert.deepEqual(decodeRegionReadReply(encodeRegionReadReply(m)), m);
        const bare = { offset: m.offset, region: m.region, count: m.data.byteLength };
        assert.deepEqual(decodeRegionReadRequest(encodeRegionReadRequest(bare)), bare);
        assert.deepEqual(decodeRegionWriteReply(encodeRegionWriteReply(bare)), bare);
      }),
      { numRuns: 300 },
    );
  });
});
