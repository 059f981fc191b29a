// Writes a migration stream as lists of pieces for writev. Payload pieces are never copied (they may be
// views of caller memory); the caller keeps them unchanged until the transport took them. Every section
// ends with QEMU's footer, then our sequence number and a CRC-32C over the whole section.

import { be8, be32, concat, shortString } from './bytes.ts';
import { FORMAT_SUBSECTION, FORMAT_VERSION, MACHINE_NAME, QEVM_MAGIC, QEVM_VERSION, RecordType } from './constants.ts';
import { crc32c } from './crc32c.ts';

export interface SectionIdentity {
  sectionId: number;
  idstr: string;
  instanceId: number;
  versionId: number;
}

export class StreamEncoder {
  private seq = 0;

  /** Magic, version, and a CONFIGURATION record naming our machine and stream format. */
  header(): Uint8Array[] {
    const name = new TextEncoder().encode(MACHINE_NAME);
    return [
      concat([
        be32(QEVM_MAGIC),
        be32(QEVM_VERSION),
        be8(RecordType.CONFIGURATION),
        be32(name.byteLength),
        name,
        be8(RecordType.SUBSECTION),
        shortString(FORMAT_SUBSECTION),
        be32(FORMAT_VERSION),
      ]),
    ];
  }

  start(h: SectionIdentity, payload: readonly Uint8Array[]): Uint8Array[] {
    return this.section(RecordType.SECTION_START, h.sectionId, fullHeaderTail(h), payload);
  }

  part(sectionId: number, payload: readonly Uint8Array[]): Uint8Array[] {
    return this.section(RecordType.SECTION_PART, sectionId, new Uint8Array(0), payload);
  }

  end(sectionId: number, payload: readonly Uint8Array[]): Uint8Array[] {
    return this.section(RecordType.SECTION_END, sectionId, new Uint8Array(0), payload);
  }

  full(h: SectionIdentity, payload: readonly Uint8Array[]): Uint8Array[] {
    return this.section(RecordType.SECTION_FULL, h.sectionId, fullHeaderTail(h), payload);
  }

  eof(): Uint8Array[] {
    return [be8(RecordType.EOF)];
  }

  private section(type: number, sectionId: number, tail: Uint8Array, payload: readonly Uint8Array[]): Uint8Array[] {
    // type, section id, [idstr, instance, version], payload length (ours: lets a reader bound memory
    // before buffering), payload, footer, sequence number, CRC-32C.
    let length = 0;
    for (const p of payload) length += p.byteLength;
    const head = concat([be8(type), be32(sectionId), tail, be32(length)]);
    const trailer = new Uint8Array(13);
    const dv = new DataView(trailer.buffer);
    trailer[0] = RecordType.SECTION_FOOTER;
    dv.setUint32(1, sectionId, false);
    dv.setUint32(5, this.seq++, false);
    let crc = crc32c(head);
    for (const p of payload) crc = crc32c(p, crc);
    crc = crc32c(trailer.subarray(0, 9), crc);
    dv.setUint32(9, crc, false);
    return [head, ...payload, trailer];
  }
}

function fullHeaderTail(h: SectionIdentity): Uint8Array {
  return concat([shortString(h.idstr), be32(h.instanceId), be32(h.versionId)]);
}
