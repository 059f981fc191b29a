import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  FEATURE_FLAGS_KNOWN,
  FeatureFlag,
  FeatureId,
  featureName,
  isMigState,
  MIG_STATE_COUNT,
  MigrationFlag,
  MigState,
  migStateName,
} from '../../../src/abi/migration-v2.ts';

describe('migration v2 constants', () => {
  it('device states 0..7 in uAPI order, with names', () => {
    assert.deepEqual(Object.values(MigState), [0, 1, 2, 3, 4, 5, 6, 7]);
    assert.equal(MIG_STATE_COUNT, 8);
    assert.equal(migStateName(3), 'STOP_COPY');
    assert.equal(migStateName(7), 'PRE_COPY_P2P');
    assert.equal(migStateName(8), 'state 8');
    assert.equal(isMigState(8), false);
    assert.equal(isMigState(0), true);
  });

  it('feature ids and operation bits', () => {
    assert.equal(FeatureId.MIGRATION, 1);
    assert.equal(FeatureId.MIG_DEVICE_STATE, 2);
    assert.deepEqual(
      [FeatureId.DMA_LOGGING_START, FeatureId.DMA_LOGGING_STOP, FeatureId.DMA_LOGGING_REPORT],
      [6, 7, 8],
    );
    assert.equal(FeatureId.MIG_DATA_SIZE, 9);
    assert.equal(featureName(8), 'DMA_LOGGING_REPORT');
    assert.equal(featureName(42), 'feature 42');
    assert.deepEqual(
      [FeatureFlag.MASK, FeatureFlag.GET, FeatureFlag.SET, FeatureFlag.PROBE],
      [0xffff, 0x10000, 0x20000, 0x40000],
    );
    assert.equal(FEATURE_FLAGS_KNOWN, 0x7ffff);
  });

  it('MIGRATION flags: STOP_COPY 1, P2P 2, PRE_COPY 4', () => {
    assert.deepEqual([MigrationFlag.STOP_COPY, MigrationFlag.P2P, MigrationFlag.PRE_COPY], [1n, 2n, 4n]);
  });
});
