// Our byte codecs against C compilers and the real headers.
//
// - <linux/vfio.h> (Debian's linux-libc-dev): the v1 migration region, every kernel struct vfio-user carries or
//   shapes after, and the constants and ioctl numbers we encode (fixtures/kernel-checks.ts).
// - libvfio-user's include/vfio-user.h (github.com/nutanix/libvfio-user), taken from source archives of two
//   commits (v1 era 1569a37a, v2 era efd091bc): every vfio-user message we encode, in the era whose header
//   has it (fixtures/vfio-user-checks.ts).
// The C is generated from the TS side (fixtures/c-check.ts): static asserts on sizes, offsets and constants,
// and samples our encoders wrote, read back at each C member. Only the seed's 2019 draft, which no header
// holds, is still hand-written C (fixtures/seed_layout.c). A missing compiler, header, archive or tar makes
// the tests that need it skip and say which.
import assert from 'node:assert/strict';
import { type SpawnSyncReturns, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
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
  v1SetError,
  v1StateIsError,
  v1StateValid,
} from '../../src/abi/migration.ts';
import {
  build,
  type ConstCheck,
  generate,
  linuxVersion,
  measure,
  parseReport,
  type StructCheck,
  UNITS,
  type Unit,
  type UnitReport,
} from './fixtures/c-check.ts';
import { kernelConsts, kernelStructs, V1 } from './fixtures/kernel-checks.ts';
import { vfioUserConsts, vfioUserStructs } from './fixtures/vfio-user-checks.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
/** The test peers' source archives sit in a shared directory beside the checkout (in CI as in a worktree). */
const PEERS = join(ROOT, '..', 'shared', 'peers');
const ARCHIVES: Record<Exclude<Unit, 'kernel'>, string> = {
  'lvu-v1': 'libvfio-user-1569a37a.tar.gz',
  'lvu-v2': 'libvfio-user-efd091bc.tar.gz',
};
const SEED_SOURCE = new URL('./fixtures/seed_layout.c', import.meta.url).pathname;

const STRUCTS: readonly StructCheck[] = [...kernelStructs, ...vfioUserStructs];
const CONSTS: readonly ConstCheck[] = [...kernelConsts, ...vfioUserConsts];

/** One compiled program: why there is none (skip), or gcc's complaint (fail), or its binary and report. */
interface Program {
  skip?: string;
  compileError?: string;
  binary?: string;
  report?: UnitReport;
}

const programs = new Map<Unit | 'seed', Program>();
let workDir: string | null = null;

function spawnText(cmd: string, args: string[], input = ''): SpawnSyncReturns<string> {
  return spawnSync(cmd, args, { input, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
}

function firstLine(s: string): string {
  return s.trim().split('\n')[0] ?? '';
}

/** Why the kernel header cannot be used, or null: asks gcc itself, so its include path is the one that counts. */
function kernelHeaderMissing(): string | null {
  const cpp = spawnText('gcc', ['-E', '-x', 'c', '-o', '/dev/null', '-'], '#include <linux/vfio.h>\n');
  if (cpp.status === 0) return null;
  return `<linux/vfio.h> not found by gcc (Debian package linux-libc-dev; .ci/run installs it): ${firstLine(cpp.stderr)}`;
}

/** Extracts include/vfio-user.h of one era into `dir`; returns its directory, or why it could not. */
function extractHeader(unit: Exclude<Unit, 'kernel'>, dir: string): { includeDir?: string; skip?: string } {
  const archive = join(PEERS, ARCHIVES[unit]);
  if (!existsSync(archive)) return { skip: `${archive} is absent (libvfio-user source archive, ${unit} era)` };
  const probe = spawnText('tar', ['--version']);
  if (probe.error || probe.status !== 0)
    return { skip: `tar not found (Debian package tar; .ci/run installs it): ${probe.error?.message ?? probe.stderr}` };
  mkdirSync(dir, { recursive: true });
  const x = spawnText('tar', ['-xzf', archive, '-C', dir, '--wildcards', '*/include/vfio-user.h']);
  if (x.status !== 0)
    return { skip: `tar could not extract include/vfio-user.h from ${archive}: ${firstLine(x.stderr)}` };
  const top = ARCHIVES[unit].replace(/\.tar\.gz$/, '');
  const includeDir = join(dir, top, 'include');
  if (!existsSync(join(includeDir, 'vfio-user.h'))) return { skip: `${archive} has no ${top}/include/vfio-user.h` };
  return { includeDir };
}

function runProgram(p: Program): void {
  if (!p.binary) return;
  const r = spawnText(p.binary, []);
  if (r.status !== 0) p.compileError = `${p.binary} exited ${r.status}: ${r.stderr}`;
  else p.report = parseReport(r.stdout);
}

before(() => {
  const gcc = spawnText('gcc', ['--version']);
  if (gcc.error || gcc.status !== 0) {
    const skip = `gcc not found (Debian package gcc; .ci/run installs it): ${gcc.error?.message ?? gcc.stderr}`;
    for (const u of [...UNITS, 'seed' as const]) programs.set(u, { skip });
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'vfio-migrate-c-layout-'));
  workDir = dir;

  const seed = spawnText('gcc', [
    '-std=gnu11',
    '-Wall',
    '-Wextra',
    '-Werror',
    '-O1',
    '-o',
    join(dir, 'seed'),
    SEED_SOURCE,
  ]);
  programs.set('seed', seed.status === 0 ? { binary: join(dir, 'seed') } : { compileError: seed.stderr });

  const noKernel = kernelHeaderMissing();
  for (const unit of UNITS) {
    // libvfio-user's header includes <linux/vfio.h> too.
    if (noKernel) {
      programs.set(unit, { skip: noKernel });
      continue;
    }
    let includeDir: string | undefined;
    if (unit !== 'kernel') {
      const got = extractHeader(unit, join(dir, unit));
      if (got.skip) {
        programs.set(unit, { skip: got.skip });
        continue;
      }
      includeDir = got.includeDir;
    }
    const p: Program = build(dir, unit, generate(unit, STRUCTS, CONSTS), includeDir);
    runProgram(p);
    programs.set(unit, p);
  }
});

after(() => {
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

/** The unit's report, or undefined after skipping (no gcc/header/archive). A compile error fails, naming `tag`'s lines. */
function program(t: TestContext, unit: Unit | 'seed', tag?: string): Program | undefined {
  const p = programs.get(unit)!;
  if (p.skip) {
    t.skip(p.skip);
    return undefined;
  }
  if (p.compileError) {
    const mine = tag ? p.compileError.split('\n').filter((l) => l.includes(tag)) : [];
    assert.fail(mine.length > 0 ? mine.join('\n') : p.compileError);
  }
  return p;
}

const HEADER_NAMES: Record<Unit, string> = {
  kernel: '<linux/vfio.h>',
  'lvu-v1': 'libvfio-user 1569a37a include/vfio-user.h',
  'lvu-v2': 'libvfio-user efd091bc include/vfio-user.h',
};

function missingMacro(unit: Unit, report: UnitReport, macro: string): string {
  return `the ${HEADER_NAMES[unit]} here (Linux ${linuxVersion(report.linuxVersionCode)} uAPI) does not define ${macro}`;
}

function structTest(unit: Unit, check: StructCheck): void {
  const sized =
    check.size !== undefined ? ` (${check.size} bytes)` : check.why ? ` (differs on purpose: ${check.why})` : '';
  test(`${check.type} [${check.id}]${sized}: sizes, offsets and values read back match`, (t) => {
    // Measured first: a codec that does not move a byte when a field changes fails here, with or without gcc.
    const { samples, offsets } = measure(check);
    const p = program(t, unit, `[${check.id}]`);
    if (!p) return;
    const report = p.report!;
    if (check.ifdef && !report.defined.has(check.ifdef)) {
      assert.ok(report.absent.has(check.id));
      t.skip(missingMacro(unit, report, check.ifdef));
      return;
    }
    // Every field but the ones the codec derives has an offset measured from TS and asserted in C.
    assert.deepEqual(Object.keys(offsets).sort(), Object.keys(check.alt).sort());
    const reads = report.reads.get(check.id);
    assert.ok(reads, `the program printed nothing for ${check.id}`);
    assert.equal(reads.size, samples.length);
    samples.forEach((sample, i) => {
      const got = reads.get(i) ?? {};
      if (i === 0)
        assert.deepEqual(Object.keys(got).sort(), Object.keys(check.base).sort(), 'base sample: every field read');
      const want = Object.fromEntries(Object.keys(got).map((f) => [f, BigInt.asUintN(64, BigInt(sample.values[f]!))]));
      assert.deepEqual(got, want, `sample ${i}: C read back other values than TS encoded`);
    });
  });
}

function constTests(unit: Unit): void {
  const mine = CONSTS.filter((c) => c.units.includes(unit));
  test(`constants (${mine.filter((c) => !c.ifdef).length}): every value equals the TS export (static asserts)`, (t) => {
    const p = program(t, unit, '[const ');
    if (!p) return;
    assert.ok(p.report!.linuxVersionCode > 0, 'the program ran');
  });
  for (const macro of new Set(mine.map((c) => c.ifdef).filter((d) => d !== undefined))) {
    const names = mine.filter((c) => c.ifdef === macro).map((c) => c.name);
    test(`constants only some header versions define (${macro}): ${names.join(', ')}`, (t) => {
      const p = program(t, unit, '[const ');
      if (!p) return;
      if (!p.report!.defined.has(macro)) {
        t.skip(missingMacro(unit, p.report!, macro));
        return;
      }
      // Compiled, so each of these static asserts held.
      assert.ok(names.length > 0);
    });
  }
}

for (const unit of UNITS) {
  describe(`C layout: ${HEADER_NAMES[unit]}`, () => {
    for (const check of STRUCTS.filter((s) => s.units.includes(unit))) structTest(unit, check);
    constTests(unit);
  });
}

describe('C layout: the v1 state macros of <linux/vfio.h>', () => {
  test('VALID / IS_ERROR / SET_ERROR agree with v1StateValid/IsError/SetError for every low state and upper bits', (t) => {
    const p = program(t, 'kernel');
    if (!p) return;
    if (!p.report!.defined.has(V1)) {
      t.skip(missingMacro('kernel', p.report!, V1));
      return;
    }
    const states = [
      ...Array.from({ length: 16 }, (_, i) => i),
      ...fc.sample(fc.integer({ min: 0, max: 0xffff_ffff }), { numRuns: 200, seed: 7 }),
      0xffff_ffff,
      0xffff_fff8,
      0x8000_0006,
    ];
    const r = spawnText(p.binary!, ['macros'], states.join(' '));
    assert.equal(r.status, 0, r.stderr);
    const rows = r.stdout
      .trim()
      .split('\n')
      .map((l) => l.split(' ').map(Number));
    assert.equal(rows.length, states.length);
    assert.deepEqual(
      states.map((s) => [s, v1StateValid(s) ? 1 : 0, v1StateIsError(s) ? 1 : 0, v1SetError(s)]),
      rows,
    );
  });
});

// ---- The seed's 2019 draft: the one struct no header holds, hand-written in fixtures/seed_layout.c. ----

interface CField {
  name: string;
  offset: number;
  width: number;
}
interface SeedLayout {
  size: number;
  fields: CField[];
  constants: Record<string, number | string>;
}

function seedRun(t: TestContext, args: string[], input: string | Uint8Array = ''): Buffer | undefined {
  const p = program(t, 'seed');
  if (!p) return undefined;
  const r = spawnSync(p.binary!, args, { input, maxBuffer: 64 * 1024 * 1024 });
  assert.equal(r.status, 0, `${args.join(' ')} exited ${r.status}: ${r.stderr?.toString()}`);
  return r.stdout;
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

describe('C layout: the seed draft (hand-written C, no header holds it)', () => {
  const spec = SEED_MIGRATION_INFO as StructSpec;
  const layout = (t: TestContext) => {
    const out = seedRun(t, ['layout']);
    return out && (JSON.parse(out.toString('utf8')) as SeedLayout);
  };

  test(`sizeof(struct) equals the table size (${spec.size}); every field has the C offset and width, in order`, (t) => {
    const c = layout(t);
    if (!c) return;
    assert.equal(c.size, spec.size);
    assert.deepEqual(
      spec.fields.map((f) => ({ name: f.name, offset: f.offset, width: f.width })),
      c.fields,
    );
    const owners = byteOwners(c.size, c.fields);
    assert.deepEqual(byteOwners(spec.size, spec.fields), owners);
    assert.equal(owners.indexOf(''), -1, `byte ${owners.indexOf('')} is padding in C`);
  });

  test('constants: state bits, MASK, INVALID, region type/subtype, copied_pfns all-ones (~0ULL) and none', (t) => {
    const c = layout(t);
    if (!c) return;
    const k = c.constants;
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
      },
    );
    assert.equal(DIRTY_PFNS_ALL, BigInt(k.DIRTY_PFNS_ALL as string));
    assert.equal(DIRTY_PFNS_NONE, BigInt(k.DIRTY_PFNS_NONE as string));
    assert.equal(DeviceState.ERROR, DeviceState.INVALID, '5.8 reuses the seed INVALID value as the error state');
  });

  test('structs encoded by TS read back field by field through the C struct members', (t) => {
    if (!program(t, 'seed')) return;
    fc.assert(
      fc.property(fc.array(structValues(spec), { minLength: 1, maxLength: 40 }), (values) => {
        const bytes = concat(values.map((v) => encodeStruct(spec, v)));
        const out = JSON.parse(seedRun(t, ['decode'], bytes)!.toString('utf8')) as Record<string, string>[];
        assert.deepEqual(
          out.map((o) => Object.fromEntries(Object.entries(o).map(([k, v]) => [k, BigInt(v)]))),
          values,
        );
      }),
      { numRuns: 25 },
    );
  });

  test('structs filled through the C members are the bytes TS encodes, and decode to the values', (t) => {
    if (!program(t, 'seed')) return;
    fc.assert(
      fc.property(fc.array(structValues(spec), { minLength: 1, maxLength: 40 }), (values) => {
        const input = values.map((v) => spec.fields.map((f) => v[f.name]!.toString()).join(' ')).join('\n');
        const bytes = new Uint8Array(seedRun(t, ['encode'], `${input}\n`)!);
        assert.equal(bytes.byteLength, values.length * spec.size);
        assert.deepEqual(bytes, concat(values.map((v) => encodeStruct(spec, v))));
        const decoded = values.map((_, i) => decodeStruct(spec, bytes.subarray(i * spec.size, (i + 1) * spec.size)));
        assert.deepEqual(decoded, values);
      }),
      { numRuns: 25 },
    );
  });
});
