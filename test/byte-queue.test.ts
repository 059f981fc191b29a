// ByteQueue, the chunk queue behind the stream decoder, the return-path decoder and the QMP reader: under
// any chunking and any sequence of reads it hands out exactly the bytes pushed, in order; reads within one
// chunk are views of it (no copy), reads across chunks are fresh memory.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { ByteQueue } from '../src/byte-queue.ts';

describe('ByteQueue', () => {
  test('property: any chunking and any reads give back the pushed bytes in order', () => {
    fc.assert(
      fc.property(
        fc.array(fc.uint8Array({ maxLength: 40 }), { maxLength: 30 }),
        fc.array(fc.tuple(fc.constantFrom('take', 'peek', 'consume', 'copyTo'), fc.nat(60)), { maxLength: 60 }),
        (chunks, reads) => {
          const all = Buffer.concat(chunks);
          const q = new ByteQueue();
          for (const c of chunks) q.push(c);
          assert.equal(q.length, all.byteLength);
          let at = 0;
          for (const [op, n] of reads) {
            const left = all.byteLength - at;
            if (op === 'peek' || op === 'take') {
              const got = op === 'peek' ? q.peek(n) : q.take(n);
              if (n > left) {
                assert.equal(got, null);
                continue;
              }
              assert.deepEqual(Buffer.from(got!), all.subarray(at, at + n));
              if (op === 'take') at += n;
            } else if (op === 'consume') {
              if (n > left) {
                assert.throws(() => q.consume(n), RangeError);
                continue;
              }
              q.consume(n);
              at += n;
            } else {
              const dst = new Uint8Array(left);
              q.copyTo(dst);
              assert.deepEqual(Buffer.from(dst), all.subarray(at));
            }
            assert.equal(q.length, all.byteLength - at);
            const front = q.front();
            if (q.length > 0) assert.ok(front.byteLength > 0 && front[0] === all[at]);
            else assert.equal(front.byteLength, 0);
          }
        },
      ),
    );
  });

  test('a read inside one chunk is a view of it; one across chunks is a copy', () => {
    const a = new Uint8Array([1, 2, 3, 4]);
    const b = new Uint8Array([5, 6, 7]);
    const q = new ByteQueue();
    q.push(a);
    q.push(new Uint8Array(0));
    q.push(b);
    const inside = q.take(2)!;
    assert.equal(inside.buffer, a.buffer);
    assert.equal(inside.byteOffset, 0);
    const across = q.take(3)!;
    assert.deepEqual([...across], [3, 4, 5]);
    assert.notEqual(across.buffer, a.buffer);
    assert.notEqual(across.buffer, b.buffer);
    assert.equal(q.front().buffer, b.buffer);
    q.clear();
    assert.equal(q.length, 0);
    assert.equal(q.take(1), null);
  });

  test('many small chunks consumed one by one keep their order (the chunk list compacts)', () => {
    const q = new ByteQueue();
    for (let i = 0; i < 1000; i++) q.push(Uint8Array.of(i & 0xff, (i >> 8) & 0xff));
    for (let i = 0; i < 1000; i++) {
      const two = q.take(2)!;
      assert.equal(two[0]! | (two[1]! << 8), i);
      if (i === 500) q.push(Uint8Array.of(0xaa));
    }
    assert.deepEqual([...q.take(1)!], [0xaa]);
  });
});
