// Every decoder, fed random bytes and mutated valid messages, either returns or throws VfioError:
// never a RangeError from DataView, a TypeError, or anything else a server would not turn into a reply.
// And what decodes round-trips: its encoder takes the decoded value and the bytes it writes decode to that
// same value (decode→encode→decode), for every decoder that has an encoder, on its valid seed and mutations.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Errno } from '../../../src/abi/errno.ts';
import { decodeStruct } from '../../../src/abi/fields.ts';
import { SEED_MIGRATION_INFO, V1_MIGRATION_INFO } from '../../../src/abi/migration.ts';
import * as v from '../../../src/abi/vfio-user/index.ts';
import { decodeEmpty } from '../../../src/abi/vfio-user/wire.ts';
import { StateStreamReader } from '../../../src/device/state-reader.ts';
import { decodeRecordHeader } from '../../../src/device/state-stream.ts';
import { VfioError } from '../../../src/errors.ts';
import { FuzzTally, fuzzParams } from '../../support/fuzz.ts';

type Decoder = (bytes: Uint8Array) => unknown;

const hex = (...fields: string[]) => new Uint8Array(Buffer.from(fields.join(''), 'hex'));
const json = (s: string) => new Uint8Array([0, 0, 2, 0, ...Buffer.from(s), 0]);

// [decoder, a valid payload to mutate]
const DECODERS: Record<string, [Decoder, Uint8Array]> = {
  header: [v.decodeHeader, hex('0100', '0200', '30000000', '00000000', '00000000')],
  message: [v.decodeMessage, hex('0100', '0d00', '10000000', '00000000', '00000000')],
  version: [
    v.decodeVersion,
    json('{"capabilities":{"max_msg_fds":8,"migration":{"pgsize":4096},"twin_socket":{"supported":true}}}'),
  ],
  dmaMapRequest: [
    v.decodeDmaMapRequest,
    hex('20000000', '03000000', '00'.repeat(8), '0000000001000000', '0000004000000000'),
  ],
  dmaMapReply: [v.decodeDmaMapReply, new Uint8Array(0)],
  dmaUnmapRequest: [
    v.decodeDmaUnmapRequest,
    hex('48000000', '01000000', '0000000001000000', '0000100000000000', '0010000000000000', '2000000000000000'),
  ],
  dmaUnmapReply: [
    v.decodeDmaUnmapReply,
    hex(
      '48000000',
      '01000000',
      '0000000001000000',
      '0000100000000000',
      '0010000000000000',
      '2000000000000000',
      '00'.repeat(32),
    ),
  ],
  deviceInfoRequest: [v.decodeDeviceInfoRequest, hex('10000000', '00'.repeat(12))],
  deviceInfoReply: [v.decodeDeviceInfoReply, hex('10000000', '03000000', '09000000', '05000000')],
  regionInfoRequest: [v.decodeRegionInfoRequest, hex('20000000', '00000000', '09000000', '00'.repeat(20))],
  regionInfoReply: [
    v.decodeRegionInfoReply,
    hex(
      '50000000',
      '0f000000',
      '09000000',
      '20000000',
      '0010100000000000',
      '0000000000000000',
      '0200',
      '0100',
      '30000000',
      '03000000',
      '01000000',
      '0100',
      '0100',
      '00000000',
      '01000000',
      '00000000',
      '0010000000000000',
      '0000100000000000',
    ),
  ],
  regionIoFdsRequest: [v.decodeRegionIoFdsRequest, hex('40000000', '00'.repeat(12))],
  regionIoFdsReply: [
    v.decodeRegionIoFdsReply,
    hex('40000000', '00000000', '00000000', '01000000', '00'.repeat(24), '01000000', '00'.repeat(20)),
  ],
  irqInfoRequest: [v.decodeIrqInfoRequest, hex('10000000', '00000000', '02000000', '00000000')],
  irqInfoReply: [v.decodeIrqInfoReply, hex('10000000', '01000000', '02000000', '20000000')],
  irqSetRequest: [v.decodeIrqSetRequest, hex('17000000', '22000000', '01000000', '01000000', '03000000', '010001')],
  irqSetReply: [v.decodeIrqSetReply, new Uint8Array(0)],
  regionReadRequest: [v.decodeRegionReadRequest, hex('0000000000000000', '07000000', '04000000')],
  regionReadReply: [v.decodeRegionReadReply, hex('0000000000000000', '07000000', '04000000', '86801000')],
  regionWriteRequest: [v.decodeRegionWriteRequest, hex('0010000000000000', '00000000', '04000000', '01020304')],
  regionWriteReply: [v.decodeRegionWriteReply, hex('0010000000000000', '00000000', '04000000')],
  dmaReadRequest: [v.decodeDmaReadRequest, hex('0020000001000000', '1000000000000000')],
  dmaReadReply: [v.decodeDmaReadReply, hex('0020000001000000', '0400000000000000', 'deadbeef')],
  dmaWriteRequest: [v.decodeDmaWriteRequest, hex('0030000001000000', '0400000000000000', 'deadbeef')],
  dmaWriteReply: [v.decodeDmaWriteReply, hex('0030000001000000', '0400000000000000')],
  deviceResetRequest: [v.decodeDeviceResetRequest, new Uint8Array(0)],
  deviceResetReply: [v.decodeDeviceResetReply, new Uint8Array(0)],
  dirtyPagesRequest: [
    v.decodeDirtyPagesRequest,
    hex('30000000', '04000000', '0000000001000000', '0000040000000000', '0010000000000000', '0800000000000000'),
  ],
  dirtyPagesControlReply: [v.decodeDirtyPagesControlReply, new Uint8Array(0)],
  dirtyPagesBitmapReply: [
    v.decodeDirtyPagesBitmapReply,
    hex(
      '30000000',
      '04000000',
      '0000000001000000',
      '0000040000000000',
      '0010000000000000',
      '0800000000000000',
      '0300000000000080',
    ),
  ],
  writeMultiRequest: [
    v.decodeWriteMultiRequest,
    hex('0100000000000000', '0020000000000000', '00000000', '04000000', '1122334400000000'),
  ],
  writeMultiReply: [v.decodeWriteMultiReply, hex('0100000000000000')],
  deviceFeatureRequest: [
    v.decodeDeviceFeatureRequest,
    hex('28000000', '08000100', '0000000001000000', '0000040000000000', '0010000000000000'),
  ],
  deviceFeatureReply: [v.decodeDeviceFeatureReply, hex('10000000', '01000100', '0500000000000000')],
  dmaLoggingStart: [
    v.decodeDeviceFeatureRequest,
    hex('28000000', '06000200', '0010000000000000', '01000000', '00000000', '0000000001000000', '0000004000000000'),
  ],
  migrationData: [v.decodeMigrationData, hex('0500000000000000')],
  migStateData: [v.decodeMigStateData, hex('03000000', '00000000')],
  dmaLoggingControl: [
    v.decodeDmaLoggingControl,
    hex('0010000000000000', '01000000', '00000000', '0000000001000000', '0000004000000000'),
  ],
  dmaLoggingReportRequest: [
    v.decodeDmaLoggingReportRequest,
    hex('0000000001000000', '0000040000000000', '0010000000000000'),
  ],
  dmaLoggingReportReply: [
    v.decodeDmaLoggingReportReply,
    hex('0000000001000000', '0000040000000000', '0010000000000000', '0100000000000080'),
  ],
  migDataReadRequest: [v.decodeMigDataReadRequest, hex('08100000', '00100000')],
  migDataReadReply: [v.decodeMigDataReadReply, hex('0c000000', '04000000', 'cafef00d')],
  migDataWriteRequest: [v.decodeMigDataWriteRequest, hex('0c000000', '04000000', 'cafef00d')],
  migDataWriteReply: [v.decodeMigDataWriteReply, new Uint8Array(0)],
  empty: [(b) => decodeEmpty('EMPTY', b), new Uint8Array(0)],
  regionReadReplyParts: [
    (b) => v.decodeRegionReadReplyParts(b.subarray(0, 16), b.subarray(16)),
    hex('0000000000000000', '07000000', '04000000', '86801000'),
  ],
  // The migration region's header as a device or a VMM reads it (seed and 5.8 layouts).
  seedMigrationInfo: [(b) => decodeStruct(SEED_MIGRATION_INFO, b), new Uint8Array(SEED_MIGRATION_INFO.size)],
  v1MigrationInfo: [(b) => decodeStruct(V1_MIGRATION_INFO, b), new Uint8Array(V1_MIGRATION_INFO.size)],
  // A device state record header (what a resuming device reads from the VMM's data writes).
  stateRecordHeader: [
    (b) => {
      const h = decodeRecordHeader(b);
      if (typeof h === 'string') throw new VfioError(Errno.EINVAL, h);
    },
    hex('0100', '0000', '08000000', '00'.repeat(16)),
  ],
  // The whole device-state reader, fed in two pieces, with a sink that accepts every record.
  stateStreamReader: [
    (b) => {
      const r = new StateStreamReader({ onHeader() {}, onPayload() {}, onRecordEnd() {} }, 64);
      r.feed(b.subarray(0, 10));
      r.feed(b.subarray(10));
    },
    hex('0100', '0000', '04000000', '00'.repeat(16), 'aabbccdd', '0200', '0000', '00000000', '00'.repeat(16)),
  ],
};

function onlyVfioError(decode: Decoder, bytes: Uint8Array): void {
  try {
    decode(bytes);
  } catch (err) {
    tally.thrown(err, [VfioError], Buffer.from(bytes).toString('hex'));
  }
}

const mutation = (base: Uint8Array) =>
  fc
    .record(
      {
        edits: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }),
        cut: fc.integer({ min: -8, max: 16 }),
        tail: fc.uint8Array({ maxLength: 8 }),
      },
      { noNullPrototype: true },
    )
    .map(({ edits, cut, tail }) => {
      const b = new Uint8Array([
        ...base.subarray(0, Math.max(0, base.byteLength - Math.max(0, cut))),
        ...(cut < 0 ? tail : []),
      ]);
      for (const [i, x] of edits) if (b.byteLength) b[i % b.byteLength] = x;
      return b;
    });

const tally = new FuzzTally('abi-decoders');

type Encoder = (x: never) => Uint8Array;
/** The encoder of each decoder that has one (decodeX: encodeX), for the round-trip invariants. */
const ENCODERS: Record<string, Encoder> = {
  ...Object.fromEntries(
    Object.keys(DECODERS)
      .map((name) => [
        name,
        (v as unknown as Record<string, Encoder | undefined>)[`encode${name[0]!.toUpperCase()}${name.slice(1)}`],
      ])
      .filter(([, e]) => typeof e === 'function'),
  ),
  // Two forms or a different signature: the matching encoder for each.
  message: ((m: v.Message) => v.encodeMessage(m.header, m.payload)) as Encoder,
  dirtyPagesBitmapReply: ((r: v.DirtyPagesBitmapReply) =>
    r.complete ? v.encodeDirtyPagesBitmapReply(r) : v.encodeDirtyPagesShortReply(r.argsz, 8)) as Encoder,
};

/**
 * What decodes re-encodes without error, and its encoding decodes to the same value (decode→encode→decode);
 * the value decoded from a valid message encodes back to bytes that decode to it (encode→decode).
 */
function roundTrips(name: string, bytes: Uint8Array): void {
  const decode = DECODERS[name]![0];
  let x: unknown;
  try {
    x = decode(bytes);
  } catch (err) {
    if (err instanceof VfioError) return; // refused: the other property checks it is only ever VfioError
    throw err;
  }
  const again = ENCODERS[name]!(x as never);
  assert.deepEqual(
    decode(again),
    x,
    `${name}: ${Buffer.from(bytes).toString('hex')} -> ${Buffer.from(again).toString('hex')}`,
  );
}

describe('what decodes encodes back to the same value', () => {
  it('has an encoder for most decoders', () => {
    assert.ok(Object.keys(ENCODERS).length >= 30, `${Object.keys(ENCODERS).length} encoders`);
  });
  for (const name of Object.keys(ENCODERS)) {
    it(name, () => {
      roundTrips(name, DECODERS[name]![1]); // the valid seed
      fc.assert(
        fc.property(mutation(DECODERS[name]![1]), (bytes) => {
          tally.inputs++;
          roundTrips(name, bytes);
        }),
        fuzzParams(`${name} (round trip)`, 250),
      );
    });
  }
});

describe('decoders only ever throw VfioError', () => {
  for (const [name, [decode, valid]] of Object.entries(DECODERS)) {
    it(name, () => {
      decode(valid); // the seed itself is valid
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 160 }), (bytes) => {
          tally.inputs++;
          onlyVfioError(decode, bytes);
        }),
        fuzzParams(`${name} (random)`, 250),
      );
      fc.assert(
        fc.property(mutation(valid), (bytes) => {
          tally.inputs++;
          onlyVfioError(decode, bytes);
        }),
        fuzzParams(`${name} (mutated)`, 250),
      );
    });
  }
  it('figures', () => {
    assert.ok(tally.inputs > 0);
    tally.printAndCheck();
  });
});
