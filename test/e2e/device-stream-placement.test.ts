// Where a v1 or v2 device's stop-copy data sits in the stream: in its END section, as QEMU 6.0-7.2's and
// 8.x's save_live_complete_precopy (hw/vfio/migration.c) write it, while a seed device's stop-and-copy
// data stays in PART sections before an END of END_OF_STATE, a chunk larger than PART_DATA_LIMIT in
// several. Checked on a stream saved with `migrate file:`, read back by the analyzer (the destination's
// own checks plus a per-section account of the records).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { startLocalPair, waitForMigration } from '../../src/harness/local-hosts.ts';
import { analyzeBytes, type SectionSummary } from '../../src/stream/analyze.ts';
import { END_DATA_LIMIT, PART_DATA_LIMIT } from '../../src/vmm/migration/vfio-handler.ts';

const MiB = 1 << 20;

test('a saved stream: v1 and v2 stop-copy data in END (bounded, the excess ahead in PARTs), seed stop-and-copy data in PARTs', async () => {
  // No pre-copy for the v2 devices (precopy=off) and an idle guest: all their state is stop-copy data, and
  // random memory makes every block go whole, so the sizes below follow from the device memory alone.
  const v2 = (mem: string) => ({
    device: 'large-memory',
    deviceArgs: ['--flavor', 'v2', '--device-mem', mem, '--device-fill', 'random', '--work-rate', '0'],
    deviceProps: 'precopy=off',
  });
  const pair = await startLocalPair({
    memSize: '16M',
    paused: true,
    source: {
      device: 'large-memory',
      devices: [
        v2('2M'),
        v2('8M'),
        {
          device: 'large-memory',
          // 32 MiB: chunks of 16 MiB (half its default data area), more than a PART may carry.
          deviceArgs: ['--flavor', 'seed', '--device-mem', '32M', '--device-fill', 'random', '--work-rate', '0'],
        },
        // A v1 device that keeps writing its memory while the guest runs: whatever pre-copy sent, the
        // stop-and-copy pass has data left to send (what it dirtied, and its closing digest).
        {
          device: 'large-memory',
          deviceArgs: ['--flavor', 'v1', '--device-mem', '2M', '--device-fill', 'random', '--work-rate', '2000'],
        },
      ],
      vmmArgs: ['--dirty-rate', '0'],
    },
    destination: { device: 'register-file' },
  });
  try {
    const file = `${pair.dir}/saved.vm`;
    // A generous downtime budget: what is tested is where the data lands, not when the switch-over comes.
    await pair.src.execute('migrate-set-parameters', { 'downtime-limit': 60_000 });
    await pair.src.execute('migrate', { uri: `file:${file}` });
    const info = await waitForMigration(pair.src, { timeoutMs: 120_000 });
    assert.equal(info.status, 'completed', String(info['error-desc'] ?? ''));
    const a = analyzeBytes(readFileSync(file));
    assert.ok(a.complete, a.error?.message);
    const of = (idstr: string, type: SectionSummary['type']): SectionSummary[] =>
      a.sections.filter((s) => s.idstr === idstr && s.type === type);
    const entry = (idstr: string) => a.entries.find((e) => e.idstr === idstr)!;

    // The small v2 device: all of its data in END, no PART at all.
    const small = '0000:00:05.0/vfio';
    assert.equal(of(small, 'part').length, 0, 'no PART for a v2 device without pre-copy data that fits in END');
    const [smallEnd] = of(small, 'end');
    assert.ok(smallEnd!.vfio!.dataBytes >= 2 * MiB, `END carries ${smallEnd!.vfio!.dataBytes} bytes`);
    assert.equal(smallEnd!.vfio!.dataBytes, entry(small).vfio!.dataBytes, 'END carries all the device data');
    assert.equal(smallEnd!.vfio!.tags.at(-1), 'END_OF_STATE');

    // The larger v2 device: END holds at most END_DATA_LIMIT; the rest went just before it, in PARTs.
    const large = '0000:00:06.0/vfio';
    const [largeEnd] = of(large, 'end');
    const largeParts = of(large, 'part');
    assert.ok(largeEnd!.vfio!.dataBytes > 0 && largeEnd!.vfio!.dataBytes <= END_DATA_LIMIT);
    assert.ok(largeParts.length > 0, 'the excess went ahead in PARTs');
    assert.equal(
      largeEnd!.vfio!.dataBytes + largeParts.reduce((n, s) => n + s.vfio!.dataBytes, 0),
      entry(large).vfio!.dataBytes,
    );
    assert.ok(entry(large).vfio!.dataBytes >= 8 * MiB);

    // The seed device: its data in PARTs, END just END_OF_STATE (the seed layout, unchanged).
    const seed = '0000:00:07.0/vfio';
    const [seedEnd] = of(seed, 'end');
    assert.equal(seedEnd!.vfio!.dataBytes, 0);
    assert.deepEqual(seedEnd!.vfio!.tags, ['END_OF_STATE']);
    assert.ok(entry(seed).vfio!.dataBytes >= 32 * MiB, 'the seed device data went in its PARTs');
    // Its chunks were larger than a PART carries: each went in several, none over the limit.
    const seedParts = of(seed, 'part').filter((s) => s.vfio!.dataBytes > 0);
    assert.ok(seedParts.every((s) => s.vfio!.dataBytes <= PART_DATA_LIMIT));
    const vfio = await pair.src.execute<{ name: string; chunks: number }[]>('x-query-vfio');
    const seedChunks = vfio.find((d) => `${d.name}/vfio` === seed)!.chunks;
    assert.ok(seedParts.length > seedChunks, `${seedParts.length} PARTs for ${seedChunks} chunks`);

    // The v1 device: its stop-and-copy data in END, after whatever pre-copy sent in PARTs.
    const v1 = '0000:00:08.0/vfio';
    const [v1End] = of(v1, 'end');
    assert.ok(v1End!.vfio!.dataBytes > 0, 'the v1 stop-and-copy data went in END');
    assert.ok(v1End!.vfio!.tags[0]!.startsWith('DEV_DATA_STATE'), v1End!.vfio!.tags.join(' '));
    assert.equal(v1End!.vfio!.tags.at(-1), 'END_OF_STATE');
    assert.equal(
      v1End!.vfio!.dataBytes + of(v1, 'part').reduce((n, s) => n + s.vfio!.dataBytes, 0),
      entry(v1).vfio!.dataBytes,
    );

    // QEMU's order: every END (with the stop-copy data) before the FULL sections of device config.
    const lastEnd = Math.max(...a.sections.filter((s) => s.type === 'end').map((s) => s.seq));
    const firstFull = Math.min(...a.sections.filter((s) => s.type === 'full').map((s) => s.seq));
    assert.ok(lastEnd < firstFull);
  } finally {
    await pair.stop();
  }
});
