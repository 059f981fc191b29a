import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Errno } from '../../../src/abi/errno.ts';
import {
  DeviceInfoFlag,
  decodeDeviceInfoReply,
  decodeDeviceInfoRequest,
  encodeDeviceInfoReply,
  encodeDeviceInfoRequest,
  NUM_REGIONS_V1,
  NUM_REGIONS_V2,
} from '../../../src/abi/vfio-user/index.ts';
import { VfioError } from '../../../src/errors.ts';

const hex = (...fields: string[]) => new Uint8Array(Buffer.from(fields.join(''), 'hex'));
const einval = (fn: () => unknown, re: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof VfioError && e.errno === Errno.EINVAL && re.test(e.message));

describe('DEVICE_GET_INFO', () => {
  it('golden: request {argsz 16}', () => {
    const bytes = hex('10000000', '00000000', '00000000', '00000000');
    assert.deepEqual(encodeDeviceInfoRequest(), bytes);
    assert.deepEqual(decodeDeviceInfoRequest(bytes), { argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 });
  });

  it('golden: libvfio-user replies RESET|PCI, 9 regions (HEAD) or 10 (v1 era), 5 irqs', () => {
    const head = hex('10000000', '03000000', '09000000', '05000000');
    const m = { argsz: 16, flags: DeviceInfoFlag.RESET | DeviceInfoFlag.PCI, numRegions: NUM_REGIONS_V2, numIrqs: 5 };
    assert.deepEqual(encodeDeviceInfoReply(m), head);
    assert.deepEqual(decodeDeviceInfoReply(head), m);
    const v1 = hex('10000000', '03000000', '0a000000', '05000000');
    assert.deepEqual(decodeDeviceInfoReply(v1), { ...m, numRegions: NUM_REGIONS_V1 });
  });

  it('rejects short payloads, small argsz and unknown reply flags', () => {
    einval(() => decodeDeviceInfoRequest(new Uint8Array(12)), /DEVICE_GET_INFO request: payload is 12 bytes/);
    einval(() => decodeDeviceInfoRequest(hex('0f000000', '00'.repeat(12))), /argsz is 15/);
    einval(
      () => decodeDeviceInfoReply(hex('10000000', '04000000', '09000000', '05000000')),
      /flags has unknown bits 0x4/,
    );
  });

  it('property: round-trip', () => {
    const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
    const arb = fc.record(
      {
        argsz: fc.integer({ min: 16, max: 0xffff_ffff }),
        flags: fc.integer({ min: 0, max: 3 }),
        numRegions: u32,
        numIrqs: u32,
      },
      { noNullPrototype: true },
    );
    fc.assert(
      fc.property(arb, (m) => {
        assert.deepEqual(decodeDeviceInfoReply(encodeDeviceInfoReply(m)), m);
        assert.deepEqual(decodeDeviceInfoRequest(encodeDeviceInfoRequest(m)), m);
      }),
      { numRuns: 300 },
    );
  });
});
