// Random access sequences against the seed region: whatever a VMM (or a fuzzer) does, every failure is a
// VfioError with an errno, and the region is only ever in a state its transition table allows, reached by a
// transition the table allows.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { writeField } from '../../src/abi/fields.ts';
import { SEED_MIGRATION_INFO } from '../../src/abi/migration.ts';
import { LargeMemoryDevice } from '../../src/device/samples/large-memory.ts';
import { SeedMigrationRegion } from '../../src/device/seed-region.ts';
import { SEED_STATES, seedTransitionAllowed } from '../../src/device/seed-state-table.ts';
import { VfioError } from '../../src/errors.ts';
import { ToyBackend } from '../support/toy-backend.ts';

type Op =
  | { t: 'read'; offset: number; width: number }
  | { t: 'write'; offset: number; width: number; value: bigint }
  | { t: 'state'; value: number }
  | { t: 'dma'; page: number }
  | { t: 'work'; units: number };

const fieldOffsets = SEED_MIGRATION_INFO.fields.map((f) => f.offset);

function opArb(regionSize: number): fc.Arbitrary<Op> {
  const offset = fc.oneof(
    fc.constantFrom(...fieldOffsets),
    fc.integer({ min: 0, max: regionSize + 16 }),
    fc.integer({ min: -4, max: 70 }),
  );
  const width = fc.oneof(fc.constantFrom(4, 8), fc.integer({ min: 0, max: 32 }));
  return fc.oneof(
    { weight: 4, arbitrary: fc.record({ t: fc.constant('read' as const), offset, width }) },
    {
      weight: 3,
      arbitrary: fc.record({
        t: fc.constant('write' as const),
        offset,
        width,
        value: fc.oneof(fc.bigInt({ min: 0n, max: 70n }), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })),
      }),
    },
    {
      weight: 4,
      arbitrary: fc.record({
        t: fc.constant('state' as const),
        value: fc.oneof(fc.integer({ min: 0, max: 7 }), fc.integer()),
      }),
    },
    { weight: 1, arbitrary: fc.record({ t: fc.constant('dma' as const), page: fc.integer({ min: 0, max: 300 }) }) },
    { weight: 1, arbitrary: fc.record({ t: fc.constant('work' as const), units: fc.integer({ min: 0, max: 50 }) }) },
  );
}

function apply(region: SeedMigrationRegion, op: Op, dma: (page: number) => void, work: (n: number) => void): void {
  switch (op.t) {
    case 'read':
      region.read(op.offset, op.width);
      return;
    case 'write': {
      const b = new Uint8Array(Math.max(0, op.width));
      if (op.width === 4 || op.width === 8) writeField(b, 0, op.width, op.value);
      region.write(op.offset, b);
      return;
    }
    case 'state': {
      const b = new Uint8Array(4);
      writeField(b, 0, 4, BigInt(op.value));
      region.write(0, b);
      return;
    }
    case 'dma':
      dma(op.page);
      return;
    case 'work':
      work(op.units);
  }
}

function check(region: SeedMigrationRegion, op: Op, dma: (p: number) => void, work: (n: number) => void): void {
  const before = region.state;
  try {
    apply(region, op, dma, work);
  } catch (e) {
    assert.ok(e instanceof VfioError, `non-VfioError escaped: ${e}`);
    assert.ok(e.errno > 0);
    assert.equal(region.state, before, 'a failed access leaves the state as it was');
  }
  assert.ok(SEED_STATES.includes(region.state), `state ${region.state} outside the table`);
  if (region.state !== before) assert.ok(seedTransitionAllowed(before, region.state), `${before} -> ${region.state}`);
}

test('random access sequences on a toy device: only VfioErrors, only table states', () => {
  fc.assert(
    fc.property(
      fc.constantFrom('trapped' as const, 'mmapped' as const),
      fc.array(opArb(12288 + 8192), { maxLength: 80 }),
      (kind, ops) => {
        const backend = new ToyBackend(3000);
        const region = new SeedMigrationRegion({
          backend,
          kind,
          dataSize: 8192,
          bitmapSize: kind === 'mmapped' ? 4096 : 16,
        });
        for (const op of ops) {
          check(
            region,
            op,
            (p) => backend.dma(p * 4096, 8),
            () => {},
          );
        }
      },
    ),
    { numRuns: 400 },
  );
});

test('random access sequences on the large-memory sample device', () => {
  fc.assert(
    fc.property(fc.array(opArb(64 + 8 + 65536), { maxLength: 60 }), (ops) => {
      const dev = new LargeMemoryDevice({ memSize: 1 << 18, blockSize: 1 << 14, workRate: 0 });
      const guest = new Uint8Array(300 * 4096);
      dev.attachDma({
        write: (a, d) => guest.set(d, Number(a)),
        read: (a, n) => guest.slice(Number(a), Number(a) + n),
      });
      dev.configureDma(0n, BigInt(guest.byteLength));
      const region = new SeedMigrationRegion({
        backend: dev.migration,
        kind: 'trapped',
        dataSize: 65536,
        bitmapSize: 8,
      });
      for (const op of ops)
        check(
          region,
          op,
          () => dev.step(1),
          (n) => dev.step(n),
        );
      dev.close();
    }),
    { numRuns: 150 },
  );
});
