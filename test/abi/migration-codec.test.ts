// The table-driven struct codec (src/abi/fields.ts) over both migration_info layouts, the device_state
// constants, and 5.8's VALID / IS_ERROR / SET_ERROR as Linux 5.8's include/uapi/linux/vfio.h defines them.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { Errno } from '../../src/abi/errno.ts';
import {
  decodeStruct,
  encodeStruct,
  type FieldSpec,
  fieldAt,
  fieldNamed,
  readField,
  type StructSpec,
  writeField,
} from '../../src/abi/fields.ts';
import {
  DeviceState,
  DIRTY_PFNS_ALL,
  DIRTY_PFNS_NONE,
  deviceStateName,
  SEED_MIGRATION_INFO,
  SEED_REGION_SUBTYPE,
  SEED_REGION_TYPE,
  V1_MIGRATION_INFO,
  V1_REGION_SUBTYPE,
  V1_REGION_TYPE,
  VALID_DEVICE_STATES,
  v1SetError,
  v1StateIsError,
  v1StateValid,
} from '../../src/abi/migration.ts';
import { VfioError } from '../../src/errors.ts';

const TABLES: { flavor: string; spec: StructSpec }[] = [
  { flavor: 'seed', spec: SEED_MIGRATION_INFO },
  { flavor: 'v1', spec: V1_MIGRATION_INFO },
];

const u32 = fc.integer({ min: 0, max: 0xffff_ffff });

function fieldValue(f: FieldSpec): fc.Arbitrary<bigint> {
  return fc.bigInt({ min: 0n, max: (1n << BigInt(8 * f.width)) - 1n });
}

function structValues(spec: StructSpec): fc.Arbitrary<Record<string, bigint>> {
  const rec: Record<string, fc.Arbitrary<bigint>> = {};
  for (const f of spec.fields) rec[f.name] = fieldValue(f);
  return fc.record(rec).map((r) => ({ ...r }));
}

describe('struct codec: both migration_info tables', () => {
  for (const { flavor, spec } of TABLES) {
    test(`${flavor}: decode(encode(v)) == v for arbitrary u32/u64 field values`, () => {
      fc.assert(
        fc.property(structValues(spec), (v) => {
          const bytes = encodeStruct(spec, v);
          assert.equal(bytes.byteLength, spec.size);
          assert.deepEqual({ ...decodeStruct(spec, bytes) }, v);
        }),
      );
    });

    test(`${flavor}: encode(decode(bytes)) == bytes: the table covers every byte, little-endian`, () => {
      fc.assert(
        fc.property(fc.uint8Array({ minLength: spec.size, maxLength: spec.size }), (bytes) => {
          assert.deepEqual(encodeStruct(spec, decodeStruct(spec, bytes)), bytes);
        }),
      );
      // Little-endian explicitly: value 0x0102...08 in the first u64 field puts 0x08 at its lowest byte.
      const f = spec.fields.find((x) => x.width === 8)!;
      const b = encodeStruct(spec, { [f.name]: 0x0102030405060708n });
      assert.deepEqual([...b.subarray(f.offset, f.offset + 8)], [8, 7, 6, 5, 4, 3, 2, 1]);
    });

    test(`${flavor}: decode reads at the view's own byteOffset and ignores trailing bytes`, () => {
      fc.assert(
        fc.property(structValues(spec), fc.nat(64), fc.nat(64), (v, pre, post) => {
          const big = new Uint8Array(pre + spec.size + post).fill(0xa5);
          big.set(encodeStruct(spec, v), pre);
          assert.deepEqual({ ...decodeStruct(spec, big.subarray(pre)) }, v);
        }),
      );
    });

    test(`${flavor}: decode of fewer than ${spec.size} bytes throws VfioError (EINVAL)`, () => {
      const einval = (e: unknown) => e instanceof VfioError && e.errno === Errno.EINVAL;
      assert.throws(() => decodeStruct(spec, new Uint8Array(spec.size - 1)), einval);
      assert.throws(() => decodeStruct(spec, new Uint8Array(0)), einval);
    });

    test(`${flavor}: missing fields encode as 0, and a field's value never spills into its neighbours`, () => {
      fc.assert(
        fc.property(fc.constantFrom(...spec.fields), fc.bigInt({ min: -(1n << 80n), max: 1n << 80n }), (f, value) => {
          const bytes = encodeStruct(spec, { [f.name]: value });
          bytes.forEach((b, i) => {
            if (i < f.offset || i >= f.offset + f.width) assert.equal(b, 0, `byte ${i} outside ${f.name}`);
          });
          assert.equal(readField(bytes, f.offset, f.width), BigInt.asUintN(8 * f.width, value));
        }),
      );
    });

    test(`${flavor}: fieldAt returns a field only for its exact (offset, width)`, () => {
      for (let offset = -1; offset <= spec.size + 8; offset++) {
        for (let width = 0; width <= 16; width++) {
          const exact = spec.fields.find((f) => f.offset === offset && f.width === width);
          const got = fieldAt(spec, offset, width);
          assert.equal(got, exact, `fieldAt(${offset}, ${width})`);
          if (got) assert.deepEqual([got.offset, got.width], [offset, width]);
        }
      }
      for (const f of spec.fields) assert.equal(fieldAt(spec, f.offset, f.width)?.name, f.name);
    });

    test(`${flavor}: fieldNamed finds each field and throws for an unknown name`, () => {
      for (const f of spec.fields) assert.equal(fieldNamed(spec, f.name), f);
      assert.throws(() => fieldNamed(spec, 'no_such_field'), /no field no_such_field/);
    });
  }

  test('the seed table is the v1 table plus start_pfn, page_size, total_pfns, copied_pfns', () => {
    assert.deepEqual(SEED_MIGRATION_INFO.fields.slice(0, 5), V1_MIGRATION_INFO.fields);
    assert.deepEqual(
      SEED_MIGRATION_INFO.fields.slice(5).map((f) => [f.name, f.offset, f.width]),
      [
        ['start_pfn', 32, 8],
        ['page_size', 40, 8],
        ['total_pfns', 48, 8],
        ['copied_pfns', 56, 8],
      ],
    );
    assert.equal(SEED_MIGRATION_INFO.size, 64);
    assert.equal(V1_MIGRATION_INFO.size, 32);
  });

  test('readField/writeField respect the view byteOffset and the field width', () => {
    fc.assert(
      fc.property(fc.nat(16), fc.constantFrom(4 as const, 8 as const), fc.bigInt(), (at, width, value) => {
        const backing = new Uint8Array(40).fill(0xee);
        const view = backing.subarray(at, at + width + 8);
        writeField(view, 0, width, value);
        assert.equal(readField(view, 0, width), BigInt.asUintN(8 * width, value));
        assert.ok(
          backing.subarray(0, at).every((b) => b === 0xee),
          'nothing written before the view',
        );
        assert.ok(
          backing.subarray(at + width).every((b) => b === 0xee),
          'nothing written past the field',
        );
      }),
    );
  });
});

describe('migration constants', () => {
  test('device_state bits: STOPPED 0, RUNNING 1, SAVING 2, RESUMING 4, MASK 7; INVALID = ERROR = 6', () => {
    assert.equal(DeviceState.STOPPED, 0);
    assert.equal(DeviceState.RUNNING, 1);
    assert.equal(DeviceState.SAVING, 2);
    assert.equal(DeviceState.RESUMING, 4);
    assert.equal(DeviceState.MASK, 7);
    assert.equal(DeviceState.INVALID, 6);
    assert.equal(DeviceState.ERROR, 6);
  });

  test('region type/subtype: seed 2/1, Linux 5.8 3/1', () => {
    assert.deepEqual([SEED_REGION_TYPE, SEED_REGION_SUBTYPE], [2, 1]);
    assert.deepEqual([V1_REGION_TYPE, V1_REGION_SUBTYPE], [3, 1]);
  });

  test('copied_pfns: all-ones is the unsigned 64-bit ~0, none is 0', () => {
    assert.equal(DIRTY_PFNS_ALL, (1n << 64n) - 1n);
    assert.equal(DIRTY_PFNS_NONE, 0n);
    // It survives the u64 field unchanged, and is never confused with a negative count.
    const b = encodeStruct(SEED_MIGRATION_INFO, { copied_pfns: DIRTY_PFNS_ALL });
    assert.ok(b.subarray(56, 64).every((x) => x === 0xff));
    assert.equal(decodeStruct(SEED_MIGRATION_INFO, b).copied_pfns, DIRTY_PFNS_ALL);
  });

  test('the valid requests are exactly 0..4, and names describe every low-bit value', () => {
    assert.deepEqual([...VALID_DEVICE_STATES], [0, 1, 2, 3, 4]);
    assert.deepEqual(
      [0, 1, 2, 3, 4, 5, 6, 7].map((s) => deviceStateName(s)),
      [
        'stopped',
        'running',
        'stop-and-copy',
        'pre-copy',
        'resuming',
        'invalid(resuming|running)',
        'invalid(saving|resuming)',
        'invalid(all)',
      ],
    );
    assert.equal(deviceStateName(8 | 3), 'pre-copy', 'names look at the low three bits only');
  });
});

describe('v1 (Linux 5.8) state helpers', () => {
  test('VALID: 0..4 are valid requests; 5, 6 and 7 are not', () => {
    assert.deepEqual(
      [0, 1, 2, 3, 4, 5, 6, 7].map((s) => v1StateValid(s)),
      [true, true, true, true, true, false, false, false],
    );
    assert.deepEqual(
      [0, 1, 2, 3, 4, 5, 6, 7].filter((s) => v1StateValid(s)),
      [...VALID_DEVICE_STATES],
    );
  });

  test('VALID looks only at the low three bits (bits 3-31 are reserved, any value)', () => {
    fc.assert(
      fc.property(u32, (s) => {
        assert.equal(v1StateValid(s), v1StateValid(s & 7));
        // the macro as the header writes it
        assert.equal(v1StateValid(s), (s & 4) !== 0 ? (s & 7) === 4 : true);
      }),
    );
  });

  test('IS_ERROR: exactly when the low three bits are SAVING|RESUMING (6)', () => {
    fc.assert(
      fc.property(u32, (s) => {
        assert.equal(v1StateIsError(s), (s & 7) === 6);
      }),
    );
    assert.deepEqual(
      [0, 1, 2, 3, 4, 5, 6, 7].map((s) => v1StateIsError(s)),
      [false, false, false, false, false, false, true, false],
    );
  });

  test('SET_ERROR: low bits become 6, bits 3-31 are kept, the result is an unsigned u32', () => {
    fc.assert(
      fc.property(u32, (s) => {
        const e = v1SetError(s);
        assert.ok(Number.isInteger(e) && e >= 0 && e <= 0xffff_ffff, `${e} is a u32`);
        assert.equal(e & 7, 6);
        assert.equal((e & ~7) >>> 0, (s & ~7) >>> 0);
        assert.equal(v1StateIsError(e), true);
        assert.equal(v1StateValid(e), false, 'the error state is never a valid request');
        assert.equal(v1SetError(e), e, 'idempotent');
      }),
    );
    assert.equal(v1SetError(0xffff_ffff), 0xffff_fffe);
    assert.equal(v1SetError(0x8000_0001), 0x8000_0006);
    assert.equal(v1SetError(0), 6);
  });
});
