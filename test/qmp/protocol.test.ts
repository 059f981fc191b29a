// The QMP wire protocol without sockets: the streaming splitter (QEMU's lexer and streamer rules), the
// message parser's errors, the writer, the request checks and the argument visitor. Fuzzing: fuzz.test.ts.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  type ArgsSchema,
  checkRequest,
  encodeJson,
  eventMessage,
  JsonMessageStream,
  MAX_NESTING,
  parseMessage,
  QmpError,
  QmpParseError,
  type QmpRequestError,
  QNum,
  type QValue,
  type StreamItem,
  toJs,
  visitArgs,
} from '../../src/vmm/qmp/protocol.ts';

/** Everything the stream yields for `input` fed at once (then end of input when `end`). */
function items(input: string | Uint8Array | (string | Uint8Array)[], options: { end?: boolean; max?: number } = {}) {
  const s = new JsonMessageStream(options.max);
  const out: StreamItem[] = [];
  for (const part of Array.isArray(input) ? input : [input]) {
    s.push(typeof part === 'string' ? Buffer.from(part, 'utf8') : part);
    for (let it = s.next(); it; it = s.next()) out.push(it);
  }
  if (options.end) {
    s.end();
    for (let it = s.next(); it; it = s.next()) out.push(it);
  }
  return out;
}

/** Items as comparable text: a message's bytes, or the error. */
function describeItems(list: StreamItem[]): string[] {
  return list.map((i) => (i.kind === 'message' ? `msg:${i.bytes.toString('latin1')}` : `${i.kind}:${i.desc}`));
}

/** Parses one complete value the way the server does. */
function parse(text: string | Uint8Array): QValue {
  const list = items(text, { end: true });
  assert.equal(list.length, 1, `one item expected from ${String(text)}: ${describeItems(list)}`);
  const item = list[0]!;
  if (item.kind !== 'message') throw new QmpParseError(item.desc);
  return parseMessage(item);
}

function parseError(text: string | Uint8Array): string {
  try {
    parse(text);
  } catch (err) {
    assert.ok(err instanceof QmpParseError, `a QmpParseError, not ${err}`);
    return err.message;
  }
  assert.fail(`no error for ${String(text)}`);
}

describe('message splitting', () => {
  test('several messages in one read, one message over many reads', () => {
    assert.deepEqual(describeItems(items('{"a": 1}{"b": [2]}\n  {"c": {}}')), [
      'msg:{"a": 1}',
      'msg:{"b": [2]}',
      'msg:{"c": {}}',
    ]);
    const text = '{"execute": "migrate", "arguments": {"uri": "tcp:h:1"}, "id": "x\\"}{"}';
    for (let cut = 0; cut <= text.length; cut++) {
      assert.deepEqual(describeItems(items([text.slice(0, cut), text.slice(cut)])), [`msg:${text}`], `cut at ${cut}`);
    }
    const bytes = Buffer.from(text);
    assert.deepEqual(describeItems(items([...bytes].map((b) => Uint8Array.of(b)))), [`msg:${text}`]);
  });

  test('braces and quotes inside strings do not count; single-quoted strings work', () => {
    assert.deepEqual(describeItems(items(`{"a": "}]\\"{["} {'b': 'it\\'s "}"'}`)), [
      'msg:{"a": "}]\\"{["}',
      `msg:{'b': 'it\\'s "}"'}`,
    ]);
    assert.deepEqual(toJs(parse(`{'b': 'it\\'s "}"'}`)), { b: 'it\'s "}"' });
  });

  test('a top-level scalar is a message of its own once a delimiter (or the end) shows it is complete', () => {
    assert.deepEqual(describeItems(items('42')), []);
    assert.deepEqual(describeItems(items('42', { end: true })), ['msg:42']);
    assert.deepEqual(describeItems(items('42 "s" true{}')), ['msg:42', 'msg:"s"', 'msg:true', 'msg:{}']);
  });

  test('a stray byte is a lexical error; the lexer resyncs at the next structural character', () => {
    // As QEMU: the error, then the rest of the broken object in pieces, then the next object whole.
    assert.deepEqual(describeItems(items('{"execute": @x, "id": 1}\n{"execute": "stop"}')), [
      "error:JSON parse error, stray '@'",
      'msg:,',
      'msg:"id"',
      'msg::',
      'msg:1',
      'msg:}',
      'msg:{"execute": "stop"}',
    ]);
  });

  test('a 0xFF byte or a control character resets an unbalanced message', () => {
    const list = items([Buffer.from('{"a": [1, {"b": '), Uint8Array.of(0xff), Buffer.from('{"execute": "stop"}')]);
    assert.deepEqual(describeItems(list), ["error:JSON parse error, stray '\uFFFD'", 'msg:{"execute": "stop"}']);
    assert.deepEqual(describeItems(items('{"a": "abc\n{"execute": "stop"}')), [
      "error:JSON parse error, stray '\"abc\n'",
      'msg:{"execute": "stop"}',
    ]);
  });

  test('malformed numbers and escapes are lexical errors', () => {
    assert.deepEqual(describeItems(items('[01]')).slice(0, 1), ["error:JSON parse error, stray '01'"]);
    assert.deepEqual(describeItems(items('[-x]')).slice(0, 1), ["error:JSON parse error, stray '-x'"]);
    assert.deepEqual(describeItems(items('[1.e5]')).slice(0, 1), ["error:JSON parse error, stray '1.e'"]);
    assert.deepEqual(describeItems(items('["a\\\u0001"]')).slice(0, 1), [
      "error:JSON parse error, stray '\"a\\\u0001'",
    ]);
  });

  test('an unfinished string at the end of input is a lexical error; an unbalanced message is a parse error', () => {
    assert.deepEqual(describeItems(items('{"a": "ab', { end: true })), ["error:JSON parse error, stray '\"ab'"]);
    assert.equal(parseError('{"a": [1'), 'JSON parse error, premature EOI');
  });

  test(`nesting deeper than ${MAX_NESTING} is refused; the stream goes on`, () => {
    const deep = '['.repeat(MAX_NESTING + 1);
    const list = describeItems(items(`${deep}{"execute": "x"}`));
    assert.equal(list[0], 'error:JSON nesting depth limit exceeded');
    assert.deepEqual(describeItems(items(`${'['.repeat(MAX_NESTING)}${']'.repeat(MAX_NESTING)}`)).length, 1);
  });

  test('a message over the size limit overflows and the stream stops; whitespace between messages is free', () => {
    const msg = `{"execute": "${'x'.repeat(100)}"}`;
    assert.deepEqual(describeItems(items(msg, { max: msg.length })), [`msg:${msg}`]);
    const over = items([msg.slice(0, 50), `${msg.slice(50)}{"execute": "stop"}`], { max: msg.length - 1 });
    assert.deepEqual(describeItems(over), ['overflow:JSON token size limit exceeded']);
    assert.deepEqual(describeItems(items(`${' '.repeat(100_000)}{}`, { max: 10 })), ['msg:{}']);
    const s = new JsonMessageStream(10);
    s.push(Buffer.from('{"aaaaaaaaaaaaaaaa": 1}'));
    assert.equal(s.next()?.kind, 'overflow');
    s.push(Buffer.from('{}'));
    assert.equal(s.next(), undefined);
    assert.equal(s.finished, true);
  });

  test('property: how the input is cut into reads never changes what comes out', () => {
    const chunky = fc
      .uint8Array({ maxLength: 300 })
      .chain((bytes) =>
        fc.tuple(fc.constant(bytes), fc.uniqueArray(fc.integer({ min: 0, max: bytes.length }), { maxLength: 12 })),
      );
    const interesting = fc.oneof(
      chunky,
      fc
        .array(
          fc.oneof(fc.json(), fc.constantFrom('{', '}', '[', ']', '"', "'", '\\', ':', ',', '@', '\n', '-', '0')),
          {
            maxLength: 20,
          },
        )
        .map((parts) => Buffer.from(parts.join('')))
        .chain((bytes) =>
          fc.tuple(fc.constant(bytes), fc.uniqueArray(fc.integer({ min: 0, max: bytes.length }), { maxLength: 12 })),
        ),
    );
    fc.assert(
      fc.property(interesting, ([bytes, cuts]) => {
        const whole = describeItems(items(bytes, { end: true, max: 200 }));
        const points = [...cuts].sort((a, b) => a - b);
        const pieces: Uint8Array[] = [];
        let at = 0;
        for (const p of points) {
          pieces.push(bytes.subarray(at, p));
          at = p;
        }
        pieces.push(bytes.subarray(at));
        assert.deepEqual(describeItems(items(pieces, { end: true, max: 200 })), whole);
      }),
      { numRuns: 400 },
    );
  });
});

describe('message parsing', () => {
  test("QEMU's syntax errors", () => {
    const cases: [string, string][] = [
      ['{"a": }', 'expecting value'],
      ['{"a": 1,}', 'expecting value'],
      ['[1,]', 'expecting value'],
      [']', 'expecting value'],
      [':', 'expecting value'],
      ['{1: 2}', 'key is not a string in object'],
      ['{[]: 2}', 'key is not a string in object'],
      ['{"a" 1}', 'missing : in object pair'],
      ['{"a": 1 "b": 2}', 'expected separator in dict'],
      ['{"a": 1]', 'expected separator in dict'],
      ['[1 2]', 'expected separator in list'],
      ['[1}', 'expected separator in list'],
      ['nul', "invalid keyword 'nul'"],
      ['{"a": truth}', "invalid keyword 'truth'"],
      ['{"a": 1, "a": 2}', 'duplicate key'],
      ['"\\x"', 'invalid escape sequence in string'],
      ['"\\uD800"', '\\uD800 is not a valid Unicode character'],
      ['"\\uD800\\u0041"', '\\uD800 is not a valid Unicode character'],
      ['"\\uDC00"', '\\uDC00 is not a valid Unicode character'],
      ['"\\uZZZZ"', '\\uZZZZ is not a valid Unicode character'],
      ['"\\uFFFF"', '\\uFFFF is not a valid Unicode character'],
      ['"\\u12"', '\\u12" is not a valid Unicode character'],
    ];
    for (const [text, msg] of cases) assert.equal(parseError(text), `JSON parse error, ${msg}`, text);
  });

  test('strings: escapes, surrogate pairs, modified UTF-8; invalid UTF-8 is refused', () => {
    assert.equal(parse('"a\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\\'"'), 'a"b\\c/d\b\f\n\r\t\'');
    assert.equal(parse('"\\u00e9\\uD83D\\uDE00\\u0000"'), 'é😀\u0000');
    assert.equal(parse(Buffer.from('"é😀"')), 'é😀');
    assert.equal(parse(Buffer.from([0x22, 0xc0, 0x80, 0x22])), '\u0000'); // QEMU's encoding of NUL
    for (const bad of [
      [0xc0, 0xaf], // overlong
      [0xed, 0xa0, 0x80], // surrogate
      [0xef, 0xbf, 0xbf], // noncharacter U+FFFF
      [0x80], // stray continuation
      [0xe2, 0x82], // cut short
      [0xf4, 0x90, 0x80, 0x80], // beyond U+10FFFF
    ]) {
      assert.equal(parseError(Buffer.from([0x22, ...bad, 0x22])), 'JSON parse error, invalid UTF-8 sequence in string');
    }
  });

  test('numbers keep what JS numbers would lose: float tokens and integers beyond 2^53', () => {
    assert.equal(parse('42'), 42);
    assert.equal(parse('-0'), 0);
    assert.equal(Object.is(parse('-0'), 0), true);
    const cases: [string, 'int' | 'uint' | 'double'][] = [
      ['1.0', 'double'],
      ['1e3', 'double'],
      ['9007199254740993', 'int'],
      ['-9223372036854775808', 'int'],
      ['18446744073709551615', 'uint'],
      ['18446744073709551616', 'double'],
      ['-9223372036854775809', 'double'],
    ];
    for (const [text, kind] of cases) {
      const v = parse(text);
      assert.ok(v instanceof QNum, text);
      assert.equal(v.kind, kind, text);
      assert.equal(v.text, text);
    }
  });

  test('objects keep member order and take any key, __proto__ included', () => {
    const v = parse('{"z": 1, "__proto__": {"x": 1}, "a": [true, false, null]}');
    assert.ok(v instanceof Map);
    assert.deepEqual([...v.keys()], ['z', '__proto__', 'a']);
    const js = toJs(v) as Record<string, unknown>;
    assert.equal(Object.getPrototypeOf(js), Object.prototype);
    assert.deepEqual(Object.keys(js), ['z', '__proto__', 'a']);
  });
});

describe('writing', () => {
  test("QEMU's layout, ASCII only, undefined members left out, bigints and QValues as they are", () => {
    assert.equal(encodeJson({ return: {}, id: 1 }), '{"return": {}, "id": 1}');
    assert.equal(
      encodeJson({ a: [1, 'é\u2028😀\u0001'], b: undefined, c: null }),
      '{"a": [1, "\\u00E9\\u2028\\uD83D\\uDE00\\u0001"], "c": null}',
    );
    assert.equal(
      encodeJson({ n: 2n ** 64n - 1n, q: new QNum('double', '1.50'), m: new Map([['k', true]]) }),
      '{"n": 18446744073709551615, "q": 1.50, "m": {"k": true}}',
    );
    assert.equal(
      encodeJson([Number.NaN, Number.POSITIVE_INFINITY, new Date(0)]),
      '[null, null, "1970-01-01T00:00:00.000Z"]',
    );
    assert.equal(encodeJson('\uD800x\uFFFF'), '"\\uFFFDx\\uFFFD"');
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    assert.throws(() => encodeJson(cyclic), /nested too deeply/);
  });

  test('event messages have the timestamp first and no data member when there is no data', () => {
    const e = eventMessage('STOP', undefined, 1_500_000_000_123.456);
    assert.deepEqual(e, { timestamp: { seconds: 1_500_000_000, microseconds: 123_456 }, event: 'STOP' });
    assert.deepEqual(Object.keys(eventMessage('MIGRATION', { status: 'active' })), ['timestamp', 'event', 'data']);
  });

  test('property: what is written parses back to the same data', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (v) => {
        assert.deepEqual(toJs(parse(Buffer.from(encodeJson(v)))), JSON.parse(JSON.stringify(v)));
      }),
      { numRuns: 500 },
    );
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 40 }), (s) => {
        const back = parse(Buffer.from(encodeJson(s)));
        assert.equal(typeof back, 'string');
        assert.equal((back as string).length <= s.length, true);
      }),
      { numRuns: 500 },
    );
  });
});

describe('request checks', () => {
  function requestError(text: string): { class: string; desc: string; hasId: boolean; id: unknown } {
    try {
      checkRequest(parse(text));
    } catch (err) {
      const e = err as QmpRequestError;
      return { class: e.errorClass, desc: e.desc, hasId: e.hasId, id: toJs(e.id) };
    }
    assert.fail(`no error for ${text}`);
  }

  test("QEMU's messages, and the id echoed whenever the request was an object with one", () => {
    assert.deepEqual(requestError('[1]'), {
      class: 'GenericError',
      desc: 'QMP input must be a JSON object',
      hasId: false,
      id: null,
    });
    assert.deepEqual(requestError('{"id": 7}'), {
      class: 'GenericError',
      desc: "QMP input lacks member 'execute'",
      hasId: true,
      id: 7,
    });
    assert.equal(requestError('{"execute": 1}').desc, "QMP input member 'execute' must be a string");
    assert.equal(
      requestError('{"execute": "x", "arguments": []}').desc,
      "QMP input member 'arguments' must be an object",
    );
    assert.equal(requestError('{"execute": "x", "argument": {}}').desc, "QMP input member 'argument' is unexpected");
    assert.equal(requestError('{"exec-oob": "x"}').desc, "QMP input member 'exec-oob' is unexpected");
    assert.deepEqual(requestError('{"execute": "x", "id": null, "control": 1}').id, null);
    assert.equal(requestError('{"execute": "x", "id": null, "control": 1}').hasId, true);
    const ok = checkRequest(parse('{"id": [1], "execute": "stop", "arguments": {}}'));
    assert.equal(ok.execute, 'stop');
    assert.deepEqual(toJs(ok.id), [1]);
  });
});

describe('argument visitor', () => {
  const schema: ArgsSchema = {
    uri: { type: 'str' },
    detach: { type: 'bool', optional: true },
    n: { type: 'int', optional: true },
    u: { type: 'uint64', optional: true },
    x: { type: 'number', optional: true },
    caps: { type: { array: { enum: ['oob'] } }, optional: true },
    anything: { type: 'any', optional: true },
  };
  const visit = (text: string) => visitArgs(schema, parse(text) as Map<string, QValue>);
  const visitError = (text: string) => {
    try {
      visit(text);
    } catch (err) {
      assert.ok(err instanceof QmpError);
      assert.equal(err.errorClass, 'GenericError');
      return err.desc;
    }
    assert.fail(`no error for ${text}`);
  };

  test('values convert per QAPI type', () => {
    assert.deepEqual(
      visit('{"uri": "u", "detach": true, "n": -5, "u": -1, "x": 1.5, "caps": ["oob"], "anything": {"a": [1]}}'),
      { uri: 'u', detach: true, n: -5, u: 2n ** 64n - 1n, x: 1.5, caps: ['oob'], anything: { a: [1] } },
    );
    assert.deepEqual(visit('{"uri": "u", "u": 18446744073709551615, "x": 2}'), { uri: 'u', u: 2n ** 64n - 1n, x: 2 });
    assert.deepEqual(visitArgs({}, undefined), {});
  });

  test("QEMU's messages, members in schema order first, unexpected ones last", () => {
    assert.equal(visitError('{}'), "Parameter 'uri' is missing");
    assert.equal(visitError('{"bogus": 1}'), "Parameter 'uri' is missing");
    assert.equal(visitError('{"uri": "u", "bogus": 1}'), "Parameter 'bogus' is unexpected");
    assert.equal(visitError('{"uri": 1}'), "Invalid parameter type for 'uri', expected: string");
    assert.equal(visitError('{"uri": "u", "detach": null}'), "Invalid parameter type for 'detach', expected: boolean");
    assert.equal(visitError('{"uri": "u", "detach": "yes"}'), "Invalid parameter type for 'detach', expected: boolean");
    assert.equal(visitError('{"uri": "u", "n": 1.0}'), "Invalid parameter type for 'n', expected: integer");
    assert.equal(
      visitError('{"uri": "u", "n": 9223372036854775808}'),
      "Invalid parameter type for 'n', expected: integer",
    );
    assert.equal(visitError('{"uri": "u", "u": 1.5}'), "Parameter 'u' expects uint64");
    assert.equal(visitError('{"uri": "u", "u": "1"}'), "Parameter 'u' expects uint64");
    assert.equal(visitError('{"uri": "u", "u": 18446744073709551616}'), "Parameter 'u' expects uint64");
    assert.equal(visitError('{"uri": "u", "x": "1"}'), "Invalid parameter type for 'x', expected: number");
    assert.equal(visitError('{"uri": "u", "caps": "oob"}'), "Invalid parameter type for 'caps', expected: array");
    assert.equal(
      visitError('{"uri": "u", "caps": ["oob", 1]}'),
      "Invalid parameter type for 'caps[1]', expected: string",
    );
    assert.equal(visitError('{"uri": "u", "caps": ["x"]}'), "Parameter 'null' does not accept value 'x'");
  });

  test('enum members outside lists are named; legacy int ranges', () => {
    assert.throws(
      () => visitArgs({ mode: { type: { enum: ['a'] } } }, parse('{"mode": "b"}') as Map<string, QValue>),
      (err: QmpError) => err.desc === "Parameter 'mode' does not accept value 'b'",
    );
    assert.throws(
      () => visitArgs({ d: { type: 'int', min: 0, max: 10 } }, parse('{"d": 11}') as Map<string, QValue>),
      (err: QmpError) => err.desc === "Parameter 'd' expects a value between 0 and 10",
    );
  });
});
