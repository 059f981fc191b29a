// The demo's device verdict: "verified" only for the same number of devices, each with a digest on both
// sides, equal. The cases the demo once called verified (lost on both sides, counts differing) fail.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { deviceMismatches } from '../../src/cli/device-verdict.ts';

const dev = (name: string, digest: string | null, lost?: string) => ({ name, digest, ...(lost ? { lost } : {}) });

test('equal digests on both sides, same count: verified (no mismatch)', () => {
  assert.deepEqual(deviceMismatches([dev('a', 'aa'), dev('b', 'bb')], [dev('a', 'aa'), dev('b', 'bb')]), []);
  assert.deepEqual(deviceMismatches([], []), []);
});

test('a differing digest is a mismatch naming the device', () => {
  assert.deepEqual(deviceMismatches([dev('a', 'aa'), dev('b', 'bb')], [dev('a', 'aa'), dev('b', 'bc')]), [
    'device b state differs at the destination',
  ]);
});

test('a device lost on both sides (null and null) is not verified', () => {
  assert.deepEqual(deviceMismatches([dev('a', null, 'server gone')], [dev('a', null)]), [
    'device a lost at the source (server gone)',
    'device a lost at the destination',
  ]);
});

test('a device lost on one side only is not verified', () => {
  assert.deepEqual(deviceMismatches([dev('a', 'aa')], [dev('a', null)]), ['device a lost at the destination']);
  assert.deepEqual(deviceMismatches([dev('a', null)], [dev('a', 'aa')]), ['device a lost at the source']);
});

test('differing device counts are not verified, either way round', () => {
  assert.deepEqual(deviceMismatches([dev('a', 'aa'), dev('b', 'bb')], [dev('a', 'aa')]), [
    'the source has 2 device(s), the destination 1',
  ]);
  assert.deepEqual(deviceMismatches([dev('a', 'aa')], [dev('a', 'aa'), dev('b', 'bb')]), [
    'the source has 1 device(s), the destination 2',
  ]);
  assert.deepEqual(deviceMismatches([], [dev('a', 'aa')]), ['the source has 0 device(s), the destination 1']);
});
