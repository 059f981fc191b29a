import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Errno } from '../../../src/abi/errno.ts';
import {
  DmaMapFlag,
  type DmaMapRequest,
  decodeDmaMapReply,
  decodeDmaMapRequest,
  encodeDmaMapReply,
  encodeDmaMapRequest,
} from '../../../src/abi/vfio-user/index.ts';
import { VfioError } from '../../../src/errors.ts';

const hex = (...fields: string[]) => new Uint8Array(Buffer.from(fields.join(''), 'hex'));
const einval = (fn: () => unknown, re: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof VfioError && e.errno === Errno.EINVAL && re.test(e.message));
const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });

describe('DMA_MAP', () => {
  it('golden: request {argsz 32, READ|WRITE, offset 0x1000, address 4 GiB, size 1 GiB}; reply empty', () => {
    const bytes = hex('20000000', '03000000', '0010000000000000', '0000000001000000', '0000004000000000');
    const m: DmaMapRequest = { argsz: 32, flags: 3, offset: 0x1000n, address: 1n << 32n, size: 1n << 30n };
    assert.deepEqual(encodeDmaMapRequest(m), bytes);
    assert.deepEqual(decodeDmaMapRequest(bytes), m);
    assert.deepEqual(encodeDmaMapReply(), new Uint8Array(0));
    decodeDmaMapReply(new Uint8Array(0));
  });

  it('golden: HEAD flags MMAP (0x4) and FILE_IO (0x8), one at a time', () => {
    const tail = ['0000000000000000', '0000100000000000', '0000010000000000'];
    const { READ, WRITE, MMAP, FILE_IO } = DmaMapFlag;
    assert.equal(decodeDmaMapRequest(hex('20000000', '07000000', ...tail)).flags, READ | WRITE | MMAP);
    assert.equal(decodeDmaMapRequest(hex('20000000', '09000000', ...tail)).flags, READ | FILE_IO);
    einval(() => decodeDmaMapRequest(hex('20000000', '0c000000', ...tail)), /both MMAP and FILE_IO/);
  });

  it('rejects short payloads, small argsz, unknown flags, wrapping ranges', () => {
    einval(() => decodeDmaMapRequest(new Uint8Array(31)), /DMA_MAP request: payload is 31 bytes/);
    einval(() => decodeDmaMapRequest(hex('1f000000', '03000000', '00'.repeat(24))), /argsz is 31/);
    einval(() => decodeDmaMapRequest(hex('20000000', '10000000', '00'.repeat(24))), /flags has unknown bits 0x10/);
    einval(
      () => decodeDmaMapRequest(hex('20000000', '03000000', '00'.repeat(8), 'ffffffffffffffff', '0200000000000000')),
      /wraps past 2\^64/,
    );
    einval(() => decodeDmaMapReply(new Uint8Array(1)), /DMA_MAP reply/);
    einval(() => encodeDmaMapRequest({ flags: 3, offset: -1n, address: 0n, size: 0n }), /offset is not a u64/);
  });

  it('property: round-trip', () => {
    const arb = fc
      .record(
        {
          argsz: fc.integer({ min: 32, max: 0xffff_ffff }),
          flags: fc.integer({ min: 0, max: 15 }).filter((f) => (f & 12) !== 12),
          offset: u64,
          address: u64,
          size: u64,
        },
        { noNullPrototype: true },
      )
      .filter((m) => m.address + m.size <= 1n << 64n);
    fc.assert(
      fc.property(arb, (m) => assert.deepEqual(decodeDmaMapRequest(encodeDmaMapRequest(m)), m)),
      { numRuns: 300 },
    );
  });
});
