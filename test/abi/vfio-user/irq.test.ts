import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Errno } from '../../../src/abi/errno.ts';
import {
  decodeIrqInfoReply,
  decodeIrqInfoRequest,
  decodeIrqSetReply,
  decodeIrqSetRequest,
  encodeIrqInfoReply,
  encodeIrqInfoRequest,
  encodeIrqSetReply,
  encodeIrqSetRequest,
  IrqIndex,
  IrqInfoFlag,
  IrqSetFlag,
} from '../../../src/abi/vfio-user/index.ts';
import { VfioError } from '../../../src/errors.ts';

const hex = (...fields: string[]) => new Uint8Array(Buffer.from(fields.join(''), 'hex'));
const einval = (fn: () => unknown, re: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof VfioError && e.errno === Errno.EINVAL && re.test(e.message));
const { DATA_NONE, DATA_BOOL, DATA_EVENTFD, ACTION_MASK, ACTION_TRIGGER } = IrqSetFlag;

describe('DEVICE_GET_IRQ_INFO', () => {
  it('golden: MSI-X request and the reply libvfio-user gives (EVENTFD, 32 vectors)', () => {
    const req = hex('10000000', '00000000', '02000000', '00000000');
    assert.deepEqual(encodeIrqInfoRequest({ index: IrqIndex.MSIX }), req);
    assert.deepEqual(decodeIrqInfoRequest(req), { argsz: 16, flags: 0, index: 2, count: 0 });
    const rep = hex('10000000', '01000000', '02000000', '20000000');
    const m = { argsz: 16, flags: IrqInfoFlag.EVENTFD, index: 2, count: 32 };
    assert.deepEqual(encodeIrqInfoReply(m), rep);
    assert.deepEqual(decodeIrqInfoReply(rep), m);
  });

  it('rejects index >= 5, small argsz, unknown flags', () => {
    einval(() => decodeIrqInfoRequest(hex('10000000', '00000000', '05000000', '00000000')), /index is 5/);
    einval(() => decodeIrqInfoRequest(hex('0f000000', '00000000', '00000000', '00000000')), /argsz is 15/);
    einval(() => decodeIrqInfoReply(hex('10000000', '10000000', '00000000', '00000000')), /unknown bits 0x10/);
  });
});

describe('DEVICE_SET_IRQS', () => {
  it('golden: EVENTFD|TRIGGER on MSI-X 0..3 (the 4 fds ride along); empty reply', () => {
    const bytes = hex('14000000', '24000000', '02000000', '00000000', '04000000');
    const m = { argsz: 20, flags: DATA_EVENTFD | ACTION_TRIGGER, index: 2, start: 0, count: 4 };
    assert.deepEqual(encodeIrqSetRequest(m), bytes);
    assert.deepEqual(decodeIrqSetRequest(bytes), m);
    assert.deepEqual(encodeIrqSetReply(), new Uint8Array(0));
    decodeIrqSetReply(new Uint8Array(0));
  });

  it('golden: BOOL|TRIGGER on MSI 1..3 with 3 data bytes', () => {
    const bytes = hex('17000000', '22000000', '01000000', '01000000', '03000000', '010001');
    const m = { argsz: 23, flags: DATA_BOOL | ACTION_TRIGGER, index: 1, start: 1, count: 3, data: hex('010001') };
    assert.deepEqual(encodeIrqSetRequest(m), bytes);
    assert.deepEqual(decodeIrqSetRequest(bytes), m);
    // argsz covering only the fixed part is accepted (libvfio-user checks no more).
    assert.equal(
      decodeIrqSetRequest(hex('14000000', '22000000', '01000000', '01000000', '03000000', '010001')).argsz,
      20,
    );
  });

  it('golden: disable a whole index (NONE|TRIGGER, start 0, count 0)', () => {
    const bytes = hex('14000000', '21000000', '01000000', '00000000', '00000000');
    const m = { argsz: 20, flags: DATA_NONE | ACTION_TRIGGER, index: 1, start: 0, count: 0 };
    assert.deepEqual(encodeIrqSetRequest(m), bytes);
    assert.deepEqual(decodeIrqSetRequest(bytes), m);
  });

  it('rejects what libvfio-user rejects without looking at the device', () => {
    const set = (flags: string, index: string, start: string, count: string, data = '') =>
      hex('14000000', flags, index, start, count, data);
    einval(() => decodeIrqSetRequest(set('26000000', '02000000', '00000000', '01000000')), /exactly one data type/);
    einval(() => decodeIrqSetRequest(set('25000000', '02000000', '00000000', '01000000')), /exactly one data type/);
    einval(() => decodeIrqSetRequest(set('34000000', '02000000', '00000000', '01000000')), /exactly one action/);
    einval(() => decodeIrqSetRequest(set('64000000', '02000000', '00000000', '01000000')), /unknown bits 0x40/);
    einval(() => decodeIrqSetRequest(set('24000000', '05000000', '00000000', '01000000')), /index is 5/);
    einval(
      () => decodeIrqSetRequest(set('0c000000', '03000000', '00000000', '01000000')),
      /must be TRIGGER for index 3/,
    );
    einval(() => decodeIrqSetRequest(set('24000000', '04000000', '00000000', '02000000')), /at most 1 for index 4/);
    einval(() => decodeIrqSetRequest(set('21000000', '01000000', '01000000', '00000000')), /start is 1 with count 0/);
    einval(
      () => decodeIrqSetRequest(set('24000000', '01000000', '00000000', '00000000')),
      /NONE\|TRIGGER with count 0/,
    );
    einval(() => decodeIrqSetRequest(set('22000000', '01000000', '00000000', '02000000', '01')), /exactly 22/);
    einval(() => decodeIrqSetRequest(set('24000000', '01000000', '00000000', '01000000', '01')), /exactly 20/);
    einval(() => decodeIrqSetRequest(set('24000000', '01000000', 'ffffffff', '01000000')), /overflows u32/);
    einval(() => decodeIrqSetRequest(hex('13000000', '24000000', '01000000', '00000000', '01000000')), /argsz is 19/);
  });

  it('property: round-trip', () => {
    const arb = fc
      .record(
        {
          data: fc.constantFrom(DATA_NONE, DATA_BOOL, DATA_EVENTFD),
          action: fc.constantFrom(ACTION_MASK, IrqSetFlag.ACTION_UNMASK, ACTION_TRIGGER),
          index: fc.integer({ min: 0, max: 2 }),
          start: fc.integer({ min: 0, max: 2048 }),
          count: fc.integer({ min: 1, max: 64 }),
        },
        { noNullPrototype: true },
      )
      .chain(({ data, action, index, start, count }) =>
        fc.uint8Array({ minLength: count, maxLength: count }).map((bytes) => ({
          argsz: 20 + (data === DATA_BOOL ? count : 0),
          flags: data | action,
          index,
          start,
          count,
          ...(data === DATA_BOOL ? { data: bytes } : {}),
        })),
      );
    fc.assert(
      fc.property(arb, (m) => assert.deepEqual(decodeIrqSetRequest(encodeIrqSetRequest(m)), m)),
      { numRuns: 300 },
    );
    const info = fc.record(
      {
        argsz: fc.integer({ min: 16, max: 1 << 20 }),
        flags: fc.integer({ min: 0, max: 15 }),
        index: fc.integer({ min: 0, max: 4 }),
        count: fc.nat(),
      },
      { noNullPrototype: true },
    );
    fc.assert(
      fc.property(info, (m) => assert.deepEqual(decodeIrqInfoReply(encodeIrqInfoReply(m)), m)),
      { numRuns: 200 },
    );
  });
});
