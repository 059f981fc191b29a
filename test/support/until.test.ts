// The tests' one way of waiting (until.ts): it resolves once the condition holds, sync or async, and a
// condition that never holds fails with what was awaited and the context, rather than hanging.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { until } from './until.ts';

describe('until', () => {
  test('resolves once the condition holds, looking again between polls; async conditions too', async () => {
    let looks = 0;
    await until(() => ++looks >= 3, 'three looks', { everyMs: 1 });
    assert.equal(looks, 3);
    let asyncLooks = 0;
    await until(async () => ++asyncLooks >= 2, 'two async looks', { everyMs: 1 });
    assert.equal(asyncLooks, 2);
  });

  test('a condition that never holds rejects after the safety net, naming what and the context', async () => {
    await assert.rejects(
      until(() => false, 'the impossible', { ms: 30, everyMs: 5, context: () => 'last line: nothing' }),
      /^Error: timed out after 30 ms waiting for the impossible\nlast line: nothing$/,
    );
  });
});
