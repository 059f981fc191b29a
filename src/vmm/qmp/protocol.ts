// The QMP wire protocol, as QEMU speaks it: its JSON dialect read as a stream, the request checks, the
// argument visitor with QEMU's error texts, and the reply/event/greeting shapes.
//
// Reading follows QEMU's three stages:
//  1. a byte lexer (JSON tokens plus QEMU's extensions: single-quoted strings and a \' escape). A byte that
//     cannot continue a token is a lexical error ("JSON parse error, stray '...'"); the lexer then skips
//     to the next structural character ({ } [ ] : ,), control character or 0xFE/0xFF, where it starts
//     again. Clients use a 0xFF byte or a newline to force a known-good state, as with QEMU.
//  2. a message splitter that counts braces and brackets: a message ends with the token that brings both
//     counts back to zero (or below), so a top-level scalar is a message of its own.
//  3. a parser for one message, with QEMU's messages ("expecting value", "duplicate key", ...). It reads
//     the tokens stage 1 recorded (type and byte range each), so there is one lexer, not two to keep in step.
// Stage 1 and 2 run as bytes arrive and keep only the message in progress (bounded); stage 3 runs when the
// message is dispatched, so a peer's queued requests cost their bytes (and token offsets) and nothing more.

import { ByteQueue } from '../../byte-queue.ts';

/** QEMU's QapiErrorClass values. */
export type QmpErrorClass = 'GenericError' | 'CommandNotFound' | 'DeviceNotActive' | 'DeviceNotFound' | 'KVMMissingCap';

/** An error a command reports, as QMP sends it: `{"error": {"class": ..., "desc": ...}}`. */
export class QmpError extends Error {
  override readonly name = 'QmpError';
  constructor(
    readonly errorClass: QmpErrorClass,
    readonly desc: string,
  ) {
    super(desc);
  }

  /** The QMP error class (`errorClass` under its wire name). */
  get class(): QmpErrorClass {
    return this.errorClass;
  }
}

/** QEMU's `MAX_NESTING` for JSON input. */
export const MAX_NESTING = 1024;
/** Default limit on one incoming message (QEMU's is 64 MiB of tokens; ours is smaller and closes the peer). */
export const DEFAULT_MAX_MESSAGE_BYTES = 1 << 20;

// ---------------------------------------------------------------------------------------------------
// Values

/**
 * A number QMP's JSON carries that a JS number would not keep exactly: a float token (1.0 is a float to
 * QEMU, not an integer), or an integer outside the safe range (kept as its text). Integers within
 * ±(2^53 - 1) parse to plain JS numbers.
 */
export class QNum {
  constructor(
    /** int: fits int64; uint: fits uint64 only; double: a float token, or an integer beyond uint64. */
    readonly kind: 'int' | 'uint' | 'double',
    /** The token as sent. */
    readonly text: string,
  ) {}

  /** The exact integer (int and uint kinds). */
  get bigint(): bigint {
    return BigInt(this.text);
  }

  toNumber(): number {
    return Number(this.text);
  }
}

/** A parsed JSON value: objects are Maps (insertion order, no prototype keys), numbers as described at QNum. */
export type QValue = null | boolean | string | number | QNum | QValue[] | QDict;
export type QDict = Map<string, QValue>;

/** The value as plain JS data (numbers that need it lose precision, as JSON.parse would). */
export function toJs(v: QValue): unknown {
  if (v instanceof Map) return Object.fromEntries([...v].map(([k, x]) => [k, toJs(x)]));
  if (Array.isArray(v)) return v.map(toJs);
  if (v instanceof QNum) return v.toNumber();
  return v;
}

// ---------------------------------------------------------------------------------------------------
// Stage 1 and 2: the streaming lexer and message splitter

const ST_START = 0;
const ST_RECOVERY = 1;
const ST_DQ = 2;
const ST_DQ_ESC = 3;
const ST_SQ = 4;
const ST_SQ_ESC = 5;
const ST_ZERO = 6;
const ST_SIGN = 7;
const ST_DIGITS = 8;
const ST_MANTISSA = 9;
const ST_MANTISSA_DIGITS = 10;
const ST_EXP_E = 11;
const ST_EXP_SIGN = 12;
const ST_EXP_DIGITS = 13;
const ST_KEYWORD = 14;

const LBRACE = 0x7b;
const RBRACE = 0x7d;
const LBRACKET = 0x5b;
const RBRACKET = 0x5d;
const COLON = 0x3a;
const COMMA = 0x2c;
const DQUOTE = 0x22;
const SQUOTE = 0x27;
const BACKSLASH = 0x5c;

const isDigit = (c: number) => c >= 0x30 && c <= 0x39;
const isLower = (c: number) => c >= 0x61 && c <= 0x7a;
const isWs = (c: number) => c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d;
const isStructural = (c: number) =>
  c === LBRACE || c === RBRACE || c === LBRACKET || c === RBRACKET || c === COLON || c === COMMA;
/** Bytes allowed inside a string and right after a backslash (QEMU's lexer: 0x20..0xFD). */
const isStringByte = (c: number) => c >= 0x20 && c <= 0xfd;

// Token types, as the lexer hands them to the parser with each message.
const T_LBRACE = 1;
const T_RBRACE = 2;
const T_LBRACKET = 3;
const T_RBRACKET = 4;
const T_COLON = 5;
const T_COMMA = 6;
const T_STRING = 7;
const T_INTEGER = 8;
const T_FLOAT = 9;
const T_KEYWORD = 10;

/**
 * A complete message: lexically valid tokens with balanced (or over-closed) braces and brackets. The
 * lexer's tokens come with it (type, start, end per token, offsets into `bytes`), so the parser never
 * lexes the bytes again.
 */
export interface JsonMessage {
  kind: 'message';
  bytes: Buffer;
  tokens: readonly number[];
}

/** What the stream hands out: a message to parse, or an error to answer. */
export type StreamItem =
  | JsonMessage
  /** A lexical error or the nesting limit: answer it; the stream continues. */
  | { kind: 'error'; desc: string }
  /** A message grew past the size limit: answer it and give up on the peer (the stream stops). */
  | { kind: 'overflow'; desc: string };

/** Longest token text quoted in a "stray" error (QEMU quotes the whole token; a bound keeps replies small). */
const STRAY_QUOTE_BYTES = 256;

/**
 * Splits a byte stream into QMP messages the way QEMU's JSON streamer does. Feed bytes with push(),
 * take items with next() (it lexes only as far as the next item, so a caller can stop taking while its
 * queue is full and the unread bytes wait here), and call end() at end of input.
 */
export class JsonMessageStream {
  /** Bytes pushed and not yet lexed past: the chunk being lexed is its front, at `pos`. */
  private readonly input = new ByteQueue();
  private pos = 0;
  private unread = 0;
  private state = ST_START;
  private braces = 0;
  private brackets = 0;
  /** A message is in progress: it starts at msgStart in the front chunk, after `parts` from earlier chunks. */
  private open = false;
  private readonly parts = new ByteQueue();
  private msgStart = 0;
  /** Offset of the token in progress from the start of its message. */
  private tokStart = 0;
  /** The message's tokens so far: type, start, end. */
  private tokens: number[] = [];
  private ended = false;
  private dead = false;

  constructor(private readonly maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES) {}

  push(chunk: Uint8Array): void {
    if (this.dead || this.ended || chunk.length === 0) return;
    this.input.push(chunk);
    this.unread += chunk.byteLength;
  }

  /** Bytes pushed and not yet lexed. */
  get unreadBytes(): number {
    return this.unread;
  }

  /** No item can come any more (after end() or an overflow, once everything is taken). */
  get finished(): boolean {
    return this.dead || (this.ended && this.unread === 0 && !this.open);
  }

  /** Marks the end of input; next() then also delivers what the end completes (QEMU's flush). */
  end(): void {
    this.ended = true;
  }

  next(): StreamItem | undefined {
    if (this.dead) return undefined;
    while (this.input.length > 0) {
      const chunk = this.input.front();
      while (this.pos < chunk.length) {
        const item = this.step(chunk, chunk[this.pos]!);
        if (item) return item;
      }
      if (this.open) {
        // The message goes on in the next chunk, from its first byte.
        this.parts.push(chunk.subarray(this.msgStart));
        this.msgStart = 0;
      }
      this.input.consume(chunk.length);
      this.pos = 0;
    }
    return this.ended ? this.flush() : undefined;
  }

  /** Length of the message in progress up to position `end` (exclusive) of the front chunk. */
  private messageLength(end: number): number {
    return this.parts.length + end - this.msgStart;
  }

  private beginToken(): void {
    if (!this.open) {
      this.open = true;
      this.msgStart = this.pos;
      this.tokStart = 0;
    } else {
      this.tokStart = this.messageLength(this.pos);
    }
  }

  /** Consumes one byte; returns an item when this byte completes or breaks something. */
  private step(chunk: Uint8Array, c: number): StreamItem | undefined {
    switch (this.state) {
      case ST_START:
        if (isWs(c)) {
          this.consume();
          return undefined;
        }
        this.beginToken();
        if (c === DQUOTE) return this.consumeInto(ST_DQ);
        if (c === SQUOTE) return this.consumeInto(ST_SQ);
        if (c === 0x30) return this.consumeInto(ST_ZERO);
        if (c >= 0x31 && c <= 0x39) return this.consumeInto(ST_DIGITS);
        if (c === 0x2d) return this.consumeInto(ST_SIGN);
        if (isLower(c)) return this.consumeInto(ST_KEYWORD);
        if (isStructural(c)) {
          const over = this.consume();
          if (over) return over;
          let t = T_COLON;
          if (c === LBRACE) {
            this.braces++;
            t = T_LBRACE;
          } else if (c === RBRACE) {
            this.braces--;
            t = T_RBRACE;
          } else if (c === LBRACKET) {
            this.brackets++;
            t = T_LBRACKET;
          } else if (c === RBRACKET) {
            this.brackets--;
            t = T_RBRACKET;
          } else if (c === COMMA) t = T_COMMA;
          this.token(t);
          return this.tokenDone(chunk, this.pos);
        }
        return this.lexError(chunk);
      case ST_RECOVERY:
        if ((c < 0x20 && c !== 0x09) || c >= 0xfe || isStructural(c)) {
          this.state = ST_START; // lookahead: the byte is read again from the start state
          return undefined;
        }
        this.consume();
        return undefined;
      case ST_DQ:
      case ST_SQ: {
        const quote = this.state === ST_DQ ? DQUOTE : SQUOTE;
        if (c === quote) {
          const over = this.consume();
          if (over) return over;
          this.state = ST_START;
          this.token(T_STRING);
          return this.tokenDone(chunk, this.pos);
        }
        if (c === BACKSLASH) return this.consumeInto(this.state === ST_DQ ? ST_DQ_ESC : ST_SQ_ESC);
        if (isStringByte(c)) return this.consume();
        return this.lexError(chunk);
      }
      case ST_DQ_ESC:
      case ST_SQ_ESC:
        if (isStringByte(c)) return this.consumeInto(this.state === ST_DQ_ESC ? ST_DQ : ST_SQ);
        return this.lexError(chunk);
      case ST_ZERO:
        if (isDigit(c)) return this.lexError(chunk);
        if (c === 0x2e) return this.consumeInto(ST_MANTISSA);
        return this.lookaheadDone(chunk);
      case ST_SIGN:
        if (c === 0x30) return this.consumeInto(ST_ZERO);
        if (c >= 0x31 && c <= 0x39) return this.consumeInto(ST_DIGITS);
        return this.lexError(chunk);
      case ST_DIGITS:
        if (isDigit(c)) return this.consume();
        if (c === 0x65 || c === 0x45) return this.consumeInto(ST_EXP_E);
        if (c === 0x2e) return this.consumeInto(ST_MANTISSA);
        return this.lookaheadDone(chunk);
      case ST_MANTISSA:
        if (isDigit(c)) return this.consumeInto(ST_MANTISSA_DIGITS);
        return this.lexError(chunk);
      case ST_MANTISSA_DIGITS:
        if (isDigit(c)) return this.consume();
        if (c === 0x65 || c === 0x45) return this.consumeInto(ST_EXP_E);
        return this.lookaheadDone(chunk);
      case ST_EXP_E:
        if (c === 0x2b || c === 0x2d) return this.consumeInto(ST_EXP_SIGN);
        if (isDigit(c)) return this.consumeInto(ST_EXP_DIGITS);
        return this.lexError(chunk);
      case ST_EXP_SIGN:
        if (isDigit(c)) return this.consumeInto(ST_EXP_DIGITS);
        return this.lexError(chunk);
      case ST_EXP_DIGITS:
        if (isDigit(c)) return this.consume();
        return this.lookaheadDone(chunk);
      default:
        // ST_KEYWORD
        if (isLower(c)) return this.consume();
        return this.lookaheadDone(chunk);
    }
  }

  /** Takes the current byte; inside a message, enforces the size limit. */
  private consume(): StreamItem | undefined {
    this.pos++;
    this.unread--;
    if (this.open && this.messageLength(this.pos) > this.maxMessageBytes) return this.overflow();
    return undefined;
  }

  private consumeInto(state: number): StreamItem | undefined {
    this.state = state;
    return this.consume();
  }

  /** A number or keyword ended at the current byte, which is not part of it. */
  private lookaheadDone(chunk: Uint8Array): StreamItem | undefined {
    this.endWord();
    return this.tokenDone(chunk, this.pos);
  }

  /** Records the token that ends at the current position. */
  private token(type: number): void {
    this.tokens.push(type, this.tokStart, this.messageLength(this.pos));
  }

  /** A number or keyword ends here (the state says which); the lexer starts afresh. */
  private endWord(): void {
    const s = this.state;
    this.token(s === ST_KEYWORD ? T_KEYWORD : s === ST_ZERO || s === ST_DIGITS ? T_INTEGER : T_FLOAT);
    this.state = ST_START;
  }

  /** A token ended just before `end`: apply the limits and see whether it completes the message. */
  private tokenDone(chunk: Uint8Array, end: number): StreamItem | undefined {
    if (this.braces < 0 || this.brackets < 0 || (this.braces === 0 && this.brackets === 0)) {
      const tokens = this.tokens;
      return { kind: 'message', bytes: this.takeMessage(chunk, end), tokens };
    }
    if (this.braces + this.brackets > MAX_NESTING) {
      this.takeMessage(chunk, end);
      return { kind: 'error', desc: 'JSON nesting depth limit exceeded' };
    }
    return undefined;
  }

  /** Takes (copies) the message in progress, ending at `end` of `chunk` (the front one; none at end of input). */
  private takeMessage(chunk: Uint8Array | undefined, end: number): Buffer {
    if (chunk) this.parts.push(chunk.subarray(this.msgStart, end));
    const bytes = Buffer.allocUnsafe(this.parts.length);
    this.parts.copyTo(bytes);
    this.parts.clear();
    this.open = false;
    this.msgStart = 0;
    this.braces = 0;
    this.brackets = 0;
    this.tokens = [];
    return bytes;
  }

  /** The current byte cannot continue the token: QEMU's JSON_ERROR, then recovery. */
  private lexError(chunk: Uint8Array): StreamItem {
    this.pos++;
    this.unread--;
    const msg = this.takeMessage(chunk, this.pos);
    let token = msg.subarray(this.tokStart);
    let prefix = '';
    if (token.length > STRAY_QUOTE_BYTES) {
      token = token.subarray(token.length - STRAY_QUOTE_BYTES);
      prefix = '...';
    }
    this.state = ST_RECOVERY;
    return { kind: 'error', desc: `JSON parse error, stray '${prefix}${decodeLossy(token)}'` };
  }

  private overflow(): StreamItem {
    this.dead = true;
    this.input.clear();
    this.open = false;
    this.parts.clear();
    this.unread = 0;
    return { kind: 'overflow', desc: 'JSON token size limit exceeded' };
  }

  /** End of input: finish a number or keyword, report an unfinished string, hand over what is left. */
  private flush(): StreamItem | undefined {
    const s = this.state;
    if (s === ST_RECOVERY || s === ST_START) {
      this.state = ST_START;
      if (!this.open) return undefined;
      const tokens = this.tokens;
      return { kind: 'message', bytes: this.takeMessage(undefined, 0), tokens };
    }
    if (s === ST_ZERO || s === ST_DIGITS || s === ST_MANTISSA_DIGITS || s === ST_EXP_DIGITS || s === ST_KEYWORD) {
      this.endWord();
      const tokens = this.tokens;
      return { kind: 'message', bytes: this.takeMessage(undefined, 0), tokens };
    }
    // An unfinished string, or a number cut short: QEMU's flush makes that a lexical error.
    const msg = this.takeMessage(undefined, 0);
    this.state = ST_START;
    const token = msg.subarray(this.tokStart);
    return { kind: 'error', desc: `JSON parse error, stray '${decodeLossy(token.subarray(-STRAY_QUOTE_BYTES))}'` };
  }
}

const lossy = new TextDecoder('utf-8', { fatal: false });
function decodeLossy(b: Uint8Array): string {
  return lossy.decode(b);
}

// ---------------------------------------------------------------------------------------------------
// Stage 3: parsing one message

/** A syntax error in a message; `message` is QEMU's description ("JSON parse error, ..."). */
export class QmpParseError extends Error {
  override readonly name = 'QmpParseError';
}

const INT64_MIN = -(1n << 63n);
const INT64_MAX = (1n << 63n) - 1n;
const UINT64_MAX = (1n << 64n) - 1n;

/**
 * Parses one message from JsonMessageStream, from the tokens its lexer found. Throws QmpParseError with
 * QEMU's description for a syntax error.
 */
export function parseMessage(message: JsonMessage): QValue {
  const p = new MessageParser(message.bytes, message.tokens);
  return p.value();
}

class MessageParser {
  /** Index of the next token's triple in `tokens`. */
  private i = 0;
  private type = 0;
  private start = 0;
  private end = 0;
  private peeked = false;

  constructor(
    private readonly b: Uint8Array,
    private readonly tokens: readonly number[],
  ) {}

  private fail(msg: string): never {
    throw new QmpParseError(`JSON parse error, ${msg}`);
  }

  /** Takes the next token into type/start/end; type 0 at the end of the message. */
  private lex(): number {
    const t = this.tokens;
    const i = this.i;
    if (i >= t.length) {
      this.type = 0;
      this.start = this.end = this.b.length;
      return 0;
    }
    this.type = t[i]!;
    this.start = t[i + 1]!;
    this.end = t[i + 2]!;
    this.i = i + 3;
    return this.type;
  }

  private peek(): number {
    if (!this.peeked) {
      this.lex();
      this.peeked = true;
    }
    return this.type;
  }

  private pop(): number {
    const t = this.peek();
    this.peeked = false;
    return t;
  }

  value(): QValue {
    const t = this.peek();
    switch (t) {
      case 0:
        return this.fail('premature EOI');
      case T_LBRACE:
        return this.object();
      case T_LBRACKET:
        return this.array();
      case T_STRING:
        this.pop();
        return this.string();
      case T_INTEGER:
      case T_FLOAT:
        this.pop();
        return this.number(t);
      case T_KEYWORD: {
        this.pop();
        const word = Buffer.from(this.b.subarray(this.start, this.end)).toString('latin1');
        if (word === 'true') return true;
        if (word === 'false') return false;
        if (word === 'null') return null;
        return this.fail(`invalid keyword '${word}'`);
      }
      default:
        return this.fail('expecting value');
    }
  }

  private object(): QDict {
    this.pop();
    const dict: QDict = new Map();
    if (this.peek() === 0) this.fail('premature EOI');
    if (this.peek() === T_RBRACE) {
      this.pop();
      return dict;
    }
    for (;;) {
      this.pair(dict);
      const t = this.pop();
      if (t === 0) this.fail('premature EOI');
      if (t === T_RBRACE) return dict;
      if (t !== T_COMMA) this.fail('expected separator in dict');
    }
  }

  private pair(dict: QDict): void {
    if (this.peek() === 0) this.fail('premature EOI');
    const key = this.value();
    if (typeof key !== 'string') this.fail('key is not a string in object');
    const t = this.pop();
    if (t === 0) this.fail('premature EOI');
    if (t !== T_COLON) this.fail('missing : in object pair');
    const v = this.value();
    if (dict.has(key)) this.fail('duplicate key');
    dict.set(key, v);
  }

  private array(): QValue[] {
    this.pop();
    const list: QValue[] = [];
    if (this.peek() === 0) this.fail('premature EOI');
    if (this.peek() === T_RBRACKET) {
      this.pop();
      return list;
    }
    for (;;) {
      list.push(this.value());
      const t = this.pop();
      if (t === 0) this.fail('premature EOI');
      if (t === T_RBRACKET) return list;
      if (t !== T_COMMA) this.fail('expected separator in list');
    }
  }

  private number(t: number): number | QNum {
    const text = Buffer.from(this.b.subarray(this.start, this.end)).toString('latin1');
    if (t === T_INTEGER) {
      const n = BigInt(text);
      if (n >= INT64_MIN && n <= INT64_MAX) {
        return n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER)
          ? Number(n)
          : new QNum('int', text);
      }
      if (n > 0n && n <= UINT64_MAX) return new QNum('uint', text);
    }
    return new QNum('double', text);
  }

  /** Decodes the string token at start..end (quotes included): escapes, then modified UTF-8. */
  private string(): string {
    const b = this.b;
    const last = this.end - 1; // the closing quote
    const out: string[] = [];
    let i = this.start + 1;
    let run = i;
    const flush = (to: number) => {
      if (to > run) out.push(Buffer.from(b.buffer, b.byteOffset + run, to - run).toString('latin1'));
    };
    while (i < last) {
      const c = b[i]!;
      if (c >= 0x20 && c < 0x80 && c !== BACKSLASH) {
        i++;
        continue;
      }
      flush(i);
      if (c === BACKSLASH) {
        const begin = i;
        const e = b[i + 1]!;
        i += 2;
        switch (e) {
          case DQUOTE:
            out.push('"');
            break;
          case SQUOTE:
            out.push("'");
            break;
          case BACKSLASH:
            out.push('\\');
            break;
          case 0x2f:
            out.push('/');
            break;
          case 0x62:
            out.push('\b');
            break;
          case 0x66:
            out.push('\f');
            break;
          case 0x6e:
            out.push('\n');
            break;
          case 0x72:
            out.push('\r');
            break;
          case 0x74:
            out.push('\t');
            break;
          case 0x75: {
            let cp = hex4(b, i, last);
            i += 4;
            if (cp >= 0xd800 && cp <= 0xdbff && b[i] === BACKSLASH && b[i + 1] === 0x75) {
              const trail = hex4(b, i + 2, last);
              if (trail >= 0xdc00 && trail <= 0xdfff) {
                cp = 0x10000 + ((cp & 0x3ff) << 10) + (trail & 0x3ff);
                i += 6;
              } else {
                cp = -1;
              }
            }
            if (cp < 0 || !isValidCodepoint(cp)) {
              const text = Buffer.from(b.subarray(begin, Math.min(i, this.end))).toString('latin1');
              this.fail(`${text} is not a valid Unicode character`);
            }
            out.push(String.fromCodePoint(cp));
            break;
          }
          default:
            this.fail('invalid escape sequence in string');
        }
      } else {
        const [cp, next] = modUtf8Codepoint(b, i, last);
        if (cp < 0) this.fail('invalid UTF-8 sequence in string');
        out.push(String.fromCodePoint(cp));
        i = next;
      }
      run = i;
    }
    flush(last);
    return out.join('');
  }
}

function hex4(b: Uint8Array, at: number, limit: number): number {
  let cp = 0;
  for (let k = 0; k < 4; k++) {
    if (at + k >= limit) return -1;
    const c = b[at + k]!;
    let d: number;
    if (c >= 0x30 && c <= 0x39) d = c - 0x30;
    else if (c >= 0x61 && c <= 0x66) d = c - 0x61 + 10;
    else if (c >= 0x41 && c <= 0x46) d = c - 0x41 + 10;
    else return -1;
    cp = (cp << 4) | d;
  }
  return cp;
}

/** QEMU's rule: Unicode scalar values that are not noncharacters. */
function isValidCodepoint(cp: number): boolean {
  if (cp > 0x10ffff) return false;
  if ((cp >= 0xfdd0 && cp <= 0xfdef) || (cp & 0xfffe) === 0xfffe) return false;
  if (cp >= 0xd800 && cp <= 0xdfff) return false;
  return true;
}

const MIN_CP = [0x80, 0x800, 0x10000, 0x200000, 0x4000000];

/** Decodes one modified-UTF-8 sequence at b[i] (before `limit`): [codepoint or -1, index after it]. */
function modUtf8Codepoint(b: Uint8Array, i: number, limit: number): [number, number] {
  const first = b[i]!;
  if (first < 0x80) return [first, i + 1];
  if (first >= 0xfe || (first & 0x40) === 0) return [-1, i + 1];
  let len = 0;
  let mask = 0x80;
  for (; first & mask; mask >>= 1) len++;
  let cp = first & (mask - 1);
  let p = i + 1;
  for (let k = 1; k < len; k++) {
    const c = p < limit ? b[p]! : 0;
    if ((c & 0xc0) !== 0x80) return [-1, p];
    p++;
    cp = cp * 64 + (c & 0x3f);
  }
  if (!isValidCodepoint(cp)) return [-1, p];
  if (cp < MIN_CP[len - 2]! && !(cp === 0 && len === 2)) return [-1, p]; // overlong, except \xC0\x80
  return [cp, p];
}

// ---------------------------------------------------------------------------------------------------
// Writing

/**
 * Encodes a value as QEMU writes JSON: `{"a": 1, "b": [2, 3]}`, ASCII only (other characters as \uXXXX).
 * Takes plain JS data (undefined members are left out, toJSON() is honoured, bigints are written as
 * integers, non-finite numbers as null) and QValues (Maps, QNum tokens as sent).
 */
export function encodeJson(value: unknown): string {
  const out: string[] = [];
  writeJson(value, out, 0);
  return out.join('');
}

const MAX_WRITE_DEPTH = 256;

function writeJson(v: unknown, out: string[], depth: number): void {
  if (depth > MAX_WRITE_DEPTH) throw new Error('value nested too deeply to encode');
  if (v === null || v === undefined) {
    out.push('null');
    return;
  }
  switch (typeof v) {
    case 'boolean':
      out.push(v ? 'true' : 'false');
      return;
    case 'number':
      out.push(Number.isFinite(v) ? String(v) : 'null');
      return;
    case 'bigint':
      out.push(v.toString());
      return;
    case 'string':
      out.push(quoteString(v));
      return;
    case 'object':
      break;
    default:
      out.push('null');
      return;
  }
  if (v instanceof QNum) {
    out.push(v.text);
    return;
  }
  if (Array.isArray(v)) {
    out.push('[');
    for (let i = 0; i < v.length; i++) {
      if (i) out.push(', ');
      writeJson(v[i], out, depth + 1);
    }
    out.push(']');
    return;
  }
  if (!(v instanceof Map) && typeof (v as { toJSON?: unknown }).toJSON === 'function') {
    writeJson((v as { toJSON: () => unknown }).toJSON(), out, depth + 1);
    return;
  }
  const entries = v instanceof Map ? [...(v as Map<string, unknown>)] : Object.entries(v as Record<string, unknown>);
  out.push('{');
  let first = true;
  for (const [k, x] of entries) {
    if (x === undefined || typeof x === 'function' || typeof x === 'symbol') continue;
    if (!first) out.push(', ');
    first = false;
    out.push(quoteString(k), ': ');
    writeJson(x, out, depth + 1);
  }
  out.push('}');
}

/** Lone surrogates and noncharacters: QEMU's parser rejects them, so they go out as U+FFFD, as QEMU's writer does. */
const NOT_SENDABLE =
  /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]|[\uFDD0-\uFDEF\uFFFE\uFFFF]|[\uD83F\uD87F\uD8BF\uD8FF\uD93F\uD97F\uD9BF\uD9FF\uDA3F\uDA7F\uDABF\uDAFF\uDB3F\uDB7F\uDBBF\uDBFF][\uDFFE\uDFFF]/g;

function quoteString(s: string): string {
  // JSON.stringify escapes quotes, backslashes and control characters; QEMU also escapes everything
  // from DEL up, so the wire stays ASCII.
  return JSON.stringify(s.replace(NOT_SENDABLE, '\uFFFD')).replace(
    /[\u007f-\uffff]/g,
    (ch) => `\\u${ch.charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')}`,
  );
}

// ---------------------------------------------------------------------------------------------------
// Requests

export interface QmpRequest {
  execute: string;
  /** The `arguments` object, if the request had one. */
  arguments: QDict | undefined;
  /** Whether the request had an `id` (any JSON value, null included), echoed in the reply. */
  hasId: boolean;
  id: QValue;
}

/** An invalid request: the error to send and the request's id (when it was an object with one). */
export class QmpRequestError extends QmpError {
  constructor(
    errorClass: QmpErrorClass,
    desc: string,
    readonly hasId: boolean,
    readonly id: QValue,
  ) {
    super(errorClass, desc);
  }
}

/** QEMU's checks on a request object, in its words. */
export function checkRequest(v: QValue): QmpRequest {
  if (!(v instanceof Map)) throw new QmpRequestError('GenericError', 'QMP input must be a JSON object', false, null);
  const hasId = v.has('id');
  const id = hasId ? v.get('id')! : null;
  const bad = (desc: string) => new QmpRequestError('GenericError', desc, hasId, id);
  for (const [key, value] of v) {
    if (key === 'execute') {
      if (typeof value !== 'string') throw bad("QMP input member 'execute' must be a string");
    } else if (key === 'arguments') {
      if (!(value instanceof Map)) throw bad("QMP input member 'arguments' must be an object");
    } else if (key !== 'id') {
      // exec-oob lands here too: out-of-band execution is not offered.
      throw bad(`QMP input member '${key}' is unexpected`);
    }
  }
  const execute = v.get('execute');
  if (typeof execute !== 'string') throw bad("QMP input lacks member 'execute'");
  return { execute, arguments: v.get('arguments') as QDict | undefined, hasId, id };
}

// ---------------------------------------------------------------------------------------------------
// Arguments

/**
 * QAPI types for command arguments. int: int64, delivered as a JS number; uint64 and size: delivered as
 * a bigint (negative int64 values wrap, as in QEMU); number: any number; any: plain JS data; enum: one of
 * the names; array: a list of the element type.
 */
export type ArgType =
  | 'str'
  | 'bool'
  | 'int'
  | 'uint64'
  | 'size'
  | 'number'
  | 'any'
  | { enum: readonly string[] }
  | { array: ArgType };

export interface ArgSpec {
  type: ArgType;
  optional?: boolean;
  /** For 'int' only: a range checked after the type ("Parameter 'x' expects a value between min and max"). */
  min?: number;
  max?: number;
}

/** A command's arguments in QAPI order (errors report the first failing member in this order). */
export type ArgsSchema = Record<string, ArgSpec>;

/**
 * Visits a command's arguments as QEMU's QObject input visitor does: members in schema order (missing,
 * then wrong type), then members the schema lacks. Returns plain JS values per ArgType.
 */
export function visitArgs(schema: ArgsSchema, args: QDict | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const given = args ?? new Map<string, QValue>();
  for (const [name, spec] of Object.entries(schema)) {
    if (!given.has(name)) {
      if (spec.optional) continue;
      throw new QmpError('GenericError', `Parameter '${name}' is missing`);
    }
    const v = visitValue(spec.type, given.get(name)!, name, name);
    if (typeof v === 'number' && (spec.min !== undefined || spec.max !== undefined)) {
      if ((spec.min !== undefined && v < spec.min) || (spec.max !== undefined && v > spec.max)) {
        throw new QmpError(
          'GenericError',
          `Parameter '${name}' expects a value between ${spec.min ?? '-inf'} and ${spec.max ?? 'inf'}`,
        );
      }
    }
    out[name] = v;
  }
  for (const key of given.keys()) {
    if (!Object.hasOwn(schema, key)) throw new QmpError('GenericError', `Parameter '${key}' is unexpected`);
  }
  return out;
}

const typeError = (fullName: string, expected: string) =>
  new QmpError('GenericError', `Invalid parameter type for '${fullName}', expected: ${expected}`);

/** `fullName` names the value in errors ("enable[0]"); `name` is null inside lists, as in QEMU. */
function visitValue(type: ArgType, v: QValue, fullName: string, name: string | null): unknown {
  if (typeof type === 'object') {
    if ('enum' in type) {
      if (typeof v !== 'string') throw typeError(fullName, 'string');
      if (!type.enum.includes(v))
        throw new QmpError('GenericError', `Parameter '${name ?? 'null'}' does not accept value '${v}'`);
      return v;
    }
    if (!Array.isArray(v)) throw typeError(fullName, 'array');
    return v.map((x, i) => visitValue(type.array, x, `${fullName}[${i}]`, null));
  }
  switch (type) {
    case 'str':
      if (typeof v !== 'string') throw typeError(fullName, 'string');
      return v;
    case 'bool':
      if (typeof v !== 'boolean') throw typeError(fullName, 'boolean');
      return v;
    case 'int':
      if (typeof v === 'number') return v;
      if (v instanceof QNum && v.kind === 'int') return v.toNumber();
      throw typeError(fullName, 'integer');
    case 'uint64':
    case 'size': {
      if (typeof v === 'number') return v < 0 ? BigInt(v) + (1n << 64n) : BigInt(v);
      if (v instanceof QNum && v.kind === 'uint') return v.bigint;
      if (v instanceof QNum && v.kind === 'int') return v.bigint < 0n ? v.bigint + (1n << 64n) : v.bigint;
      throw new QmpError('GenericError', `Parameter '${fullName}' expects uint64`);
    }
    case 'number':
      if (typeof v === 'number') return v;
      if (v instanceof QNum) return v.toNumber();
      throw typeError(fullName, 'number');
    default:
      return toJs(v);
  }
}

// ---------------------------------------------------------------------------------------------------
// Messages the server sends

export interface VersionTriple {
  major: number;
  minor: number;
  micro: number;
}

/** QEMU's VersionInfo (greeting and query-version). */
export interface VersionInfo {
  qemu: VersionTriple;
  package: string;
}

export interface QmpGreeting {
  QMP: { version: VersionInfo; capabilities: string[] };
}

export interface QmpTimestamp {
  seconds: number;
  microseconds: number;
}

export interface QmpEvent<D = Record<string, unknown>> {
  event: string;
  data?: D;
  timestamp: QmpTimestamp;
}

/** Wall-clock time in QEMU's event timestamp shape. */
export function qmpTimestamp(nowMs = performance.timeOrigin + performance.now()): QmpTimestamp {
  const us = Math.floor(nowMs * 1000);
  return { seconds: Math.floor(us / 1e6), microseconds: us % 1e6 };
}

/** One line on the wire: the message in QEMU's JSON and QEMU's CRLF. */
export function frame(message: unknown): string {
  return `${encodeJson(message)}\r\n`;
}

export function greetingMessage(version: VersionInfo, capabilities: readonly string[] = []): QmpGreeting {
  return {
    QMP: {
      version: {
        qemu: { micro: version.qemu.micro, minor: version.qemu.minor, major: version.qemu.major },
        package: version.package,
      },
      capabilities: [...capabilities],
    },
  };
}

/** `{"return": ...}` or `{"error": {...}}`, with the request's id when it had one. */
export function replyMessage(
  body: { return: unknown } | { error: { class: string; desc: string } },
  hasId: boolean,
  id: unknown,
): Record<string, unknown> {
  return hasId ? { ...body, id } : { ...body };
}

export function eventMessage(event: string, data?: unknown, now?: number): Record<string, unknown> {
  // QEMU's member order: timestamp, event, data (data left out for events without it).
  return data === undefined ? { timestamp: qmpTimestamp(now), event } : { timestamp: qmpTimestamp(now), event, data };
}
