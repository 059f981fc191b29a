// A figure's warm-up rounds run first and stay out of its median and spread, recorded apart; the
// performance tables say a figure had them. Two figures compared with each other (ours and QEMU's) run
// their rounds alternately.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { figure, formatFigure, measure, measureInTurn, measurePair, measureWith, sayTo } from '../../bench/figures.ts';
import { renderPerfTables } from '../../bench/perf-doc.ts';

test('warm-up rounds are run first and kept apart from the measured rounds', async () => {
  const lines: string[] = [];
  sayTo((l) => lines.push(l));
  try {
    const seen = [100, 900, 1000, 1100];
    let i = 0;
    const f = await measure('x', 'MB/s', 3, async () => ({ value: seen[i++]! }), { warmup: 1 });
    assert.equal(i, 4, 'one warm-up round, then three');
    assert.deepEqual(f.warmup, [100]);
    assert.deepEqual(f.values, [900, 1000, 1100]);
    assert.equal(f.median, 1000);
    assert.equal(f.min, 900, 'the warm-up is not in the spread');
    assert.match(lines.join('\n'), /rounds 900 1000 1100 after warm-up 100/);
    const plain = await measure('y', 'MB/s', 2, async () => ({ value: 5 }));
    assert.equal(plain.warmup, undefined);
    assert.doesNotMatch(formatFigure(plain), /warm-up/);
  } finally {
    sayTo((l) => console.log(l));
  }
});

test('a round that measured no time (Infinity, NaN) voids the run instead of entering a figure', async () => {
  for (const bad of [Number.POSITIVE_INFINITY, Number.NaN]) {
    let i = 0;
    await assert.rejects(
      measure('z', 'MB/s', 3, async () => ({ value: i++ === 1 ? bad : 10 })),
      new RegExp(`z: a round measured ${bad}: the run is void`),
    );
    assert.equal(i, 2, 'stopped at the broken round');
  }
  await assert.rejects(
    measure('w', 'MB/s', 1, async () => ({ value: Number.POSITIVE_INFINITY }), { warmup: 1 }),
    /w: a round measured Infinity/,
    'a warm-up round is checked too',
  );
});

test('the tables note a figure measured after warm-up rounds', () => {
  const text = renderPerfTables([
    {
      date: '2026-12-05T12:00:00.000Z',
      commit: 'eeeeeeeeeeee',
      dirty: false,
      machine: { cpu: 'Test CPU', cores: 2, memGiB: 24, node: 'v20.20.2', loadavg: [0, 0, 0] },
      rounds: 3,
      figures: [figure('trapped', 'MB/s', [900, 1000, 1100], { per: '256 MiB', warmup: [400] })],
      ratios: [],
      skipped: [],
    },
  ]);
  assert.match(text, /\| trapped \| 1000 \| MB\/s \| 900-1100 \| 256 MiB \| after 1 warm-up round \(400\) \|/);
});

test('figures measured in turn take turns going first; without a second one the first is measured alone', async () => {
  const lines: string[] = [];
  sayTo((l) => lines.push(l));
  try {
    const calls: string[] = [];
    const values = { a: [10, 30, 20], b: [5, 6, 7] };
    const side = (name: 'a' | 'b') => ({
      name,
      fn: async () => {
        calls.push(name);
        return { value: values[name][calls.filter((c) => c === name).length - 1]! };
      },
    });
    const [a, b] = await measurePair('MB/s', 3, side('a'), side('b'));
    assert.deepEqual(calls, ['a', 'b', 'b', 'a', 'a', 'b']);
    assert.deepEqual(a.values, [10, 30, 20]);
    assert.equal(a.median, 20);
    assert.deepEqual(b.values, [5, 6, 7]);
    assert.match(lines.join('\n'), /a .* rounds 10 30 20/);
    // Three in turn (ours, a baseline, QEMU's): each round of one between rounds of the others, each first once.
    calls.length = 0;
    const c = {
      name: 'c',
      fn: async () => {
        calls.push('c');
        return { value: 1 };
      },
    };
    const three = await measureInTurn('MB/s', 3, [side('a'), c, side('b')]);
    assert.deepEqual(calls, ['a', 'c', 'b', 'c', 'b', 'a', 'b', 'a', 'c']);
    assert.deepEqual(
      three.map((f) => [f.name, f.values.length]),
      [
        ['a', 3],
        ['c', 3],
        ['b', 3],
      ],
    );
    calls.length = 0;
    const [alone, none] = await measureWith('MB/s', 2, side('a'), null);
    assert.deepEqual(calls, ['a', 'a']);
    assert.equal(none, null);
    assert.equal(alone.name, 'a');
    // A void round in either stops the pair.
    calls.length = 0;
    let n = 0;
    await assert.rejects(
      measurePair('MB/s', 3, side('a'), { name: 'q', fn: async () => ({ value: n++ === 1 ? Number.NaN : 1 }) }),
      /q: a round measured NaN: the run is void/,
    );
  } finally {
    sayTo((l) => console.log(l));
  }
});
