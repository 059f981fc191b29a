import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Errno } from '../../../src/abi/errno.ts';
import {
  decodeWriteMultiReply,
  decodeWriteMultiRequest,
  encodeWriteMultiReply,
  encodeWriteMultiRequest,
} from '../../../src/abi/vfio-user/index.ts';
import { VfioError } from '../../../src/errors.ts';

const hex = (...fields: string[]) => new Uint8Array(Buffer.from(fields.join(''), 'hex'));
const einval = (fn: () => unknown, re: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof VfioError && e.errno === Errno.EINVAL && re.test(e.message));

describe('REGION_WRITE_MULTI', () => {
  it('golden: two writes (4 bytes padded to 8, then 8 bytes) and the reply wr_cnt', () => {
    const bytes = hex(
      '0200000000000000',
      '0020000000000000',
      '00000000',
      '04000000',
      '1122334400000000',
      '0820000000000000',
      '00000000',
      '08000000',
      '0102030405060708',
    );
    const m = {
      writes: [
        { offset: 0x2000n, region: 0, data: hex('11223344') },
        { offset: 0x2008n, region: 0, data: hex('0102030405060708') },
      ],
    };
    assert.deepEqual(encodeWriteMultiRequest(m), bytes);
    assert.deepEqual(decodeWriteMultiRequest(bytes), m);
    assert.deepEqual(encodeWriteMultiReply({ wrCnt: 2n }), hex('0200000000000000'));
    assert.deepEqual(decodeWriteMultiReply(hex('0200000000000000')), { wrCnt: 2n });
  });

  it('rejects a wr_cnt that does not match the payload and counts above 8', () => {
    einval(() => decodeWriteMultiRequest(hex('0200000000000000', '00'.repeat(24))), /wr_cnt is 2, the payload holds 1/);
    einval(() => decodeWriteMultiRequest(hex('0100000000000000', '00'.repeat(25))), /must be exactly 32/);
    einval(
      () => decodeWriteMultiRequest(hex('0100000000000000', '00'.repeat(12), '09000000', '00'.repeat(8))),
      /count is 9/,
    );
    einval(
      () => encodeWriteMultiRequest({ writes: [{ offset: 0n, region: 0, data: new Uint8Array(9) }] }),
      /count is 9/,
    );
    einval(() => decodeWriteMultiReply(new Uint8Array(4)), /REGION_WRITE_MULTI reply: payload is 4 bytes/);
  });

  it('property: round-trip', () => {
    const write = fc.record(
      {
        offset: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
        region: fc.nat(),
        data: fc.uint8Array({ maxLength: 8 }),
      },
      { noNullPrototype: true },
    );
    fc.assert(
      fc.property(fc.array(write, { maxLength: 20 }), (writes) => {
        assert.deepEqual(decodeWriteMultiRequest(encodeWriteMultiRequest({ writes })), { writes });
      }),
      { numRuns: 300 },
    );
  });
});
