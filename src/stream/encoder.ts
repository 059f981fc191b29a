// Writes a migration stream (docs/stream.md) as lists of pieces for writev.
//
//   const e = new StreamEncoder();
//   write(e.header());
//   write(e.start({ sectionId: 0, idstr: 'ram', instanceId: 0, versionId: 4 }, ramSetupPieces));
//   write(e.part(0, ramPagePieces));  …  write(e.end(0, pieces)); write(e.full(h, pieces));
//   write(e.eof());
//
// Payload pieces are never copied: the returned list holds them as they are (they may be views of guest
// RAM or of a device's data section), between a small header piece and a 13-byte trailer piece. The
// CRC-32C is computed over the pieces when the section is built, so the caller must keep them unchanged
// until the transport has taken the bytes (a page that changes in between goes out with a checksum that
// no longer matches, and the reader refuses the section: never wrong data, but a failed migration).
//
// Each section gets the next sequence number (0, 1, 2 … over the whole stream); call the methods in the
// order the sections are written. The encoder does no I/O.

import { be8, be32, concat, shortString } from './bytes.ts';
import {
  DEFAULT_MAX_SECTION_BYTES,
  EOF_RECORD_BYTES,
  FORMAT_SUBSECTION,
  FORMAT_VERSION,
  MACHINE_NAME,
  QEVM_MAGIC,
  QEVM_VERSION,
  RecordType,
  SECTION_TRAILER,
} from './constants.ts';
import { crc32c, crc32cCombine } from './crc32c.ts';

/** What a START or FULL section header names (QEMU's full section header). */
export interface SectionIdentity {
  /** The state entry's number: one counter over all entries (0, 1, 2 …). */
  sectionId: number;
  /** `ram`, `<pci address>/vfio` …: at most 255 bytes of UTF-8. */
  idstr: string;
  /** Tells apart entries with the same idstr (0 for the first). */
  instanceId: number;
  /** Version of the entry's payload format; a reader refuses versions above its own. */
  versionId: number;
}

export interface StreamEncoderOptions {
  /**
   * Refuse (RangeError) to build a section larger than this, header and trailer included: a reader with
   * the same limit would refuse it anyway, and the writer is the place to find out. Default
   * DEFAULT_MAX_SECTION_BYTES (16 MiB), the decoder's default; Infinity turns the check off.
   */
  maxSectionBytes?: number;
}

export class StreamEncoder {
  private seq = 0;
  private done = false;
  private readonly maxSection: number;

  constructor(options: StreamEncoderOptions = {}) {
    this.maxSection = options.maxSectionBytes ?? DEFAULT_MAX_SECTION_BYTES;
  }

  /** The sequence number the next section gets (= sections built so far). */
  get sequence(): number {
    return this.seq;
  }

  /** Magic, version, and the CONFIGURATION record naming our machine and stream format version. */
  header(): Uint8Array[] {
    return [encodeHeader()];
  }

  start(h: SectionIdentity, payload: readonly Uint8Array[]): Uint8Array[] {
    return this.section(RecordType.SECTION_START, h.sectionId, fullHeaderTail(h), payload);
  }

  /**
   * `payloadCrc`, when given, is crc32c of the payload pieces end to end, computed while they were built
   * (RamPayloadWriter): the section's checksum then joins it instead of reading the payload again.
   */
  part(sectionId: number, payload: readonly Uint8Array[], payloadCrc?: number): Uint8Array[] {
    return this.section(RecordType.SECTION_PART, sectionId, null, payload, payloadCrc);
  }

  end(sectionId: number, payload: readonly Uint8Array[]): Uint8Array[] {
    return this.section(RecordType.SECTION_END, sectionId, null, payload);
  }

  full(h: SectionIdentity, payload: readonly Uint8Array[]): Uint8Array[] {
    return this.section(RecordType.SECTION_FULL, h.sectionId, fullHeaderTail(h), payload);
  }

  /** The EOF record: 0x00, the number of sections, and a CRC-32C over both. Nothing may follow. */
  eof(): Uint8Array[] {
    this.usable();
    const rec = new Uint8Array(EOF_RECORD_BYTES);
    const dv = new DataView(rec.buffer);
    rec[0] = RecordType.EOF;
    dv.setUint32(1, this.seq, false);
    dv.setUint32(5, crc32c(rec.subarray(0, 5)), false);
    this.done = true;
    return [rec];
  }

  private usable(): void {
    if (this.done) throw new Error('StreamEncoder: the stream already ended with EOF');
  }

  private section(
    type: number,
    sectionId: number,
    tail: Uint8Array | null,
    payload: readonly Uint8Array[],
    payloadCrc?: number,
  ): Uint8Array[] {
    this.usable();
    checkU32(sectionId, 'section id');
    let length = 0;
    for (const p of payload) length += p.byteLength;
    const headLen = 1 + 4 + (tail?.byteLength ?? 0) + 4;
    const total = headLen + length + SECTION_TRAILER;
    if (length > 0xffffffff || total > this.maxSection) {
      throw new RangeError(
        `a section of ${total} bytes (id ${sectionId}) is over the ${this.maxSection}-byte limit: split its payload`,
      );
    }
    // type, section id, [u8 len, idstr, instance, version], payload length (ours)
    const head = new Uint8Array(headLen);
    const hv = new DataView(head.buffer);
    head[0] = type;
    hv.setUint32(1, sectionId, false);
    if (tail) head.set(tail, 5);
    hv.setUint32(headLen - 4, length, false);
    // footer (QEMU), sequence number and CRC-32C (ours)
    const trailer = new Uint8Array(SECTION_TRAILER);
    const tv = new DataView(trailer.buffer);
    trailer[0] = RecordType.SECTION_FOOTER;
    tv.setUint32(1, sectionId, false);
    tv.setUint32(5, this.seq, false);
    let crc = crc32c(head);
    if (payloadCrc === undefined) for (const p of payload) crc = crc32c(p, crc);
    else crc = crc32cCombine(crc, payloadCrc, length);
    crc = crc32c(trailer.subarray(0, 9), crc);
    tv.setUint32(9, crc, false);
    this.seq++;
    return [head, ...payload, trailer];
  }
}

/** The stream header as one array (fixed bytes: the decoder compares them exactly). */
export function encodeHeader(): Uint8Array {
  const name = new TextEncoder().encode(MACHINE_NAME);
  return concat([
    be32(QEVM_MAGIC),
    be32(QEVM_VERSION),
    be8(RecordType.CONFIGURATION),
    be32(name.byteLength),
    name,
    be8(RecordType.SUBSECTION),
    shortString(FORMAT_SUBSECTION),
    be32(FORMAT_VERSION),
  ]);
}

function checkU32(v: number, what: string): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new RangeError(`${what} ${v} is not a u32`);
}

function fullHeaderTail(h: SectionIdentity): Uint8Array {
  checkU32(h.instanceId, 'instance id');
  checkU32(h.versionId, 'version id');
  return concat([shortString(h.idstr), be32(h.instanceId), be32(h.versionId)]);
}
