// A device without a dirty log does no DMA (MigrationBackend.dirtyLog is optional): the seed region's
// dirty-page query answers "none dirty" for it while saving, so a VMM migrates such a device like any
// other, and still refuses the query outside a save, as for every device.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Errno } from '../../src/abi/errno.ts';
import { readField, writeField } from '../../src/abi/fields.ts';
import { DeviceState, DIRTY_PFNS_NONE, SEED_MIGRATION_INFO } from '../../src/abi/migration.ts';
import type { MigrationBackend } from '../../src/device/backend.ts';
import { SeedMigrationRegion } from '../../src/device/seed-region.ts';
import { VfioError } from '../../src/errors.ts';

const OFF = Object.fromEntries(SEED_MIGRATION_INFO.fields.map((f) => [f.name, f.offset])) as Record<string, number>;

const noDma: MigrationBackend = {
  transition: () => {},
  pendingBytes: () => 0,
  produce: () => 0,
  consume: () => {},
};

function write(region: SeedMigrationRegion, name: string, width: 4 | 8, v: bigint): void {
  const b = new Uint8Array(width);
  writeField(b, 0, width, v);
  region.write(OFF[name]!, b);
}

test('a device without a dirty log reports no dirty pages while saving, and refuses the query otherwise', () => {
  const region = new SeedMigrationRegion({ backend: noDma, kind: 'trapped', dataSize: 4096, bitmapSize: 64 });
  write(region, 'start_pfn', 8, 0n);
  write(region, 'total_pfns', 8, 1024n);
  assert.throws(
    () => region.read(OFF.copied_pfns!, 8),
    (e: unknown) => e instanceof VfioError && e.errno === Errno.EINVAL,
    'not saving: refused',
  );
  write(region, 'device_state', 4, BigInt(DeviceState.SAVING | DeviceState.RUNNING));
  assert.equal(readField(region.read(OFF.copied_pfns!, 8), 0, 8), DIRTY_PFNS_NONE);
});
