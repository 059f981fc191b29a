// The performance document's tables come from the bench history: an empty history says no run was
// recorded; a recorded run's figures, ratios and skips appear as the run has them, and the trend table
// lines each ratio up across runs. The text outside the markers is never touched.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { figure, meetsAim } from '../../bench/figures.ts';
import { aimVerdict, BEGIN, END, renderPerfTables, spliceTables, writePerfDoc } from '../../bench/perf-doc.ts';
import type { BenchRun } from '../../bench/results.ts';

function run(commit: string, mmappedRatio: number): BenchRun {
  return {
    date: '2026-12-04T12:00:00.000Z',
    commit,
    dirty: false,
    machine: { cpu: 'Test CPU', cores: 2, memGiB: 24, node: 'v20.20.2', loadavg: [0.1, 0.2, 0.3] },
    rounds: 3,
    figures: [
      figure('ours-zero', 'MB/s', [4000, 5000, 4500], { per: '4.0 GiB guest', note: 'destination maps 0.1 MiB' }),
      figure('dirty-sync-final', 'ms', [3.25, 2.5, 4]),
    ],
    ratios: [{ name: 'mmapped / memcpy', value: mmappedRatio, aim: '>= 0.5' }],
    skipped: [{ name: 'qemu-zero', why: 'qemu-system-x86_64 is not on PATH (ENOENT)' }],
  };
}

test('no history: the tables say no run is recorded yet', () => {
  assert.match(renderPerfTables([]), /^No run recorded yet/);
});

test('a recorded run: its figures (median, spread), ratios and skips; the trend over runs', () => {
  const one = renderPerfTables([run('aaaaaaaaaaaa', 0.61)]);
  assert.match(one, /commit aaaaaaaaaaaa, Test CPU, 2 cores, 24 GiB/);
  assert.match(one, /\| ours-zero \| 4500 \| MB\/s \| 4000-5000 \| 4\.0 GiB guest \| destination maps 0\.1 MiB \|/);
  assert.match(one, /\| dirty-sync-final \| 3\.3 \| ms \| 2\.5-4\.0 \|/);
  assert.match(one, /\| mmapped \/ memcpy \| 0\.61 \| >= 0\.5 \|/);
  assert.match(one, /- qemu-zero: qemu-system-x86_64 is not on PATH/);
  assert.doesNotMatch(one, /across the last/, 'one run has no trend');
  const two = renderPerfTables([run('aaaaaaaaaaaa', 0.61), run('bbbbbbbbbbbb', 0.72)]);
  assert.match(two, /commit bbbbbbbbbbbb/);
  assert.match(two, /\| mmapped \/ memcpy \| 0\.61 \| 0\.72 \|/);
});

test('a run of one part (--only) stays out of the tables and the trend: they show the latest full run', () => {
  const partial = { ...run('dddddddddddd', 0.99), only: 'device' };
  const text = renderPerfTables([run('aaaaaaaaaaaa', 0.61), partial]);
  assert.match(text, /commit aaaaaaaaaaaa/);
  assert.doesNotMatch(text, /dddddddddddd|0\.99/);
  assert.match(renderPerfTables([partial]), /^No run recorded yet/);
});

test('the document is rewritten between its markers only, from the history file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'perf-doc-'));
  try {
    const doc = join(dir, 'performance.md');
    const history = join(dir, 'history.jsonl');
    writeFileSync(doc, `# Title\n\nhand text\n\n${BEGIN}\nold tables\n${END}\n\nmore hand text\n`);
    writePerfDoc(history, doc); // no history file yet
    let text = readFileSync(doc, 'utf8');
    assert.match(text, /^# Title\n\nhand text\n/);
    assert.match(text, /No run recorded yet/);
    assert.doesNotMatch(text, /old tables/);
    assert.match(text, /\n\nmore hand text\n$/);
    writeFileSync(history, `${JSON.stringify(run('cccccccccccc', 0.5))}\n`);
    writePerfDoc(history, doc);
    text = readFileSync(doc, 'utf8');
    assert.match(text, /commit cccccccccccc/);
    assert.doesNotMatch(text, /No run recorded yet/);
    assert.throws(() => spliceTables('no markers here', 'x'), /no .* section to fill/);
    writeFileSync(history, 'not json\n');
    assert.throws(() => writePerfDoc(history, doc), /history\.jsonl:1 is not a JSON run record/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('aims: ">=", ">", "<=", "<" judged on the exact value; any other aim is not judged', () => {
  assert.equal(meetsAim('>= 1.5', 1.5), true);
  assert.equal(meetsAim('>= 1.5', 1.4999), false);
  assert.equal(meetsAim('> 1', 1), false);
  assert.equal(meetsAim('<= 10', 10), true);
  assert.equal(meetsAim('< 10', 10), false);
  assert.equal(meetsAim('about 1', 1), null);
});

test('an aim not held is out of reach in a run where a bound of it misses the aim too', () => {
  const base = run('cccccccccccc', 0.61);
  const withRatios = (ratios: BenchRun['ratios']): BenchRun => ({ ...base, ratios });
  const aimed = { name: 'ours / qemu', value: 1.2, aim: '>= 1.5', bounds: ['ceiling / qemu', 'other / qemu'] };
  const low = withRatios([aimed, { name: 'ceiling / qemu', value: 1.4 }, { name: 'other / qemu', value: 2 }]);
  assert.equal(aimVerdict(aimed, low), 'not held: out of reach in this run (ceiling / qemu 1.40)');
  const high = withRatios([aimed, { name: 'ceiling / qemu', value: 1.9 }, { name: 'other / qemu', value: 2 }]);
  assert.equal(aimVerdict(aimed, high), 'not held, within reach (ceiling / qemu 1.90, other / qemu 2.00)');
  assert.equal(aimVerdict({ ...aimed, bounds: undefined }, high), 'not held');
  assert.equal(aimVerdict({ ...aimed, value: 1.6 }, low), 'held');
  assert.equal(aimVerdict({ name: 'start-up', value: 1.1, aim: 'about 1' }, low), null);
  // The table: each judged aim of the latest run, and how often it held over the recent runs.
  const older = withRatios([{ ...aimed, value: 1.7 }]);
  const text = renderPerfTables([older, low]);
  assert.match(
    text,
    /\| ours \/ qemu \| 1\.200 \| >= 1\.5 \| not held: out of reach in this run \(ceiling \/ qemu 1\.40\) \| 1 of 2 \|/,
  );
});
