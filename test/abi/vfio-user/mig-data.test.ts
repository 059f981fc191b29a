import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Errno } from '../../../src/abi/errno.ts';
import {
  decodeMigDataReadReply,
  decodeMigDataReadRequest,
  decodeMigDataWriteReply,
  decodeMigDataWriteRequest,
  encodeMigDataReadReply,
  encodeMigDataReadRequest,
  encodeMigDataWriteReply,
  encodeMigDataWriteRequest,
} from '../../../src/abi/vfio-user/index.ts';
import { VfioError } from '../../../src/errors.ts';

const hex = (...fields: string[]) => new Uint8Array(Buffer.from(fields.join(''), 'hex'));
const einval = (fn: () => unknown, re: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof VfioError && e.errno === Errno.EINVAL && re.test(e.message));

describe('MIG_DATA_READ / MIG_DATA_WRITE', () => {
  it('golden: READ request for 4096 bytes (argsz 4104) and a 4-byte reply', () => {
    const req = hex('08100000', '00100000');
    assert.deepEqual(encodeMigDataReadRequest({ size: 4096 }), req);
    assert.deepEqual(decodeMigDataReadRequest(req), { argsz: 4104, size: 4096 });
    const rep = hex('0c000000', '04000000', 'cafef00d');
    assert.deepEqual(encodeMigDataReadReply({ data: hex('cafef00d') }), rep);
    assert.deepEqual(decodeMigDataReadReply(rep), { argsz: 12, data: hex('cafef00d') });
  });

  it('golden: end of stream (n = 0) and libvfio-user padding after argsz', () => {
    const eos = hex('08000000', '00000000');
    assert.deepEqual(encodeMigDataReadReply({ data: new Uint8Array(0) }), eos);
    assert.deepEqual(decodeMigDataReadReply(eos), { argsz: 8, data: new Uint8Array(0) });
    // libvfio-user sends 8 + requested bytes (8 here) even when only 4 were produced.
    const padded = hex('0c000000', '04000000', 'cafef00d', '00000000');
    assert.deepEqual(decodeMigDataReadReply(padded), { argsz: 12, data: hex('cafef00d') });
    // Our server pads the same way (padTo = the size asked for): libvfio-user's client wants that length.
    assert.deepEqual(encodeMigDataReadReply({ data: hex('cafef00d'), padTo: 8 }), padded);
    assert.deepEqual(
      encodeMigDataReadReply({ data: hex('cafef00d'), padTo: 2 }),
      hex('0c000000', '04000000', 'cafef00d'),
    );
  });

  it('golden: WRITE request with 4 bytes; empty reply', () => {
    const req = hex('0c000000', '04000000', 'cafef00d');
    assert.deepEqual(encodeMigDataWriteRequest({ data: hex('cafef00d') }), req);
    assert.deepEqual(decodeMigDataWriteRequest(req), { argsz: 12, data: hex('cafef00d') });
    assert.deepEqual(encodeMigDataWriteReply(), new Uint8Array(0));
    decodeMigDataWriteReply(new Uint8Array(0));
  });

  it('rejects sizes above max_data_xfer_size, small argsz, short data', () => {
    einval(() => decodeMigDataReadRequest(hex('08101000', '01001000')), /size is 1048577, above/);
    assert.equal(decodeMigDataReadRequest(hex('08101000', '01001000'), { maxSize: 2 << 20 }).size, 1048577);
    einval(() => decodeMigDataReadRequest(hex('07100000', '00100000')), /argsz is 4103/);
    einval(
      () => decodeMigDataReadReply(hex('10000000', '04000000', 'cafef00d')),
      /argsz is 16, must be 8 \+ size = 12/,
    );
    einval(() => decodeMigDataReadReply(hex('0c000000', '04000000', 'cafe')), /payload is 10 bytes/);
    einval(() => decodeMigDataWriteRequest(hex('0c000000', '04000000', 'cafe')), /payload \(size 4\)/);
    einval(() => decodeMigDataWriteRequest(hex('0b000000', '04000000', 'cafef00d')), /argsz is 11/);
    einval(() => decodeMigDataWriteReply(new Uint8Array(8)), /MIG_DATA_WRITE reply/);
  });

  it('property: round-trip', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 512 }), fc.nat({ max: 64 }), (data, extra) => {
        const argsz = 8 + data.byteLength + extra;
        assert.deepEqual(decodeMigDataWriteRequest(encodeMigDataWriteRequest({ argsz, data })), { argsz, data });
        assert.deepEqual(decodeMigDataReadReply(encodeMigDataReadReply({ data })), {
          argsz: 8 + data.byteLength,
          data,
        });
        const size = data.byteLength;
        assert.deepEqual(decodeMigDataReadRequest(encodeMigDataReadRequest({ argsz, size })), { argsz, size });
      }),
      { numRuns: 300 },
    );
  });
});
