// The device-author example (examples/stopwatch-device.ts): a device written against the public API alone,
// served by its own script on both hosts, live-migrated between two VMM processes; its registers (a
// scratch pattern only the source has, and the tick counter) arrive whole.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type HostOptions, startLocalPair } from '../../src/harness/local-hosts.ts';
import { type Digests, migrateToEnd } from '../e2e/support/migrate.ts';

const EXAMPLE = new URL('../../examples/stopwatch-device.ts', import.meta.url).pathname;

function stopwatch(...extra: string[]): HostOptions {
  return {
    deviceCommand: (socket) => [process.execPath, '--import', 'tsx', EXAMPLE, '--socket', socket, ...extra],
    vmmArgs: ['--dirty-rate', '1000'],
  };
}

test('the example stopwatch device serves and live-migrates with its state', async () => {
  const pair = await startLocalPair({
    memSize: '64M',
    paused: true,
    source: stopwatch('--scratch', 'migrated by vfio-migrate'),
    destination: stopwatch(),
  });
  try {
    const [srcBefore, dstBefore] = await Promise.all([
      pair.src.execute<Digests>('x-query-digests'),
      pair.dst.execute<Digests>('x-query-digests'),
    ]);
    assert.notEqual(dstBefore.devices[0]!.digest, srcBefore.devices[0]!.digest, 'the fresh destination differs');
    const { src: a, dst: b } = await migrateToEnd(pair);
    assert.equal(b.ram, a.ram, 'guest RAM equal');
    assert.ok(a.devices[0]!.digest, 'the source device has a digest');
    assert.equal(b.devices[0]!.digest, a.devices[0]!.digest, 'the stopwatch registers arrived whole');
    const vfio = await pair.dst.execute<{ transferred: number }[]>('x-query-vfio');
    assert.equal(vfio[0]!.transferred, 8 + 0x200, 'its saved state: an 8-byte header and the 512-byte BAR');
  } finally {
    await pair.stop();
  }
});
