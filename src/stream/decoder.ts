// Reads a migration stream fed in pieces of any size. A section is handed out only once it is complete
// and its footer, sequence number and CRC-32C all check out, so a corrupted, truncated, duplicated or
// reordered stream is refused before anything from the bad section is applied. Memory is bounded: a
// section larger than `maxSectionBytes` is refused from its header, before it is buffered.

import {
  DEFAULT_MAX_SECTION_BYTES,
  FORMAT_SUBSECTION,
  FORMAT_VERSION,
  MACHINE_NAME,
  QEVM_MAGIC,
  QEVM_VERSION,
  RecordType,
  SECTION_TRAILER,
} from './constants.ts';
import { crc32c } from './crc32c.ts';
import { StreamError } from './errors.ts';

export interface DecodedSection {
  type: 'start' | 'part' | 'end' | 'full';
  sectionId: number;
  /** START and FULL only */
  idstr?: string;
  instanceId?: number;
  versionId?: number;
  seq: number;
  payload: Uint8Array;
  /** Stream offset of the section's first byte. */
  offset: number;
}

const TYPES: Record<number, DecodedSection['type']> = {
  [RecordType.SECTION_START]: 'start',
  [RecordType.SECTION_PART]: 'part',
  [RecordType.SECTION_END]: 'end',
  [RecordType.SECTION_FULL]: 'full',
};

export class StreamDecoder {
  private chunks: Uint8Array[] = [];
  private buffered = 0;
  /** Stream offset of the first buffered byte. */
  private base = 0;
  private headerDone = false;
  private seq = 0;
  private readonly started = new Map<number, string>();
  private readonly ended_ = new Set<number>();
  private eof = false;
  private readonly maxSection: number;

  constructor(options: { maxSectionBytes?: number } = {}) {
    this.maxSection = options.maxSectionBytes ?? DEFAULT_MAX_SECTION_BYTES;
  }

  /** True once the EOF record was read. */
  get ended(): boolean {
    return this.eof;
  }

  /** Stream offset of the next unread byte. */
  get offset(): number {
    return this.base;
  }

  /** Bytes that followed EOF (the return path of a TCP migration), handed over once. */
  takeRemainder(): Uint8Array {
    const rest = this.take(this.buffered);
    return rest;
  }

  push(chunk: Uint8Array): DecodedSection[] {
    if (this.eof) {
      this.chunks.push(chunk);
      this.buffered += chunk.byteLength;
      return [];
    }
    if (chunk.byteLength > 0) {
      this.chunks.push(chunk);
      this.buffered += chunk.byteLength;
    }
    const out: DecodedSection[] = [];
    if (!this.headerDone && !this.readHeader()) return out;
    while (!this.eof) {
      const s = this.readSection();
      if (!s) break;
      out.push(s);
    }
    return out;
  }

  /** The input is over: anything but a complete stream ending in EOF is an error. */
  finish(): void {
    if (!this.headerDone) throw new StreamError('stream ends inside its header', this.base + this.buffered);
    if (!this.eof) {
      throw new StreamError(
        this.buffered > 0
          ? `stream ends inside a record (${this.buffered} bytes left over)`
          : 'stream ends without EOF',
        this.base + this.buffered,
        { seq: this.seq },
      );
    }
  }

  /** The first `n` buffered bytes as one array (copies only when they span chunks). */
  private peek(n: number): Uint8Array | null {
    if (this.buffered < n) return null;
    if (n === 0) return new Uint8Array(0);
    const first = this.chunks[0]!;
    if (first.byteLength >= n) return first.subarray(0, n);
    const out = new Uint8Array(n);
    let at = 0;
    for (const c of this.chunks) {
      const take = Math.min(c.byteLength, n - at);
      out.set(c.subarray(0, take), at);
      at += take;
      if (at === n) break;
    }
    return out;
  }

  private take(n: number): Uint8Array {
    const out = this.peek(n)!;
    let left = n;
    while (left > 0) {
      const c = this.chunks[0]!;
      if (c.byteLength <= left) {
        this.chunks.shift();
        left -= c.byteLength;
      } else {
        this.chunks[0] = c.subarray(left);
        left = 0;
      }
    }
    this.buffered -= n;
    this.base += n;
    // The bytes may be a view of a pushed chunk: callers hand over chunks they will not reuse.
    return out;
  }

  private readHeader(): boolean {
    // magic(4) version(4) CONFIGURATION(1) len(4) name, SUBSECTION(1) namelen(1) name version(4)
    const h = this.peek(13);
    if (!h) return false;
    const dv = new DataView(h.buffer, h.byteOffset, 13);
    if (dv.getUint32(0, false) !== QEVM_MAGIC) throw new StreamError('not a migration stream (bad magic)', 0);
    if (dv.getUint32(4, false) !== QEVM_VERSION)
      throw new StreamError(`unsupported stream version ${dv.getUint32(4, false)}`, 4);
    if (h[8] !== RecordType.CONFIGURATION)
      throw new StreamError('no configuration record: not a vfio-migrate stream', 8);
    const nameLen = dv.getUint32(9, false);
    if (nameLen > 255) throw new StreamError(`machine name of ${nameLen} bytes`, 9);
    const head2 = this.peek(13 + nameLen + 2);
    if (!head2) return false;
    const machine = new TextDecoder().decode(head2.subarray(13, 13 + nameLen));
    if (machine !== MACHINE_NAME) throw new StreamError(`stream is for machine "${machine}", not ${MACHINE_NAME}`, 13);
    if (head2[13 + nameLen] !== RecordType.SUBSECTION)
      throw new StreamError('configuration lacks the format subsection', 13 + nameLen);
    const subLen = head2[13 + nameLen + 1]!;
    const total = 13 + nameLen + 2 + subLen + 4;
    const all = this.peek(total);
    if (!all) return false;
    const sub = new TextDecoder().decode(all.subarray(13 + nameLen + 2, 13 + nameLen + 2 + subLen));
    const version = new DataView(all.buffer, all.byteOffset + total - 4, 4).getUint32(0, false);
    if (sub !== FORMAT_SUBSECTION || version !== FORMAT_VERSION) {
      throw new StreamError(
        `unsupported stream format "${sub}" version ${version} (this reads ${FORMAT_SUBSECTION} ${FORMAT_VERSION})`,
        13 + nameLen,
      );
    }
    this.take(total);
    this.headerDone = true;
    return true;
  }

  private readSection(): DecodedSection | null {
    const t = this.peek(1);
    if (!t) return null;
    const type = t[0]!;
    const offset = this.base;
    if (type === RecordType.EOF) {
      for (const [id, idstr] of this.started) {
        if (!this.ended_.has(id)) throw new StreamError('EOF before the END section', offset, { idstr, sectionId: id });
      }
      this.take(1);
      this.eof = true;
      return null;
    }
    const kind = TYPES[type];
    if (!kind) throw new StreamError(`unexpected record type 0x${type.toString(16)}`, offset, { seq: this.seq });
    const full = kind === 'start' || kind === 'full';
    // Fixed part: type(1) id(4) [len(1) idstr instance(4) version(4)] payloadLength(4)
    let headLen = 1 + 4 + 4;
    if (full) {
      const p = this.peek(6);
      if (!p) return null;
      headLen = 1 + 4 + 1 + p[5]! + 4 + 4 + 4;
    }
    const head = this.peek(headLen);
    if (!head) return null;
    const dv = new DataView(head.buffer, head.byteOffset, headLen);
    const sectionId = dv.getUint32(1, false);
    let idstr: string | undefined;
    let instanceId: number | undefined;
    let versionId: number | undefined;
    if (full) {
      const n = head[5]!;
      idstr = new TextDecoder().decode(head.subarray(6, 6 + n));
      instanceId = dv.getUint32(6 + n, false);
      versionId = dv.getUint32(10 + n, false);
    }
    const ref = { idstr: idstr ?? this.started.get(sectionId), sectionId, seq: this.seq };
    const payloadLen = dv.getUint32(headLen - 4, false);
    const total = headLen + payloadLen + SECTION_TRAILER;
    if (total > this.maxSection) {
      throw new StreamError(`section of ${total} bytes exceeds the ${this.maxSection}-byte limit`, offset, ref);
    }
    if (this.buffered < total) return null;
    const bytes = this.take(total);
    const tdv = new DataView(bytes.buffer, bytes.byteOffset + headLen + payloadLen, SECTION_TRAILER);
    const crc = crc32c(bytes.subarray(0, total - 4));
    if (tdv.getUint32(9, false) !== crc)
      throw new StreamError('checksum mismatch: the section is corrupt', offset, ref);
    if (tdv.getUint8(0) !== RecordType.SECTION_FOOTER || tdv.getUint32(1, false) !== sectionId) {
      throw new StreamError('footer does not match the section', offset, ref);
    }
    const seq = tdv.getUint32(5, false);
    if (seq !== this.seq) {
      throw new StreamError(
        `sequence number ${seq} where ${this.seq} was due: a section was lost, repeated or reordered`,
        offset,
        ref,
      );
    }
    this.seq++;
    if (kind === 'start') {
      if (this.started.has(sectionId)) throw new StreamError('section started twice', offset, ref);
      this.started.set(sectionId, idstr!);
    } else if (kind === 'part' || kind === 'end') {
      if (!this.started.has(sectionId))
        throw new StreamError(`${kind.toUpperCase()} for a section never started`, offset, ref);
      if (this.ended_.has(sectionId))
        throw new StreamError(`${kind.toUpperCase()} after the section's END`, offset, ref);
      if (kind === 'end') this.ended_.add(sectionId);
    }
    return {
      type: kind,
      sectionId,
      idstr: idstr ?? ref.idstr,
      instanceId,
      versionId,
      seq,
      payload: bytes.subarray(headLen, headLen + payloadLen),
      offset,
    };
  }
}
