// Reads a migration stream (docs/stream.md) fed in pieces of any size.
//
//   const d = new StreamDecoder();
//   for await (const chunk of input) for (const s of d.push(chunk)) apply(s);
//   d.finish(); // throws unless the stream ended with its EOF record
//
// Or as a reader's sink (reusePayloadBuffers), the way QEMU's QEMUFile reads into its own buffer: the
// decoder names where the next bytes should land (readTarget: the rest of a large section, straight into
// the buffer it is gathered in, else a small spare buffer for headers and small sections) and is told how
// many did (received). Both entry points share one parser.
//
// A section is handed out only once it is complete and its CRC-32C, footer and sequence number all check
// out, and it may come at that point of the stream (PART after its START, no START twice …). So a
// corrupted, truncated, duplicated, dropped or reordered section is refused before anything from it is
// applied. Every error is a StreamError naming the section (idstr, section id, sequence number) and the
// byte offset; after one, the decoder stays failed and throws it again.
//
// Memory is bounded: a section larger than `maxSectionBytes` (default 16 MiB) is refused as soon as its
// header is in, before its payload is buffered. Writers split their payloads to stay under it (RAM: at
// most 4 MiB of pages per PART).
//
// Pushed chunks are kept by reference until their bytes are consumed, and a delivered payload may be a
// view into one of them: hand over chunks you will not reuse (socket and file reads are).

import { ByteQueue } from '../byte-queue.ts';
import {
  DEFAULT_MAX_SECTION_BYTES,
  EOF_RECORD_BYTES,
  FORMAT_SUBSECTION,
  FORMAT_VERSION,
  MACHINE_NAME,
  QEVM_VERSION,
  RecordType,
  SECTION_TRAILER,
  SHORT_HEADER_BYTES,
} from './constants.ts';
import { crc32c } from './crc32c.ts';
import { encodeHeader } from './encoder.ts';
import { type SectionRef, StreamError } from './errors.ts';

export type SectionType = 'start' | 'part' | 'end' | 'full';

export interface DecodedSection {
  type: SectionType;
  sectionId: number;
  /** From the section's own header (START, FULL) or from its START (PART, END). */
  idstr: string;
  instanceId: number;
  versionId: number;
  /** Sequence number: 0 for the first section of the stream, then 1, 2 … */
  seq: number;
  /** The section's payload, whole. */
  payload: Uint8Array;
  /** Stream offset of the section's type byte. */
  offset: number;
  /** Stream offset of the payload's first byte. */
  payloadOffset: number;
  /** Bytes of the whole section: header, payload, footer, sequence number and CRC. */
  byteLength: number;
}

export interface StreamDecoderOptions {
  /** Largest section accepted, header and trailer included (default DEFAULT_MAX_SECTION_BYTES, 16 MiB). */
  maxSectionBytes?: number;
  /**
   * The caller is done with every section a push() returned before it calls push() again (it applies or
   * copies the payloads at once). The decoder then gathers a large section that spans several chunks
   * into one of two buffers it reuses, copying each chunk's part in as the chunk arrives (while it is
   * still in the cache), instead of allocating a fresh buffer per section when the section is complete:
   * fresh memory costs a page fault per 4 KiB on its first touch, which made that copy a third of a
   * loader's time. Default false: every payload stays valid for as long as the caller keeps it.
   */
  reusePayloadBuffers?: boolean;
  /**
   * Makes the gather buffers (reusePayloadBuffers), zeroed, of the given size; default a plain
   * Uint8Array. A caller with memory that faults in more cheaply passes it here (the migration loader:
   * src/native/huge-buffer.ts).
   */
  allocate?: (bytes: number) => Uint8Array;
}

/** A large section arriving into its gather buffer: `len` of its `total` bytes so far, `crcLen` of them checksummed. */
interface Gathering {
  buf: Uint8Array;
  len: number;
  total: number;
  crc: number;
  crcLen: number;
}

/** Sections at least this large are gathered in reused buffers (reusePayloadBuffers). */
const GATHER_MIN_BYTES = 64 << 10;
/**
 * The sink's buffer for headers and small sections. Small, so that the head of a large section read into
 * it (and then copied to its gather buffer) is a small part of the section.
 */
const SPARE_BYTES = 64 << 10;

const TYPES: Record<number, SectionType> = {
  [RecordType.SECTION_START]: 'start',
  [RecordType.SECTION_PART]: 'part',
  [RecordType.SECTION_END]: 'end',
  [RecordType.SECTION_FULL]: 'full',
};

const QEMU_ONLY: Record<number, string> = {
  [RecordType.SUBSECTION]: 'SUBSECTION',
  [RecordType.VMDESCRIPTION]: 'VMDESCRIPTION',
  [RecordType.CONFIGURATION]: 'CONFIGURATION',
  [RecordType.COMMAND]: 'COMMAND',
  [RecordType.SECTION_FOOTER]: 'SECTION_FOOTER',
};

const HEADER = encodeHeader();
const MACHINE_BYTES = new TextEncoder().encode(MACHINE_NAME).byteLength;
/** Offsets inside the header: machine-name length, subsection type byte, its name length, its version. */
const AT_NAME_LEN = 9;
const AT_SUB_TYPE = AT_NAME_LEN + 4 + MACHINE_BYTES;
const AT_SUB_NAME_LEN = AT_SUB_TYPE + 1;
const AT_SUB_VERSION = HEADER.byteLength - 4;

interface SectionState {
  idstr: string;
  instanceId: number;
  versionId: number;
  started: boolean;
  ended: boolean;
  full: boolean;
}

const utf8 = new TextDecoder();

export class StreamDecoder {
  /** Pushed bytes not yet consumed. */
  private readonly q = new ByteQueue();
  /** Stream offset of the first buffered byte. */
  private base = 0;
  private headerDone = false;
  private seq = 0;
  private readonly sections = new Map<number, SectionState>();
  /** "idstr\0instance" → section id: one section per state entry. */
  private readonly entries = new Map<string, number>();
  private fullSeen = false;
  private eof = false;
  private failed: StreamError | null = null;
  private readonly maxSection: number;
  private readonly reuse: boolean;
  private readonly allocate: (bytes: number) => Uint8Array;
  /**
   * reusePayloadBuffers: the two gather buffers (used in turn, so the one holding the section handed
   * out last is never written while its payload may still be in use), and the section being gathered:
   * it is then the only buffered chunk, a view of gather[next] that grows to `total` bytes.
   */
  private readonly gather: Uint8Array[] = [];
  private gatherNext = 0;
  private gathering: Gathering | null = null;
  /**
   * The CRC-32C of the section gathered last, computed piece by piece as its bytes arrived (each piece
   * read again while the kernel's copy of it is still in the cache, not the whole section afterwards);
   * readRecord uses it for that section and drops it.
   */
  private gatheredCrc: { at: Uint8Array; crc: number } | null = null;
  /** The sink's spare buffer, and which buffer the last readTarget() named. */
  private spare: Uint8Array | null = null;
  private target: 'gather' | 'spare' | null = null;

  constructor(options: StreamDecoderOptions = {}) {
    this.maxSection = options.maxSectionBytes ?? DEFAULT_MAX_SECTION_BYTES;
    this.reuse = options.reusePayloadBuffers ?? false;
    this.allocate = options.allocate ?? ((bytes) => new Uint8Array(bytes));
  }

  /** True once the header was read and matched this format. */
  get headerRead(): boolean {
    return this.headerDone;
  }

  /** True once the EOF record was read and verified. */
  get ended(): boolean {
    return this.eof;
  }

  /** Stream offset of the next unread byte. */
  get offset(): number {
    return this.base;
  }

  /** Sections delivered so far (= the sequence number due next). */
  get sectionCount(): number {
    return this.seq;
  }

  /** Bytes pushed but not yet consumed (a partial record, or what followed EOF). */
  get pendingBytes(): number {
    return this.q.length;
  }

  /** Bytes that followed EOF (a return-path message on a TCP connection), handed over once. */
  takeRemainder(): Uint8Array {
    return this.take(this.q.length);
  }

  /**
   * Feeds bytes; returns the sections they completed, each verified. Throws a StreamError on damage —
   * or, when this call verified sections before reaching the damage, returns those and throws the error
   * from the next push() or finish().
   */
  push(chunk: Uint8Array): DecodedSection[] {
    if (this.failed) throw this.failed;
    const g = this.gathering;
    if (g && chunk.byteLength > 0) {
      // The section being gathered takes what it lacks from the front of the chunk.
      const k = Math.min(chunk.byteLength, g.total - g.len);
      g.buf.set(k === chunk.byteLength ? chunk : chunk.subarray(0, k), g.len);
      this.gathered(k);
      chunk = chunk.subarray(k);
    }
    this.q.push(chunk);
    return this.parse();
  }

  /**
   * Sink: the buffer the next read should fill (any prefix of it). The rest of the section being
   * gathered when there is one, else the spare buffer. Needs reusePayloadBuffers: the caller is done with
   * the sections of the last received() before it asks again.
   */
  readTarget(): Uint8Array {
    if (!this.reuse) throw new Error('StreamDecoder.readTarget needs reusePayloadBuffers');
    const g = this.gathering;
    // A failed decoder still names a buffer (a reader asks before its consumer heard of the failure);
    // the next received() throws the error.
    if (g && !this.failed) {
      this.target = 'gather';
      return g.buf.subarray(g.len, g.total);
    }
    this.target = 'spare';
    this.spare ??= new Uint8Array(SPARE_BYTES);
    return this.spare;
  }

  /** Sink: `n` bytes were read into the start of the last readTarget(). Returns what push() would. */
  received(n: number): DecodedSection[] {
    if (this.failed) throw this.failed;
    const target = this.target;
    this.target = null;
    if (target === null) throw new Error('StreamDecoder.received without a readTarget');
    if (target === 'gather') this.gathered(n);
    else this.q.push(this.spare!.subarray(0, n));
    const out = this.parse();
    // The spare is read into again next time: what is left of it (part of a small record, or bytes after
    // EOF) is moved out. A large section's head was already moved to its gather buffer.
    if (target === 'spare' && !this.gathering && this.q.length > 0) {
      const rest = new Uint8Array(this.q.length);
      this.q.copyTo(rest);
      this.q.clear();
      this.q.push(rest);
    }
    return out;
  }

  /** `k` more bytes of the section being gathered are in its buffer: it is the one buffered chunk, grown. */
  private gathered(k: number): void {
    const g = this.gathering!;
    g.len += k;
    this.checksumGathered(g);
    this.q.clear();
    this.q.push(g.buf.subarray(0, g.len));
    if (g.len === g.total) {
      this.gathering = null;
      this.gatheredCrc = { at: g.buf, crc: g.crc };
    }
  }

  /** Extends the gathered section's CRC over its bytes that arrived since (all but the stored CRC). */
  private checksumGathered(g: Gathering): void {
    const end = Math.min(g.len, g.total - 4);
    if (end <= g.crcLen) return;
    g.crc = crc32c(g.buf.subarray(g.crcLen, end), g.crc);
    g.crcLen = end;
  }

  /** Reads every record the buffered bytes complete. */
  private parse(): DecodedSection[] {
    const out: DecodedSection[] = [];
    try {
      if (!this.headerDone && !this.readHeader()) return out;
      while (!this.eof) {
        const s = this.readRecord();
        if (!s) break;
        out.push(s);
      }
    } catch (err) {
      if (!(err instanceof StreamError)) throw err;
      this.failed = err;
      // Sections verified before the damage are still handed out; the next call throws.
      if (out.length === 0) throw err;
    }
    return out;
  }

  /** The input is over: anything but a complete stream ending in its EOF record is an error. */
  finish(): void {
    if (this.failed) throw this.failed;
    const buffered = this.q.length;
    const at = this.base + buffered;
    if (!this.headerDone) {
      this.failed = new StreamError(
        buffered === 0 ? 'empty stream' : `stream ends inside its header (${at} bytes)`,
        at,
        undefined,
        'truncated',
      );
    } else if (!this.eof) {
      this.failed = new StreamError(
        buffered > 0
          ? `stream ends inside a record that starts at byte ${this.base} (${buffered} bytes of it)`
          : 'stream ends without its EOF record',
        at,
        this.pendingRef(),
        'truncated',
      );
    }
    if (this.failed) throw this.failed;
  }

  /** What the record at the read position claims to be, for an error about it. */
  private pendingRef(): SectionRef {
    const ref: SectionRef = { seq: this.seq };
    const p = this.peek(Math.min(this.q.length, 6));
    if (p && p.byteLength >= 5 && TYPES[p[0]!]) {
      ref.sectionId = new DataView(p.buffer, p.byteOffset, 5).getUint32(1, false);
      const known = this.sections.get(ref.sectionId);
      if (known) ref.idstr = known.idstr;
    }
    return ref;
  }

  /** The first `n` buffered bytes as one array (copies only when they span chunks), or null. */
  private peek(n: number): Uint8Array | null {
    return this.q.peek(n);
  }

  /** Moves the buffered start of a `total`-byte section into a gather buffer, which then takes the rest. */
  private startGathering(total: number): void {
    const i = this.gatherNext;
    this.gatherNext ^= 1;
    let buf = this.gather[i];
    if (!buf || buf.byteLength < total) {
      buf = this.allocate(total);
      this.gather[i] = buf;
    }
    const len = this.q.length;
    this.q.copyTo(buf);
    this.q.clear();
    this.q.push(buf.subarray(0, len));
    this.gathering = { buf, len, total, crc: 0, crcLen: 0 };
    this.checksumGathered(this.gathering);
  }

  /** Consumes `n` buffered bytes and returns them (a view of a pushed chunk when they lie in one). */
  private take(n: number): Uint8Array {
    const out = this.q.take(n)!;
    this.base += n;
    return out;
  }

  private fail(message: string, offset: number, code: StreamError['code'], section?: SectionRef): never {
    throw new StreamError(message, offset, section, code);
  }

  /** Magic, version, configuration record and format subsection: fixed bytes, compared as they arrive. */
  private readHeader(): boolean {
    const have = this.peek(Math.min(this.q.length, HEADER.byteLength))!;
    let i = 0;
    while (i < have.byteLength && have[i] === HEADER[i]) i++;
    if (i === HEADER.byteLength) {
      this.take(HEADER.byteLength);
      this.headerDone = true;
      return true;
    }
    if (i === have.byteLength) return false;
    return this.headerMismatch(i);
  }

  /** Says what differs at header byte `i`; false if more bytes are needed to say it. */
  private headerMismatch(i: number): false {
    const need = (n: number): Uint8Array | null => this.peek(n);
    const be32At = (b: Uint8Array, at: number) => new DataView(b.buffer, b.byteOffset + at, 4).getUint32(0, false);
    if (i < 4) this.fail('not a migration stream (no "QEVM" magic)', 0, 'header');
    if (i < 8) {
      const b = need(8);
      if (!b) return false;
      const v = be32At(b, 4);
      this.fail(`stream file version ${v}; this reader reads version ${QEVM_VERSION}`, 4, 'header');
    }
    if (i === 8) {
      const b = this.peek(9)!;
      this.fail(
        `record 0x${b[8]!.toString(16)} where the CONFIGURATION record belongs: not a vfio-migrate stream`,
        8,
        'header',
      );
    }
    if (i < AT_SUB_TYPE) {
      const b = need(AT_NAME_LEN + 4);
      if (!b) return false;
      const len = be32At(b, AT_NAME_LEN);
      if (len > 255) this.fail(`machine name of ${len} bytes in the configuration record`, AT_NAME_LEN, 'header');
      const all = need(AT_NAME_LEN + 4 + len);
      if (!all) return false;
      const name = utf8.decode(all.subarray(AT_NAME_LEN + 4));
      this.fail(
        `stream is for machine type "${name}", not "${MACHINE_NAME}" (a QEMU stream?)`,
        AT_NAME_LEN + 4,
        'header',
      );
    }
    if (i === AT_SUB_TYPE)
      this.fail(`the configuration record lacks the "${FORMAT_SUBSECTION}" subsection`, AT_SUB_TYPE, 'header');
    if (i < AT_SUB_VERSION) {
      const b = need(AT_SUB_NAME_LEN + 1);
      if (!b) return false;
      const len = b[AT_SUB_NAME_LEN]!;
      const all = need(AT_SUB_NAME_LEN + 1 + len);
      if (!all) return false;
      const name = utf8.decode(all.subarray(AT_SUB_NAME_LEN + 1));
      this.fail(`configuration subsection "${name}" where "${FORMAT_SUBSECTION}" belongs`, AT_SUB_NAME_LEN, 'header');
    }
    const b = need(HEADER.byteLength);
    if (!b) return false;
    const v = be32At(b, AT_SUB_VERSION);
    this.fail(
      `stream format version ${v}; this reader reads version ${FORMAT_VERSION}${v < FORMAT_VERSION ? ' (written by an older vfio-migrate)' : ''}`,
      AT_SUB_VERSION,
      'header',
    );
  }

  private readRecord(): DecodedSection | null {
    const t = this.peek(1);
    if (!t) return null;
    const type = t[0]!;
    const offset = this.base;
    if (type === RecordType.EOF) {
      this.readEof();
      return null;
    }
    const kind = TYPES[type];
    if (!kind) {
      const qemu = QEMU_ONLY[type];
      this.fail(
        qemu
          ? `QEMU record ${qemu} (0x${type.toString(16)}) where a section belongs: this format has none`
          : `unknown record type 0x${type.toString(16)}`,
        offset,
        'record-type',
        { seq: this.seq },
      );
    }
    const full = kind === 'start' || kind === 'full';
    // type(1) id(4) [len(1) idstr instance(4) version(4)] payload_length(4)
    let headLen = SHORT_HEADER_BYTES;
    if (full) {
      const p = this.peek(6);
      if (!p) return null;
      headLen = 1 + 4 + 1 + p[5]! + 4 + 4 + 4;
    }
    const head = this.peek(headLen);
    if (!head) return null;
    const dv = new DataView(head.buffer, head.byteOffset, headLen);
    const sectionId = dv.getUint32(1, false);
    const known = this.sections.get(sectionId);
    let idstr = known?.idstr;
    let instanceId = known?.instanceId ?? 0;
    let versionId = known?.versionId ?? 0;
    if (full) {
      const n = head[5]!;
      idstr = utf8.decode(head.subarray(6, 6 + n));
      instanceId = dv.getUint32(6 + n, false);
      versionId = dv.getUint32(10 + n, false);
    }
    const ref: SectionRef = { idstr, sectionId, seq: this.seq };
    const payloadLen = dv.getUint32(headLen - 4, false);
    const total = headLen + payloadLen + SECTION_TRAILER;
    if (total > this.maxSection) {
      this.fail(
        `${kind.toUpperCase()} section of ${total} bytes is over the ${this.maxSection}-byte limit`,
        offset,
        'too-large',
        ref,
      );
    }
    if (this.q.length < total) {
      if (this.reuse && total >= GATHER_MIN_BYTES && !this.gathering) this.startGathering(total);
      return null;
    }

    const bytes = this.take(total);
    const tv = new DataView(bytes.buffer, bytes.byteOffset + headLen + payloadLen, SECTION_TRAILER);
    const gathered = this.gatheredCrc;
    this.gatheredCrc = null;
    const crc =
      gathered && gathered.at.buffer === bytes.buffer && gathered.at.byteOffset === bytes.byteOffset
        ? gathered.crc
        : crc32c(bytes.subarray(0, total - 4));
    const stored = tv.getUint32(9, false);
    if (stored !== crc) {
      this.fail(
        `checksum mismatch (CRC-32C 0x${hex32(crc)}, the section says 0x${hex32(stored)}): the ${kind.toUpperCase()} section of ${total} bytes is corrupt`,
        offset,
        'checksum',
        ref,
      );
    }
    const footerAt = offset + headLen + payloadLen;
    if (tv.getUint8(0) !== RecordType.SECTION_FOOTER)
      this.fail(`no section footer (0x7E) after the payload`, footerAt, 'footer', ref);
    const footerId = tv.getUint32(1, false);
    if (footerId !== sectionId)
      this.fail(`footer names section id ${footerId}, the header ${sectionId}`, footerAt, 'footer', ref);
    const seq = tv.getUint32(5, false);
    if (seq !== this.seq) {
      ref.seq = seq;
      this.fail(
        seq > this.seq
          ? `sequence number ${seq} where ${this.seq} was due: ${seq - this.seq} section(s) before it are missing`
          : `sequence number ${seq} where ${this.seq} was due: a section repeated or out of order`,
        offset,
        'sequence',
        ref,
      );
    }
    this.checkOrder(kind, sectionId, idstr, instanceId, versionId, offset, ref);
    this.seq++;
    return {
      type: kind,
      sectionId,
      idstr: idstr!,
      instanceId,
      versionId,
      seq,
      payload: bytes.subarray(headLen, headLen + payloadLen),
      offset,
      payloadOffset: offset + headLen,
      byteLength: total,
    };
  }

  /** QEMU's order: START before its PARTs and END; FULLs after every END; one section per entry. */
  private checkOrder(
    kind: SectionType,
    sectionId: number,
    idstr: string | undefined,
    instanceId: number,
    versionId: number,
    offset: number,
    ref: SectionRef,
  ): void {
    const s = this.sections.get(sectionId);
    const K = kind.toUpperCase();
    const bad = (msg: string): never => this.fail(msg, offset, 'order', ref);
    if (kind === 'part' || kind === 'end') {
      if (!s?.started) bad(`${K} for section id ${sectionId}, which no START opened`);
      if (s!.ended) bad(`${K} after the section's END`);
      if (this.fullSeen) bad(`${K} after the FULL sections began`);
      if (kind === 'end') s!.ended = true;
      return;
    }
    const key = `${idstr}\u0000${instanceId}`;
    const other = this.entries.get(key);
    if (other !== undefined && other !== sectionId)
      bad(`"${idstr}" instance ${instanceId} already has section id ${other}`);
    if (kind === 'start') {
      if (s?.started) bad(`START for section id ${sectionId}, which was already started`);
      if (s?.full) bad(`START for section id ${sectionId}, which already had its FULL`);
      if (this.fullSeen) bad('START after the FULL sections began');
      this.sections.set(sectionId, { idstr: idstr!, instanceId, versionId, started: true, ended: false, full: false });
      this.entries.set(key, sectionId);
      return;
    }
    // FULL
    if (s) {
      if (s.full) bad(`a second FULL for section id ${sectionId}`);
      if (s.started && !s.ended) bad(`FULL for section id ${sectionId} before its END`);
      if (s.idstr !== idstr || s.instanceId !== instanceId)
        bad(`FULL names "${idstr}" instance ${instanceId}, its START "${s.idstr}" instance ${s.instanceId}`);
      s.full = true;
    } else {
      this.sections.set(sectionId, { idstr: idstr!, instanceId, versionId, started: false, ended: false, full: true });
      this.entries.set(key, sectionId);
    }
    this.fullSeen = true;
  }

  /** 0x00, be32 number of sections, be32 CRC-32C over both. */
  private readEof(): void {
    const offset = this.base;
    const rec = this.peek(EOF_RECORD_BYTES);
    if (!rec) return;
    const dv = new DataView(rec.buffer, rec.byteOffset, EOF_RECORD_BYTES);
    const count = dv.getUint32(1, false);
    const crc = crc32c(rec.subarray(0, 5));
    const stored = dv.getUint32(5, false);
    if (crc !== stored) {
      this.fail(
        `checksum mismatch in what reads as the EOF record (CRC-32C 0x${hex32(crc)}, it says 0x${hex32(stored)})`,
        offset,
        'checksum',
        { seq: this.seq },
      );
    }
    if (count !== this.seq) {
      this.fail(
        `the EOF record counts ${count} sections, ${this.seq} were read: ${count > this.seq ? 'some are missing' : 'some are extra'}`,
        offset,
        'sequence',
        { seq: this.seq },
      );
    }
    for (const [id, s] of this.sections) {
      if (s.started && !s.ended)
        this.fail('EOF before the END section', offset, 'order', { idstr: s.idstr, sectionId: id, seq: this.seq });
    }
    this.take(EOF_RECORD_BYTES);
    this.eof = true;
  }
}

function hex32(v: number): string {
  return v.toString(16).padStart(8, '0');
}
