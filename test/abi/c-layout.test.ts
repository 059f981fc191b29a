// The TS struct tables against a C compiler: test/abi/fixtures/migration_layout.c declares the seed's packed
// 64-byte struct and Linux 5.8's 32-byte struct with fixed-width types, and prints what gcc made of them.
// Offsets, widths, sizes and constants must agree byte for byte; and bytes encoded by TS must read back
// through the C struct's own members (and the other way round), which also pins host byte order.
import assert from 'node:assert/strict';
import { type SpawnSyncReturns, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, type TestContext, test } from 'node:test';
import fc from 'fast-check';
import { decodeStruct, encodeStruct, type StructSpec } from '../../src/abi/fields.ts';
import {
  DeviceState,
  DIRTY_PFNS_ALL,
  DIRTY_PFNS_NONE,
  SEED_MIGRATION_INFO,
  SEED_REGION_SUBTYPE,
  SEED_REGION_TYPE,
  V1_MIGRATION_INFO,
  V1_REGION_SUBTYPE,
  V1_REGION_TYPE,
  v1SetError,
  v1StateIsError,
  v1StateValid,
} from '../../src/abi/migration.ts';

const SOURCE = new URL('./fixtures/migration_layout.c', import.meta.url).pathname;

interface CField {
  name: string;
  offset: number;
  width: number;
}
interface CLayout {
  seedSize: number;
  v1Size: number;
  seedFields: CField[];
  v1Fields: CField[];
  constants: Record<string, number | string>;
}

/** Set by `before`: the compiled fixture, or why there is none. */
let binary: string | null = null;
let skipReason: string | null = null;
let compileError: string | null = null;
let workDir: string | null = null;

before(() => {
  const probe = spawnSync('gcc', ['--version'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) {
    skipReason = `gcc not found: ${probe.error?.message ?? `gcc --version exited ${probe.status}`}`;
    return;
  }
  workDir = mkdtempSync(join(tmpdir(), 'vfio-migrate-c-layout-'));
  const out = join(workDir, 'migration_layout');
  const cc = spawnSync('gcc', ['-std=gnu11', '-Wall', '-Wextra', '-Werror', '-O1', '-o', out, SOURCE], {
    encoding: 'utf8',
  });
  if (cc.status !== 0) compileError = `gcc failed (${cc.status}): ${cc.stderr}`;
  else binary = out;
});

after(() => {
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

/** The fixture's path, or undefined after marking the test skipped (no gcc). A compile error fails. */
function fixture(t: TestContext): string | undefined {
  if (skipReason) {
    t.skip(skipReason);
    return undefined;
  }
  if (compileError) assert.fail(compileError);
  return binary!;
}

function run(bin: string, args: string[], input: string | Uint8Array): SpawnSyncReturns<Buffer> {
  const r = spawnSync(bin, args, { input, maxBuffer: 64 * 1024 * 1024 });
  assert.equal(r.status, 0, `${args.join(' ')} exited ${r.status}: ${r.stderr?.toString()}`);
  return r;
}

function cLayout(bin: string): CLayout {
  return JSON.parse(run(bin, ['layout'], '').stdout.toString('utf8')) as CLayout;
}

/** Which field owns each byte of the struct ('' = padding / nobody). */
function byteOwners(size: number, fields: readonly CField[]): string[] {
  const owners = new Array<string>(size).fill('');
  for (const f of fields) {
    for (let i = f.offset; i < f.offset + f.width; i++) {
      assert.ok(i < size, `${f.name} runs past the ${size}-byte struct`);
      assert.equal(owners[i], '', `byte ${i} belongs to both ${owners[i]} and ${f.name}`);
      owners[i] = f.name;
    }
  }
  return owners;
}

const TABLES = [
  {
    flavor: 'seed',
    spec: SEED_MIGRATION_INFO as StructSpec,
    cSize: (l: CLayout) => l.seedSize,
    cFields: (l: CLayout) => l.seedFields,
  },
  {
    flavor: 'v1',
    spec: V1_MIGRATION_INFO as StructSpec,
    cSize: (l: CLayout) => l.v1Size,
    cFields: (l: CLayout) => l.v1Fields,
  },
] as const;

/** Arbitrary values for every field of `spec`: u32 or u64 as the width says (fast-check biases to the edges). */
function structValues(spec: StructSpec): fc.Arbitrary<Record<string, bigint>> {
  const record: Record<string, fc.Arbitrary<bigint>> = {};
  for (const f of spec.fields) record[f.name] = fc.bigInt({ min: 0n, max: (1n << BigInt(f.width * 8)) - 1n });
  return fc.record(record).map((r) => ({ ...r })); // plain objects (fast-check makes null-prototype ones)
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

describe('C layout: the struct tables agree with gcc', () => {
  for (const { flavor, spec, cSize, cFields } of TABLES) {
    test(`${flavor}: sizeof(struct) equals the table size (${spec.size})`, (t) => {
      const bin = fixture(t);
      if (!bin) return;
      assert.equal(cSize(cLayout(bin)), spec.size);
    });

    test(`${flavor}: every field has the C offset and width, in declaration order`, (t) => {
      const bin = fixture(t);
      if (!bin) return;
      const c = cFields(cLayout(bin));
      assert.deepEqual(
        spec.fields.map((f) => ({ name: f.name, offset: f.offset, width: f.width })),
        c,
      );
    });

    test(`${flavor}: byte for byte, each byte belongs to the same field and none is padding`, (t) => {
      const bin = fixture(t);
      if (!bin) return;
      const layout = cLayout(bin);
      const c = byteOwners(cSize(layout), cFields(layout));
      const ts = byteOwners(spec.size, spec.fields);
      assert.deepEqual(ts, c);
      assert.equal(c.indexOf(''), -1, `byte ${c.indexOf('')} is padding in C`);
    });
  }

  test('constants: state bits, MASK, region type/subtype, copied_pfns all-ones (~0ULL) and none', (t) => {
    const bin = fixture(t);
    if (!bin) return;
    const k = cLayout(bin).constants;
    assert.deepEqual(
      {
        STOPPED: DeviceState.STOPPED,
        RUNNING: DeviceState.RUNNING,
        SAVING: DeviceState.SAVING,
        RESUMING: DeviceState.RESUMING,
        MASK: DeviceState.MASK,
        INVALID: DeviceState.INVALID,
        SEED_REGION_TYPE,
        SEED_REGION_SUBTYPE,
        V1_REGION_TYPE,
        V1_REGION_SUBTYPE,
      },
      {
        STOPPED: k.STOPPED,
        RUNNING: k.RUNNING,
        SAVING: k.SAVING,
        RESUMING: k.RESUMING,
        MASK: k.MASK,
        INVALID: k.INVALID,
        SEED_REGION_TYPE: k.SEED_REGION_TYPE,
        SEED_REGION_SUBTYPE: k.SEED_REGION_SUBTYPE,
        V1_REGION_TYPE: k.V1_REGION_TYPE,
        V1_REGION_SUBTYPE: k.V1_REGION_SUBTYPE,
      },
    );
    assert.equal(DIRTY_PFNS_ALL, BigInt(k.DIRTY_PFNS_ALL as string));
    assert.equal(DIRTY_PFNS_NONE, BigInt(k.DIRTY_PFNS_NONE as string));
    assert.equal(DeviceState.ERROR, DeviceState.INVALID, '5.8 reuses the seed INVALID value as the error state');
  });
});

describe('C layout: values cross the TS/C boundary as raw host-order bytes', () => {
  for (const { flavor, spec } of TABLES) {
    test(`${flavor}: structs encoded by TS read back field by field through the C struct members`, (t) => {
      const bin = fixture(t);
      if (!bin) return;
      fc.assert(
        fc.property(fc.array(structValues(spec), { minLength: 1, maxLength: 40 }), (values) => {
          const bytes = concat(values.map((v) => encodeStruct(spec, v)));
          const out = JSON.parse(run(bin, ['decode', flavor], bytes).stdout.toString('utf8')) as Record<
            string,
            string
          >[];
          assert.deepEqual(
            out.map((o) => Object.fromEntries(Object.entries(o).map(([k, v]) => [k, BigInt(v)]))),
            values,
          );
        }),
        { numRuns: 25 },
      );
    });

    test(`${flavor}: structs filled through the C members are the bytes TS encodes, and decode to the values`, (t) => {
      const bin = fixture(t);
      if (!bin) return;
      fc.assert(
        fc.property(fc.array(structValues(spec), { minLength: 1, maxLength: 40 }), (values) => {
          const input = values.map((v) => spec.fields.map((f) => v[f.name]!.toString()).join(' ')).join('\n');
          const bytes = new Uint8Array(run(bin, ['encode', flavor], `${input}\n`).stdout);
          assert.equal(bytes.byteLength, values.length * spec.size);
          assert.deepEqual(bytes, concat(values.map((v) => encodeStruct(spec, v))));
          const decoded = values.map((_, i) => decodeStruct(spec, bytes.subarray(i * spec.size, (i + 1) * spec.size)));
          assert.deepEqual(decoded, values);
        }),
        { numRuns: 25 },
      );
    });
  }

  test("v1 VALID / IS_ERROR / SET_ERROR agree with 5.8's macros for every low state and arbitrary upper bits", (t) => {
    const bin = fixture(t);
    if (!bin) return;
    const states = [
      ...Array.from({ length: 16 }, (_, i) => i),
      ...fc.sample(fc.integer({ min: 0, max: 0xffff_ffff }), { numRuns: 200, seed: 7 }),
      0xffff_ffff,
      0xffff_fff8,
      0x8000_0006,
    ];
    const out = JSON.parse(run(bin, ['macros'], states.join(' ')).stdout.toString('utf8')) as {
      state: number;
      valid: number;
      isError: number;
      setError: number;
    }[];
    assert.equal(out.length, states.length);
    assert.deepEqual(
      states.map((s) => ({ state: s, valid: v1StateValid(s), isError: v1StateIsError(s), setError: v1SetError(s) })),
      out.map((o) => ({ state: o.state, valid: o.valid === 1, isError: o.isError === 1, setError: o.setError })),
    );
  });
});
