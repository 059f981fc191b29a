// The QMP wire parser and request checks on hostile input: arbitrary bytes never throw from the stream
// splitter, the message parser throws only QmpParseError, and the request checks and argument visitor
// throw only QmpError (a class and a message for the reply), whatever the JSON. The server over a real
// socket is fuzzed in server.test.ts, a real VMM's in test/e2e/vmm-fuzz.test.ts. Beyond typed errors: JSON
// round-trips (encode→split→parse gives the value, parse→encode the same text), and a message refused by
// the parser or the request checks leaves the splitter as a fresh one for the next request.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { MIGRATE_ARGS, MIGRATE_SET_PARAMETERS_ARGS, QMP_CAPABILITIES_ARGS } from '../../src/vmm/qmp/commands.ts';
import {
  type ArgsSchema,
  checkRequest,
  encodeJson,
  type JsonMessage,
  JsonMessageStream,
  parseMessage,
  QmpError,
  QmpParseError,
  toJs,
  visitArgs,
} from '../../src/vmm/qmp/protocol.ts';
import { FuzzTally, fuzzParams } from '../support/fuzz.ts';

const tally = new FuzzTally('qmp-parser-and-checks');

/** Every message the splitter yields for `bytes`, then end of input. */
function messages(bytes: Uint8Array): JsonMessage[] {
  const s = new JsonMessageStream();
  s.push(Buffer.from(bytes));
  s.end();
  const out: JsonMessage[] = [];
  for (let it = s.next(); it; it = s.next()) if (it.kind === 'message') out.push(it);
  return out;
}

test('arbitrary bytes never throw from the stream, and the parser throws only QmpParseError', () => {
  const text = fc.oneof(
    fc.uint8Array({ maxLength: 400 }),
    fc.json({ maxDepth: 4 }).map((s) => new Uint8Array(Buffer.from(s))),
    fc.tuple(fc.json({ maxDepth: 3 }), fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 4 })).map(([s, at, junk]) => {
      const b = Buffer.from(s);
      const i = at % (b.byteLength + 1);
      return new Uint8Array(Buffer.concat([b.subarray(0, i), junk, b.subarray(i)]));
    }),
  );
  fc.assert(
    fc.property(text, (bytes) => {
      tally.inputs++;
      for (const m of messages(bytes)) {
        try {
          parseMessage(m);
        } catch (err) {
          tally.thrown(err, [QmpParseError]);
          assert.ok(err instanceof QmpParseError, String(err));
          assert.match(err.message, /^JSON parse error, /);
        }
      }
    }),
    fuzzParams('QMP parser', 500),
  );
});

test('request checks and argument visitors throw only QmpError, for any JSON', () => {
  const schemas: ArgsSchema[] = [
    QMP_CAPABILITIES_ARGS,
    MIGRATE_ARGS,
    MIGRATE_SET_PARAMETERS_ARGS,
    { n: { type: 'int', min: 0, max: 10 }, e: { type: { enum: ['a', 'b'] }, optional: true } },
    { list: { type: { array: 'uint64' } }, x: { type: 'number', optional: true }, y: { type: 'any', optional: true } },
  ];
  const names = [
    'execute',
    'arguments',
    'id',
    'uri',
    'detach',
    'enable',
    'downtime-limit',
    'max-bandwidth',
    'n',
    'e',
    'list',
    'x',
  ];
  const value = fc.jsonValue({ maxDepth: 3 });
  const request = fc.oneof(
    value.map((v) => JSON.stringify(v)),
    fc.dictionary(fc.constantFrom(...names), value).map((d) => JSON.stringify(d)),
    fc
      .tuple(fc.string({ maxLength: 10 }), fc.dictionary(fc.constantFrom(...names), value), value)
      .map(([execute, args, id]) => JSON.stringify({ execute, arguments: args, id })),
    // Numbers QEMU treats specially: beyond 2^53, beyond u64, negative, float tokens.
    fc
      .tuple(
        fc.constantFrom(...names),
        fc.constantFrom('18446744073709551616', '-1', '1.0', '9007199254740993', '1e400', '-0'),
      )
      .map(([k, n]) => `{"execute": "x", "arguments": {"${k}": ${n}}}`),
  );
  fc.assert(
    fc.property(request, fc.nat(schemas.length - 1), (text, which) => {
      tally.inputs++;
      for (const m of messages(new Uint8Array(Buffer.from(text)))) {
        let req: ReturnType<typeof checkRequest>;
        try {
          req = checkRequest(parseMessage(m));
        } catch (err) {
          tally.thrown(err, [QmpError, QmpParseError]);
          assert.ok(err instanceof QmpError || err instanceof QmpParseError, String(err));
          continue;
        }
        try {
          // The visitor is the one each command's arguments go through.
          visitArgs(schemas[which]!, req.arguments);
        } catch (err) {
          tally.thrown(err, [QmpError]);
          assert.ok(err instanceof QmpError, String(err));
          assert.ok(err.desc.length > 0);
        }
      }
    }),
    fuzzParams('QMP request checks', 500),
  );
});

test('round trips: any JSON value encodes, splits and parses back to itself; what parses re-encodes to the same value', () => {
  // -0 is written as 0 (as JSON.stringify and QEMU do), so values are compared after that normalisation.
  const value = fc.jsonValue({ maxDepth: 4 }).map((v) => JSON.parse(JSON.stringify(v)) as unknown);
  fc.assert(
    fc.property(value, (v) => {
      tally.inputs++;
      // encode -> decode, through the splitter as a peer's bytes would go.
      const got = messages(new Uint8Array(Buffer.from(encodeJson(v))));
      assert.equal(got.length, 1);
      const parsed = toJs(parseMessage(got[0]!));
      assert.deepEqual(parsed, v);
      // decode -> encode: what was parsed writes the same text again.
      assert.equal(encodeJson(parsed), encodeJson(v));
    }),
    fuzzParams('QMP JSON (round trip)', 400),
  );
});

test('a message the parser or the request checks refuse leaves the stream as a fresh one: the next request is read the same', () => {
  const valid = '{"execute": "migrate-set-parameters", "arguments": {"downtime-limit": 300}, "id": 7}';
  const fresh = messages(new Uint8Array(Buffer.from(valid)));
  assert.equal(fresh.length, 1);
  const want = checkRequest(parseMessage(fresh[0]!));
  // Balanced, lexically valid messages that are refused: a colon or comma dropped or doubled, a scalar
  // or array where an object belongs, members QMP does not have.
  const refused = fc.oneof(
    fc.tuple(fc.json({ maxDepth: 3 }), fc.nat(), fc.constantFrom('', ':', ',')).map(([j, at, put]) => {
      const marks = [...j.matchAll(/[:,]/g)].map((m) => m.index!);
      if (marks.length === 0) return j;
      const i = marks[at % marks.length]!;
      return j.slice(0, i) + put + j.slice(i);
    }),
    fc.jsonValue({ maxDepth: 2 }).map((v) => JSON.stringify(v)),
    fc.dictionary(fc.string({ maxLength: 6 }), fc.jsonValue({ maxDepth: 1 })).map((d) => JSON.stringify(d)),
  );
  let seen = 0;
  fc.assert(
    fc.property(refused, (text) => {
      tally.inputs++;
      const s = new JsonMessageStream();
      s.push(Buffer.from(text));
      const items = [];
      for (let it = s.next(); it; it = s.next()) items.push(it);
      // Only complete messages that are then refused: anything else is not this property's input.
      if (items.length === 0 || items.some((it) => it.kind !== 'message')) return;
      for (const it of items) {
        if (it.kind !== 'message') return;
        try {
          checkRequest(parseMessage(it));
          return; // accepted
        } catch (err) {
          assert.ok(err instanceof QmpError || err instanceof QmpParseError, String(err));
        }
      }
      seen++;
      s.push(Buffer.from(valid));
      s.end();
      const next = [];
      for (let it = s.next(); it; it = s.next()) next.push(it);
      assert.equal(next.length, 1, `after ${text}: ${JSON.stringify(next)}`);
      assert.equal(next[0]!.kind, 'message');
      assert.equal((next[0] as JsonMessage).bytes.toString(), fresh[0]!.bytes.toString());
      assert.deepEqual(checkRequest(parseMessage(next[0] as JsonMessage)), want);
    }),
    fuzzParams('QMP (refused, then valid)', 400),
  );
  assert.ok(seen > 0, 'some messages were refused');
});

test('figures', () => {
  assert.ok(tally.inputs > 0);
  tally.printAndCheck();
});
