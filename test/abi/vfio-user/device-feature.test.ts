import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Errno } from '../../../src/abi/errno.ts';
import { FeatureId, MigrationFlag, MigState } from '../../../src/abi/migration-v2.ts';
import {
  decodeDeviceFeatureReply,
  decodeDeviceFeatureRequest,
  decodeDmaLoggingControl,
  decodeDmaLoggingReportReply,
  decodeMigrationData,
  decodeMigStateData,
  encodeDeviceFeatureEcho,
  encodeDeviceFeatureReply,
  encodeDeviceFeatureRequest,
  encodeDmaLoggingControl,
  encodeDmaLoggingReportReply,
  encodeDmaLoggingReportRequest,
  encodeMigrationData,
  encodeMigStateData,
} from '../../../src/abi/vfio-user/index.ts';
import { VfioError } from '../../../src/errors.ts';

const hex = (...fields: string[]) => new Uint8Array(Buffer.from(fields.join(''), 'hex'));
const einval = (fn: () => unknown, re: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof VfioError && e.errno === Errno.EINVAL && re.test(e.message));
const op = { get: false, set: false, probe: false };

describe('DEVICE_FEATURE', () => {
  it('golden: MIGRATION GET request (argsz 16, flags GET|1) and reply (flags STOP_COPY|PRE_COPY = 5)', () => {
    const req = hex('10000000', '01000100');
    const m = { ...op, argsz: 16, feature: FeatureId.MIGRATION, get: true };
    assert.deepEqual(encodeDeviceFeatureRequest(m), req);
    assert.deepEqual(decodeDeviceFeatureRequest(req), { ...m, data: new Uint8Array(0) });

    const rep = hex('10000000', '01000100', '0500000000000000');
    const data = encodeMigrationData({ flags: MigrationFlag.STOP_COPY | MigrationFlag.PRE_COPY });
    assert.deepEqual(encodeDeviceFeatureReply({ feature: FeatureId.MIGRATION, get: true, data }), rep);
    const got = decodeDeviceFeatureReply(rep);
    assert.deepEqual(got, { ...m, data: hex('0500000000000000') });
    assert.deepEqual(decodeMigrationData(got.data), { flags: 5n });
  });

  it('golden: MIG_DEVICE_STATE SET STOP_COPY (flags SET|2) and its echo reply', () => {
    const bytes = hex('10000000', '02000200', '03000000', '00000000');
    const data = encodeMigStateData({ deviceState: MigState.STOP_COPY });
    const m = { ...op, argsz: 16, feature: FeatureId.MIG_DEVICE_STATE, set: true, data };
    assert.deepEqual(encodeDeviceFeatureRequest(m), bytes);
    assert.deepEqual(decodeDeviceFeatureRequest(bytes), m);
    assert.deepEqual(encodeDeviceFeatureEcho(bytes), bytes);
    assert.deepEqual(decodeDeviceFeatureReply(bytes), m);
    assert.deepEqual(decodeMigStateData(m.data), { deviceState: 3, dataFd: 0 });
  });

  it('golden: MIG_DEVICE_STATE GET request and reply (RUNNING, data_fd 0)', () => {
    const req = hex('10000000', '02000100');
    assert.deepEqual(encodeDeviceFeatureRequest({ argsz: 16, feature: 2, get: true }), req);
    const rep = hex('10000000', '02000100', '02000000', '00000000');
    const data = encodeMigStateData({ deviceState: MigState.RUNNING });
    assert.deepEqual(encodeDeviceFeatureReply({ feature: 2, get: true, data }), rep);
    assert.deepEqual(decodeMigStateData(decodeDeviceFeatureReply(rep).data), { deviceState: 2, dataFd: 0 });
    // The kernel's "no fd" is -1: data_fd is signed.
    assert.equal(decodeMigStateData(hex('02000000', 'ffffffff')).dataFd, -1);
  });

  it('golden: DMA_LOGGING_START SET with one range, STOP SET, PROBE of START', () => {
    const start = hex(
      '28000000',
      '06000200',
      '0010000000000000',
      '01000000',
      '00000000',
      '0000000001000000',
      '0000004000000000',
    );
    const control = { pageSize: 4096n, ranges: [{ iova: 1n << 32n, length: 1n << 30n }] };
    const data = encodeDmaLoggingControl(control);
    assert.deepEqual(encodeDeviceFeatureRequest({ feature: FeatureId.DMA_LOGGING_START, set: true, data }), start);
    assert.deepEqual(decodeDmaLoggingControl(decodeDeviceFeatureRequest(start).data), control);
    const stop = hex('08000000', '07000200');
    assert.deepEqual(encodeDeviceFeatureRequest({ feature: FeatureId.DMA_LOGGING_STOP, set: true }), stop);
    assert.deepEqual(decodeDeviceFeatureReply(stop), {
      ...op,
      argsz: 8,
      feature: 7,
      set: true,
      data: new Uint8Array(0),
    });
    const probe = hex('08000000', '06000600');
    assert.deepEqual(encodeDeviceFeatureRequest({ feature: 6, set: true, probe: true }), probe);
    assert.deepEqual(encodeDeviceFeatureEcho(probe), probe);
  });

  it('golden: DMA_LOGGING_REPORT GET of 64 pages (argsz 8 + 24 + 8) and its reply bitmap', () => {
    const range = ['0000000001000000', '0000040000000000', '0010000000000000'];
    const req = hex('28000000', '08000100', ...range);
    const report = { iova: 1n << 32n, length: 0x40000n, pageSize: 4096n };
    const m = {
      argsz: 40,
      feature: FeatureId.DMA_LOGGING_REPORT,
      get: true,
      data: encodeDmaLoggingReportRequest(report),
    };
    assert.deepEqual(encodeDeviceFeatureRequest(m), req);
    assert.deepEqual(decodeDeviceFeatureRequest(req), { ...op, ...m });
    const rep = hex('28000000', '08000100', ...range, '0100000000000080'); // pages 0 and 63
    const bitmap = hex('0100000000000080');
    const data = encodeDmaLoggingReportReply({ ...report, bitmap });
    assert.deepEqual(encodeDeviceFeatureReply({ feature: 8, get: true, data }), rep);
    assert.deepEqual(decodeDmaLoggingReportReply(decodeDeviceFeatureReply(rep).data), { ...report, bitmap });
  });

  it('rejects what the kernel and libvfio-user reject', () => {
    einval(() => decodeDeviceFeatureRequest(hex('10000000', '010001')), /payload is 7 bytes/);
    einval(() => decodeDeviceFeatureRequest(hex('10000000', '01000000')), /none of GET, SET, PROBE/);
    einval(() => decodeDeviceFeatureRequest(hex('10000000', '02000300', '00'.repeat(8))), /GET and SET without PROBE/);
    einval(() => decodeDeviceFeatureRequest(hex('10000000', '01000800')), /unknown bits 0x80000/);
    einval(() => decodeDeviceFeatureRequest(hex('08000000', '01000100')), /argsz is 8, GET needs 16/);
    einval(() => decodeDeviceFeatureRequest(hex('10000000', '01000200')), /MIGRATION for an operation it lacks/);
    einval(() => decodeDeviceFeatureRequest(hex('10000000', '08000200')), /DMA_LOGGING_REPORT for an operation/);
    einval(() => decodeDeviceFeatureRequest(hex('0f000000', '02000200', '03000000', '00000000')), /argsz is 15, below/);
    einval(() => decodeDeviceFeatureRequest(hex('10000000', '02000200', '08000000', '00000000')), /device_state is 8/);
    einval(() => decodeDeviceFeatureRequest(hex('0c000000', '02000200', '03000000')), /payload is 4 bytes/);
    // DMA_LOGGING_STOP ignores any data that comes with it (the kernel and libvfio-user do).
    const stop = decodeDeviceFeatureRequest(hex('18000000', '07000200', '00'.repeat(16)));
    assert.equal(stop.feature, 7);
    assert.equal(stop.set, true);
    const start = (pageSize: string, n: string, extra = '') =>
      hex('40000000', '06000200', pageSize, n, '00000000', extra);
    einval(() => decodeDeviceFeatureRequest(start('0030000000000000', '00000000')), /page_size is 12288/);
    einval(() => decodeDeviceFeatureRequest(start('0010000000000000', '02000000', '00'.repeat(16))), /num_ranges is 2/);
    const report = (argsz: string, length: string, pageSize: string) =>
      hex(argsz, '08000100', '0000000001000000', length, pageSize);
    einval(() => decodeDeviceFeatureRequest(report('27000000', '0000040000000000', '0010000000000000')), /argsz is 39/);
    einval(
      () => decodeDeviceFeatureRequest(report('28000000', '0000040000000000', '0030000000000000')),
      /power of two/,
    );
    einval(
      () => decodeDeviceFeatureRequest(report('28000000', '0000000000000000', '0010000000000000')),
      /smaller than/,
    );
    einval(() => decodeDeviceFeatureReply(hex('18000000', '01000100', '0500000000000000')), /its own length 16/);
    einval(() => decodeDeviceFeatureReply(hex('10000000', '01000100', '0800000000000000')), /unknown bits 0x8/);
    einval(
      () =>
        decodeDeviceFeatureReply(
          hex('30000000', '08000100', '0000000001000000', '0000040000000000', '0010000000000000', '00'.repeat(16)),
        ),
      /exactly 32/,
    );
    einval(() => encodeDeviceFeatureEcho(hex('10000000', '01000100')), /answered with data/);
  });

  it('GET requests may carry output space (QEMU sends argsz bytes); it is ignored', () => {
    const m = decodeDeviceFeatureRequest(hex('10000000', '02000100', 'ffffffffffffffff'));
    assert.equal(m.get, true);
    assert.equal(m.data.byteLength, 8);
  });

  it('property: round-trip of requests and GET replies', () => {
    const state = fc.integer({ min: 0, max: 7 });
    const range = fc.record(
      { iova: fc.bigInt({ min: 0n, max: 1n << 48n }), length: fc.bigInt({ min: 0n, max: 1n << 40n }) },
      { noNullPrototype: true },
    );
    const shift = fc.integer({ min: 12, max: 30 }).map((s) => 1n << BigInt(s));
    fc.assert(
      fc.property(state, fc.integer({ min: -1, max: 1000 }), (deviceState, dataFd) => {
        const data = encodeMigStateData({ deviceState, dataFd });
        const m = { ...op, argsz: 16, feature: 2, set: true, data };
        assert.deepEqual(decodeDeviceFeatureRequest(encodeDeviceFeatureRequest(m)), m);
        assert.deepEqual(decodeMigStateData(data), { deviceState, dataFd });
      }),
      { numRuns: 200 },
    );
    fc.assert(
      fc.property(shift, fc.array(range, { maxLength: 8 }), (pageSize, ranges) => {
        const data = encodeDmaLoggingControl({ pageSize, ranges });
        assert.deepEqual(decodeDmaLoggingControl(data), { pageSize, ranges });
        const m = { ...op, argsz: 8 + data.byteLength, feature: 6, set: true, data };
        assert.deepEqual(decodeDeviceFeatureReply(encodeDeviceFeatureReply(m)), m);
      }),
      { numRuns: 200 },
    );
    fc.assert(
      fc.property(
        shift,
        fc.integer({ min: 1, max: 4096 }),
        fc.bigInt({ min: 0n, max: 1n << 48n }),
        (pageSize, pages, iova) => {
          const report = { iova, length: BigInt(pages) * pageSize, pageSize };
          const bitmap = new Uint8Array(Math.ceil(pages / 64) * 8).fill(pages & 0xff);
          const data = encodeDmaLoggingReportReply({ ...report, bitmap });
          const rep = decodeDeviceFeatureReply(encodeDeviceFeatureReply({ feature: 8, get: true, data }));
          assert.deepEqual(decodeDmaLoggingReportReply(rep.data), { ...report, bitmap });
        },
      ),
      { numRuns: 200 },
    );
    fc.assert(
      fc.property(fc.constantFrom(0n, 1n, 3n, 5n, 7n), (flags) => {
        assert.deepEqual(decodeMigrationData(encodeMigrationData({ flags })), { flags });
      }),
    );
  });
});
