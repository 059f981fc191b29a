import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Errno } from '../../../src/abi/errno.ts';
import {
  decodeDmaReadReply,
  decodeDmaReadRequest,
  decodeDmaWriteReply,
  decodeDmaWriteRequest,
  encodeDmaReadReply,
  encodeDmaReadRequest,
  encodeDmaWriteReply,
  encodeDmaWriteRequest,
} from '../../../src/abi/vfio-user/index.ts';
import { VfioError } from '../../../src/errors.ts';

const hex = (...fields: string[]) => new Uint8Array(Buffer.from(fields.join(''), 'hex'));
const einval = (fn: () => unknown, re: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof VfioError && e.errno === Errno.EINVAL && re.test(e.message));

describe('DMA_READ / DMA_WRITE (server → client; count u64, data @16)', () => {
  it('golden: DMA_READ of 16 bytes at 0x1_0000_2000 and its reply', () => {
    const req = hex('0020000001000000', '1000000000000000');
    assert.deepEqual(encodeDmaReadRequest({ address: 0x1_0000_2000n, count: 16n }), req);
    assert.deepEqual(decodeDmaReadRequest(req), { address: 0x1_0000_2000n, count: 16n });
    const data = hex('000102030405060708090a0b0c0d0e0f');
    const rep = hex('0020000001000000', '1000000000000000', '000102030405060708090a0b0c0d0e0f');
    assert.deepEqual(encodeDmaReadReply({ address: 0x1_0000_2000n, data }), rep);
    assert.deepEqual(decodeDmaReadReply(rep), { address: 0x1_0000_2000n, data });
  });

  it('golden: DMA_WRITE of deadbeef and its 16-byte reply (count as u64, not the u32 of the spec table)', () => {
    const req = hex('0030000001000000', '0400000000000000', 'deadbeef');
    const m = { address: 0x1_0000_3000n, data: hex('deadbeef') };
    assert.deepEqual(encodeDmaWriteRequest(m), req);
    assert.deepEqual(decodeDmaWriteRequest(req), m);
    const rep = hex('0030000001000000', '0400000000000000');
    assert.deepEqual(encodeDmaWriteReply({ address: 0x1_0000_3000n, count: 4n }), rep);
    assert.deepEqual(decodeDmaWriteReply(rep), { address: 0x1_0000_3000n, count: 4n });
  });

  it("rejects QEMU's u32-count layout, counts above max_data_xfer_size, short data", () => {
    // {u64 offset; u32 count; data} with 4 data bytes at 12: count reads as a huge u64.
    einval(
      () => decodeDmaWriteRequest(hex('0030000001000000', '04000000', 'deadbeef')),
      /count is 17275436389634146308, above/,
    );
    einval(() => decodeDmaReadRequest(hex('0000000000000000', '0100100000000000')), /count is 1048577, above/);
    assert.equal(
      decodeDmaReadRequest(hex('0000000000000000', '0100100000000000'), { maxCount: 64 << 20 }).count,
      1048577n,
    );
    einval(() => decodeDmaReadReply(hex('0000000000000000', '0400000000000000', '00')), /payload \(count 4\)/);
    einval(() => decodeDmaReadRequest(hex('f0ffffffffffffff', '2000000000000000')), /wraps/);
  });

  it('property: round-trip', () => {
    const arb = fc.record(
      { address: fc.bigInt({ min: 0n, max: 1n << 62n }), data: fc.uint8Array({ maxLength: 128 }) },
      { noNullPrototype: true },
    );
    fc.assert(
      fc.property(arb, (m) => {
        assert.deepEqual(decodeDmaWriteRequest(encodeDmaWriteRequest(m)), m);
        assert.deepEqual(decodeDmaReadReply(encodeDmaReadReply(m)), m);
        const bare = { address: m.address, count: BigInt(m.data.byteLength) };
        assert.deepEqual(decodeDmaReadRequest(encodeDmaReadRequest(bare)), bare);
        assert.deepEqual(decodeDmaWriteReply(encodeDmaWriteReply(bare)), bare);
      }),
      { numRuns: 300 },
    );
  });
});
