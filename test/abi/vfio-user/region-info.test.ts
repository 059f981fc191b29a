import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Errno } from '../../../src/abi/errno.ts';
import {
  SEED_REGION_SUBTYPE,
  SEED_REGION_TYPE,
  V1_REGION_SUBTYPE,
  V1_REGION_TYPE,
} from '../../../src/abi/migration.ts';
import {
  decodeRegionInfoReply,
  decodeRegionInfoRequest,
  encodeRegionInfoReply,
  encodeRegionInfoReplyFor,
  encodeRegionInfoRequest,
  type RegionCap,
  RegionInfoFlag,
  type RegionInfoReply,
  regionInfoFullSize,
  regionTypeOf,
} from '../../../src/abi/vfio-user/index.ts';
import { VfioError } from '../../../src/errors.ts';

const hex = (...fields: string[]) => new Uint8Array(Buffer.from(fields.join(''), 'hex'));
const einval = (fn: () => unknown, re: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof VfioError && e.errno === Errno.EINVAL && re.test(e.message));

const { READ, WRITE, MMAP, CAPS } = RegionInfoFlag;

// v1-era libvfio-user migration region (index 9): 4 KiB register page + 1 MiB mmappable data section.
// struct (32) | TYPE cap @32, next 48, type 3 subtype 1 | SPARSE_MMAP @48, next 0, 1 area {0x1000, 1 MiB}.
const V1_MIGRATION_REPLY = [
  ['50000000', '0f000000', '09000000', '20000000', '0010100000000000', '0000000000000000'], // argsz 80, flags 0xf
  ['0200', '0100', '30000000', '03000000', '01000000'], // TYPE
  ['0100', '0100', '00000000', '01000000', '00000000', '0010000000000000', '0000100000000000'], // SPARSE_MMAP
].flat();

const v1Reply: RegionInfoReply = {
  argsz: 80,
  flags: READ | WRITE | MMAP | CAPS,
  index: 9,
  size: 0x101000n,
  offset: 0n,
  caps: [
    { kind: 'type', type: V1_REGION_TYPE, subtype: V1_REGION_SUBTYPE },
    { kind: 'sparse-mmap', areas: [{ offset: 0x1000n, size: 0x100000n }] },
  ],
};

describe('DEVICE_GET_REGION_INFO', () => {
  it('golden: request {argsz 32, index 9}', () => {
    const bytes = hex('20000000', '00000000', '09000000', '00000000', '00'.repeat(16));
    assert.deepEqual(encodeRegionInfoRequest({ index: 9 }), bytes);
    assert.deepEqual(decodeRegionInfoRequest(bytes), { argsz: 32, index: 9 });
  });

  it('golden: v1-era migration region reply (TYPE 3/1 at 32 → SPARSE_MMAP at 48)', () => {
    const bytes = hex(...V1_MIGRATION_REPLY);
    assert.deepEqual(encodeRegionInfoReply(v1Reply), bytes);
    assert.deepEqual(decodeRegionInfoReply(bytes), v1Reply);
    assert.deepEqual(regionTypeOf(v1Reply), { type: 3, subtype: 1 });
    assert.equal(regionInfoFullSize(v1Reply.caps), 80);
  });

  it('golden: seed flavor migration region (TYPE 2/1 only, trapped, argsz 48)', () => {
    const bytes = hex(
      '30000000',
      '0b000000',
      '09000000',
      '20000000',
      '0020000000000000',
      '0000000000000000',
      '0200',
      '0100',
      '00000000',
      '02000000',
      '01000000',
    );
    const m: RegionInfoReply = {
      argsz: 48,
      flags: READ | WRITE | CAPS,
      index: 9,
      size: 0x2000n,
      offset: 0n,
      caps: [{ kind: 'type', type: SEED_REGION_TYPE, subtype: SEED_REGION_SUBTYPE }],
    };
    assert.deepEqual(encodeRegionInfoReply(m), bytes);
    assert.deepEqual(decodeRegionInfoReply(bytes), m);
  });

  it('golden: a plain BAR without caps (argsz 32, cap_offset 0)', () => {
    const bytes = hex('20000000', '03000000', '00000000', '00000000', '0010000000000000', '0000000000000000');
    const m: RegionInfoReply = { argsz: 32, flags: READ | WRITE, index: 0, size: 0x1000n, offset: 0n, caps: [] };
    assert.deepEqual(encodeRegionInfoReply(m), bytes);
    assert.deepEqual(decodeRegionInfoReply(bytes), m);
  });

  it('argsz truncation: too small a request gets argsz = full, CAPS clear, no caps; then the retry fits', () => {
    const { caps, ...rest } = v1Reply;
    const info = { ...rest, flags: READ | WRITE | MMAP, caps };
    const short = hex('50000000', '07000000', '09000000', '00000000', '0010100000000000', '0000000000000000');
    assert.deepEqual(encodeRegionInfoReplyFor(info, 32), { payload: short, capsSent: false });
    assert.deepEqual(decodeRegionInfoReply(short), { ...rest, flags: READ | WRITE | MMAP, caps: [] });
    // A request argsz between 32 and full gets min(full, argsz) bytes, zero padded.
    const mid = encodeRegionInfoReplyFor(info, 40);
    assert.equal(mid.payload.byteLength, 40);
    assert.deepEqual(decodeRegionInfoReply(mid.payload).caps, []);
    const full = encodeRegionInfoReplyFor(info, 80);
    assert.deepEqual(full, { payload: hex(...V1_MIGRATION_REPLY), capsSent: true });
    assert.deepEqual(encodeRegionInfoReplyFor(info, 4096).payload, hex(...V1_MIGRATION_REPLY));
  });

  it('rejects malformed replies and requests', () => {
    const b = () => hex(...V1_MIGRATION_REPLY);
    const set32 = (bytes: Uint8Array, off: number, v: number) => {
      new DataView(bytes.buffer).setUint32(off, v, true);
      return bytes;
    };
    einval(() => decodeRegionInfoRequest(hex('1f000000', '00'.repeat(28))), /argsz is 31/);
    einval(() => decodeRegionInfoReply(b().subarray(0, 79)), /argsz is 80 but the reply with caps is 79 bytes/);
    einval(() => decodeRegionInfoReply(set32(b(), 4, 0x1f)), /flags has unknown bits 0x10/);
    einval(() => decodeRegionInfoReply(set32(b(), 12, 40)), /cap_offset is 40, must be 32/);
    einval(() => decodeRegionInfoReply(set32(b(), 36, 32)), /next is 32/); // loop back onto itself
    einval(() => decodeRegionInfoReply(set32(b(), 36, 96)), /next is 96/); // past the end
    einval(() => decodeRegionInfoReply(set32(b(), 36, 56)), /is 16 bytes but the next cap/);
    einval(() => decodeRegionInfoReply(set32(b(), 56, 2)), /nr_areas is 2/);
    const v2 = b();
    v2[34] = 2;
    einval(() => decodeRegionInfoReply(v2), /version is 2, must be 1/);
    const noCaps = hex('20000000', '03000000', '00000000', '20000000', '00'.repeat(16));
    einval(() => decodeRegionInfoReply(noCaps), /cap_offset is 32 without CAPS/);
    const junk = hex('30000000', '03000000', '00000000', '00000000', '00'.repeat(16), '01', '00'.repeat(15));
    einval(() => decodeRegionInfoReply(junk), /non-zero bytes after the struct/);
    einval(() => encodeRegionInfoReply({ ...v1Reply, flags: READ }), /must have CAPS exactly when caps are given/);
  });

  it('keeps caps it does not know as raw bytes', () => {
    const bytes = hex(
      '38000000',
      '08000000',
      '02000000',
      '20000000',
      '00'.repeat(16),
      '0300',
      '0100',
      '28000000',
      '0200',
      '0100',
      '00000000',
      '00000000',
      '00000000', // MSIX_MAPPABLE @32 → TYPE @40
    );
    const m = decodeRegionInfoReply(bytes);
    assert.deepEqual(m.caps, [
      { kind: 'raw', id: 3, version: 1, data: new Uint8Array(0) },
      { kind: 'type', type: 0, subtype: 0 },
    ]);
    assert.deepEqual(encodeRegionInfoReply(m), bytes);
  });

  it('property: round-trip', () => {
    const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
    const area = fc.record(
      { offset: fc.bigInt({ min: 0n, max: 1n << 40n }), size: fc.bigInt({ min: 0n, max: 1n << 40n }) },
      { noNullPrototype: true },
    );
    const cap: fc.Arbitrary<RegionCap> = fc.oneof(
      fc.record({ kind: fc.constant('type' as const), type: fc.nat(), subtype: fc.nat() }, { noNullPrototype: true }),
      fc.record(
        { kind: fc.constant('sparse-mmap' as const), areas: fc.array(area, { maxLength: 4 }) },
        { noNullPrototype: true },
      ),
      fc.record(
        {
          kind: fc.constant('raw' as const),
          id: fc.integer({ min: 3, max: 0xffff }),
          version: fc.integer({ min: 0, max: 0xffff }),
          data: fc.uint8Array({ maxLength: 16 }),
        },
        { noNullPrototype: true },
      ),
    );
    const arb = fc.record(
      {
        flags: fc.integer({ min: 0, max: 7 }),
        index: fc.nat(),
        size: u64,
        offset: u64,
        caps: fc.array(cap, { maxLength: 4 }),
      },
      { noNullPrototype: true },
    );
    fc.assert(
      fc.property(arb, (m) => {
        const reply = { ...m, flags: m.flags | (m.caps.length ? CAPS : 0), argsz: regionInfoFullSize(m.caps) };
        // A raw cap last in the chain extends to the end of the reply, so the round trip is exact.
        assert.deepEqual(decodeRegionInfoReply(encodeRegionInfoReply(reply)), reply);
      }),
      { numRuns: 300 },
    );
  });
});
