import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Errno } from '../../../src/abi/errno.ts';
import {
  decodeRegionIoFdsReply,
  decodeRegionIoFdsRequest,
  encodeRegionIoFdsReply,
  encodeRegionIoFdsRequest,
  type IoFdEntry,
  IoFdType,
  type RegionIoFdsReply,
} from '../../../src/abi/vfio-user/index.ts';
import { VfioError } from '../../../src/errors.ts';

const hex = (...fields: string[]) => new Uint8Array(Buffer.from(fields.join(''), 'hex'));
const einval = (fn: () => unknown, re: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof VfioError && e.errno === Errno.EINVAL && re.test(e.message));

const doorbell: IoFdEntry = {
  type: IoFdType.IOEVENTFD,
  gpaOffset: 0x100n,
  size: 4n,
  fdIndex: 0,
  flags: 1, // DATAMATCH
  shadowMemFdIndex: 0,
  shadowOffset: 0n,
  datamatch: 0x1234n,
};

describe('DEVICE_GET_REGION_IO_FDS', () => {
  it('golden: request {argsz 64, flags 0, index 0, count 0}', () => {
    const bytes = hex('40000000', '00000000', '00000000', '00000000');
    assert.deepEqual(encodeRegionIoFdsRequest({ argsz: 64, index: 0 }), bytes);
    assert.deepEqual(decodeRegionIoFdsRequest(bytes), { argsz: 64, index: 0 });
  });

  it("golden: reply with one 48-byte ioeventfd entry (libvfio-user's layout)", () => {
    const bytes = hex(
      '40000000',
      '00000000',
      '00000000',
      '01000000',
      '0001000000000000',
      '0400000000000000',
      '00000000',
      '00000000',
      '01000000',
      '00000000',
      '0000000000000000',
      '3412000000000000',
    );
    const m: RegionIoFdsReply = { argsz: 64, index: 0, count: 1, entries: [doorbell] };
    assert.deepEqual(encodeRegionIoFdsReply(m), bytes);
    assert.deepEqual(decodeRegionIoFdsReply(bytes), m);
  });

  it("decodes the spec's 40-byte entry (padding @28, datamatch @32), stride = (argsz - 16) / count", () => {
    const bytes = hex(
      '38000000',
      '00000000',
      '00000000',
      '01000000',
      '0001000000000000',
      '0400000000000000',
      '00000000',
      '00000000',
      '01000000',
      '00000000',
      '3412000000000000',
    );
    assert.deepEqual(decodeRegionIoFdsReply(bytes), { argsz: 56, index: 0, count: 1, entries: [doorbell] });
  });

  it('golden: short reply (client argsz too small): header only, count and needed argsz set', () => {
    const bytes = hex('70000000', '00000000', '01000000', '02000000');
    const m = { argsz: 112, index: 1, count: 2, entries: [] };
    assert.deepEqual(encodeRegionIoFdsReply(m), bytes);
    assert.deepEqual(decodeRegionIoFdsReply(bytes), m);
  });

  it('rejects bad requests and replies', () => {
    einval(
      () => decodeRegionIoFdsRequest(hex('10000000', '01000000', '00000000', '00000000')),
      /flags is 1, must be 0/,
    );
    einval(
      () => decodeRegionIoFdsRequest(hex('10000000', '00000000', '00000000', '01000000')),
      /count is 1, must be 0/,
    );
    einval(() => decodeRegionIoFdsRequest(hex('0c000000', '00000000', '00000000', '00000000')), /argsz is 12/);
    einval(() => decodeRegionIoFdsRequest(hex('01001000', '00000000', '00000000', '00000000')), /argsz is 1048577/);
    const entry = (type: string, flags: string) =>
      hex('40000000', '00000000', '00000000', '01000000', '00'.repeat(16), '00000000', type, flags, '00'.repeat(20));
    einval(() => decodeRegionIoFdsReply(entry('03000000', '00000000')), /type is 3/);
    einval(() => decodeRegionIoFdsReply(entry('00000000', '04000000')), /flags has unknown bits 0x4/);
    einval(
      () => decodeRegionIoFdsReply(hex('30000000', '00000000', '00000000', '01000000', '00'.repeat(32))),
      /entry size of 32/,
    );
    einval(
      () => decodeRegionIoFdsReply(hex('20000000', '00000000', '00000000', '00000000', '00'.repeat(16))),
      /count is 0/,
    );
  });

  it('property: round-trip', () => {
    const u64 = fc.bigInt({ min: 0n, max: 1n << 62n });
    const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
    const entry: fc.Arbitrary<IoFdEntry> = fc.oneof(
      fc.record(
        {
          type: fc.constantFrom(0 as const, 2 as const),
          gpaOffset: u64,
          size: u64,
          fdIndex: u32,
          flags: fc.constantFrom(0, 1, 2, 3, 8, 11),
          shadowMemFdIndex: u32,
          shadowOffset: u64,
          datamatch: u64,
        },
        { noNullPrototype: true },
      ),
      fc.record(
        {
          type: fc.constant(1 as const),
          gpaOffset: u64,
          size: u64,
          fdIndex: u32,
          flags: fc.integer({ min: 0, max: 3 }),
          userData: u64,
        },
        { noNullPrototype: true },
      ),
    );
    fc.assert(
      fc.property(fc.nat(), fc.array(entry, { maxLength: 5 }), (index, entries) => {
        const m = { argsz: 16 + 48 * entries.length, index, count: entries.length, entries };
        assert.deepEqual(decodeRegionIoFdsReply(encodeRegionIoFdsReply(m)), m);
      }),
      { numRuns: 300 },
    );
  });
});
