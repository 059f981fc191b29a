// Walks a migration stream (e.g. a file written by `migrate file:PATH`) and summarizes it: the header,
// every section (type, id, idstr, payload bytes, its RAM or VFIO records), totals per state entry and for
// the whole stream, and the first error with its location. It reads through StreamDecoder, so it checks
// exactly what a destination checks; RAM and VFIO payloads are decoded too (RAM sections are those with
// idstr `ram`, VFIO ones `<device>/vfio`), with the RAM blocks taken from the stream's own MEM_SIZE record.
//
//   const a = new StreamAnalyzer();
//   for await (const chunk of fileStream) a.push(chunk);
//   const report = a.finish();
//
// Memory: one section at a time (the decoder's bound) plus a small summary per section.

import {
  EOF_RECORD_BYTES,
  FORMAT_SUBSECTION,
  FORMAT_VERSION,
  MACHINE_NAME,
  QEVM_MAGIC,
  QEVM_VERSION,
  TARGET_PAGE_SIZE,
} from './constants.ts';
import { type DecodedSection, type SectionType, StreamDecoder } from './decoder.ts';
import { encodeHeader } from './encoder.ts';
import { type SectionRef, StreamError, type StreamErrorCode } from './errors.ts';
import { decodeRamPayload } from './ram.ts';
import { decodeVfioPayload, type VfioRecord } from './vfio.ts';

export interface RamSummary {
  /** PAGE records and the bytes of their contents. */
  pages: number;
  pageBytes: number;
  /** ZERO records (pages sent as a fill byte). */
  zeroPages: number;
  /** The MEM_SIZE record (START): total RAM and each block's used length. */
  memSize?: { total: number; blocks: { name: string; usedLength: number }[] };
  /** Blocks named or continued by page records. */
  blocks: string[];
}

export interface VfioSummary {
  /** Tags in order (DEV_DATA_STATE blocks of a run counted once, with ×n). */
  tags: string[];
  dataChunks: number;
  dataBytes: number;
  /** Bytes of the DEV_CONFIG_STATE blob, if the payload had one. */
  configBytes?: number;
}

export interface SectionSummary {
  seq: number;
  type: SectionType;
  sectionId: number;
  idstr: string;
  instanceId: number;
  versionId: number;
  /** Stream offset of the section's type byte, and its size with header and trailer. */
  offset: number;
  byteLength: number;
  payloadBytes: number;
  /** How the payload was read: by idstr. */
  payloadKind: 'ram' | 'vfio' | 'opaque';
  ram?: RamSummary;
  vfio?: VfioSummary;
}

/** Totals for one state entry (one section id) over all its sections. */
export interface EntrySummary {
  sectionId: number;
  idstr: string;
  instanceId: number;
  versionId: number;
  payloadKind: SectionSummary['payloadKind'];
  sections: Record<SectionType, number>;
  payloadBytes: number;
  ram?: RamSummary;
  vfio?: Omit<VfioSummary, 'tags'>;
}

export interface StreamAnalysis {
  /** Bytes read. */
  bytes: number;
  /** Present once the header was read and matched this format. */
  header: {
    magic: string;
    version: number;
    machine: string;
    formatSubsection: string;
    formatVersion: number;
    byteLength: number;
  } | null;
  /** Every verified section, in stream order (empty when the analyzer was asked not to keep them). */
  sections: SectionSummary[];
  entries: EntrySummary[];
  totals: {
    sections: number;
    byType: Record<SectionType, number>;
    payloadBytes: number;
    /** Bytes that are not payload: header, section headers and trailers, EOF record. */
    overheadBytes: number;
    ram: { pages: number; pageBytes: number; zeroPages: number };
    vfio: { dataChunks: number; dataBytes: number; configBytes: number };
  };
  /** The EOF record: where it is and the section count it carries (verified). */
  eof: { offset: number; sections: number } | null;
  /** Bytes after EOF (a file should have none; on a TCP connection it is the return path). */
  trailingBytes: number;
  /** True when the stream is whole: header, verified sections, EOF, and no error. */
  complete: boolean;
  /** The first error, with its location. Nothing after it was analyzed. */
  error: {
    /** The full message, location included. */
    message: string;
    /** What is wrong, without the location. */
    detail: string;
    code: StreamErrorCode | 'io';
    offset: number;
    section?: SectionRef;
  } | null;
}

export interface StreamAnalyzerOptions {
  maxSectionBytes?: number;
  /** Keep a summary of every section (default true); totals and entries are kept either way. */
  keepSections?: boolean;
}

const emptyByType = (): Record<SectionType, number> => ({ start: 0, part: 0, end: 0, full: 0 });

function payloadKindOf(idstr: string): SectionSummary['payloadKind'] {
  if (idstr === 'ram') return 'ram';
  if (idstr === 'vfio' || idstr.endsWith('/vfio')) return 'vfio';
  return 'opaque';
}

export class StreamAnalyzer {
  private readonly decoder: StreamDecoder;
  private readonly keep: boolean;
  private bytes = 0;
  /** Bytes of the verified sections, framing included. */
  private framedBytes = 0;
  private readonly sections: SectionSummary[] = [];
  private readonly entries = new Map<number, EntrySummary>();
  private ramBlocks: Map<string, number> | undefined;
  private error: StreamAnalysis['error'] = null;
  private eof: StreamAnalysis['eof'] = null;
  private readonly totals: StreamAnalysis['totals'] = {
    sections: 0,
    byType: emptyByType(),
    payloadBytes: 0,
    overheadBytes: 0,
    ram: { pages: 0, pageBytes: 0, zeroPages: 0 },
    vfio: { dataChunks: 0, dataBytes: 0, configBytes: 0 },
  };

  constructor(options: StreamAnalyzerOptions = {}) {
    this.decoder = new StreamDecoder({ maxSectionBytes: options.maxSectionBytes });
    this.keep = options.keepSections ?? true;
  }

  /** Feeds bytes. After the first error the rest is counted but not read. */
  push(chunk: Uint8Array): void {
    this.bytes += chunk.byteLength;
    if (this.error) return;
    try {
      for (const s of this.decoder.push(chunk)) this.section(s);
    } catch (err) {
      this.fail(err);
    }
    this.noteEof();
  }

  /** Records an error that is not the stream's (e.g. the file could not be read). */
  ioError(message: string): void {
    if (!this.error) this.error = { message, detail: message, code: 'io', offset: this.bytes };
  }

  /** The input is over: the summary. */
  finish(): StreamAnalysis {
    if (!this.error) {
      try {
        this.decoder.finish();
      } catch (err) {
        this.fail(err);
      }
    }
    this.noteEof();
    const header = this.decoder.headerRead
      ? {
          magic: String.fromCharCode(...[24, 16, 8, 0].map((s) => (QEVM_MAGIC >>> s) & 0xff)),
          version: QEVM_VERSION,
          machine: MACHINE_NAME,
          formatSubsection: FORMAT_SUBSECTION,
          formatVersion: FORMAT_VERSION,
          byteLength: encodeHeader().byteLength,
        }
      : null;
    const trailing = this.decoder.ended ? this.decoder.pendingBytes : 0;
    this.totals.overheadBytes =
      (header?.byteLength ?? 0) + this.framedBytes - this.totals.payloadBytes + (this.eof ? EOF_RECORD_BYTES : 0);
    return {
      bytes: this.bytes,
      header,
      sections: this.sections,
      entries: [...this.entries.values()],
      totals: this.totals,
      eof: this.eof,
      trailingBytes: trailing,
      complete: this.error === null && this.decoder.ended,
      error: this.error,
    };
  }

  private fail(err: unknown): void {
    if (err instanceof StreamError) {
      this.error = {
        message: err.message,
        detail: err.detail,
        code: err.code,
        offset: err.offset,
        section: err.section,
      };
    } else {
      throw err;
    }
  }

  private section(s: DecodedSection): void {
    const kind = payloadKindOf(s.idstr);
    const summary: SectionSummary = {
      seq: s.seq,
      type: s.type,
      sectionId: s.sectionId,
      idstr: s.idstr,
      instanceId: s.instanceId,
      versionId: s.versionId,
      offset: s.offset,
      byteLength: s.byteLength,
      payloadBytes: s.payload.byteLength,
      payloadKind: kind,
    };
    if (kind === 'ram') summary.ram = this.ram(s);
    else if (kind === 'vfio') summary.vfio = this.vfio(s);

    const t = this.totals;
    t.sections++;
    t.byType[s.type]++;
    t.payloadBytes += s.payload.byteLength;
    this.framedBytes += s.byteLength;
    let e = this.entries.get(s.sectionId);
    if (!e) {
      e = {
        sectionId: s.sectionId,
        idstr: s.idstr,
        instanceId: s.instanceId,
        versionId: s.versionId,
        payloadKind: kind,
        sections: emptyByType(),
        payloadBytes: 0,
      };
      if (kind === 'ram') e.ram = { pages: 0, pageBytes: 0, zeroPages: 0, blocks: [] };
      if (kind === 'vfio') e.vfio = { dataChunks: 0, dataBytes: 0 };
      this.entries.set(s.sectionId, e);
    }
    e.sections[s.type]++;
    e.payloadBytes += s.payload.byteLength;
    if (summary.ram && e.ram) {
      const r = summary.ram;
      e.ram.pages += r.pages;
      e.ram.pageBytes += r.pageBytes;
      e.ram.zeroPages += r.zeroPages;
      if (r.memSize) e.ram.memSize = r.memSize;
      for (const b of r.blocks) if (!e.ram.blocks.includes(b)) e.ram.blocks.push(b);
      t.ram.pages += r.pages;
      t.ram.pageBytes += r.pageBytes;
      t.ram.zeroPages += r.zeroPages;
    }
    if (summary.vfio && e.vfio) {
      const v = summary.vfio;
      e.vfio.dataChunks += v.dataChunks;
      e.vfio.dataBytes += v.dataBytes;
      if (v.configBytes !== undefined) e.vfio.configBytes = (e.vfio.configBytes ?? 0) + v.configBytes;
      t.vfio.dataChunks += v.dataChunks;
      t.vfio.dataBytes += v.dataBytes;
      t.vfio.configBytes += v.configBytes ?? 0;
    }
    if (this.keep) this.sections.push(summary);
  }

  /** The decoder read EOF during the last push: note where, and the section count it verified. */
  private noteEof(): void {
    if (!this.eof && !this.error && this.decoder.ended) {
      this.eof = { offset: this.decoder.offset - EOF_RECORD_BYTES, sections: this.decoder.sectionCount };
    }
  }

  private ram(s: DecodedSection): RamSummary {
    const out: RamSummary = { pages: 0, pageBytes: 0, zeroPages: 0, blocks: [] };
    // Blocks come from the stream's own MEM_SIZE (START); before it, any block is accepted.
    for (const r of decodeRamPayload(s.payload, { blocks: this.ramBlocks, section: s })) {
      if (r.kind === 'mem-size') {
        out.memSize = {
          total: Number(r.total),
          blocks: r.blocks.map((b) => ({ name: b.name, usedLength: Number(b.usedLength) })),
        };
        this.ramBlocks = new Map(r.blocks.map((b) => [b.name, Number(b.usedLength)]));
      } else if (r.kind === 'page' || r.kind === 'zero') {
        if (r.kind === 'page') {
          out.pages++;
          out.pageBytes += TARGET_PAGE_SIZE;
        } else out.zeroPages++;
        if (!out.blocks.includes(r.block)) out.blocks.push(r.block);
      }
    }
    return out;
  }

  private vfio(s: DecodedSection): VfioSummary {
    const out: VfioSummary = { tags: [], dataChunks: 0, dataBytes: 0 };
    let run = 0;
    const flush = () => {
      if (run > 0) out.tags.push(run === 1 ? 'DEV_DATA_STATE' : `DEV_DATA_STATE×${run}`);
      run = 0;
    };
    for (const r of decodeVfioPayload(s.payload, { section: s })) {
      if (r.kind === 'data') {
        out.dataChunks++;
        out.dataBytes += r.data.byteLength;
        run++;
        continue;
      }
      flush();
      if (r.kind === 'config') out.configBytes = r.data.byteLength;
      out.tags.push(r.kind === 'flavor' ? `X_DEV_FLAVOR(${r.flavor})` : TAG_OF[r.kind]);
    }
    flush();
    return out;
  }
}

const TAG_OF: Record<Exclude<VfioRecord['kind'], 'data' | 'flavor'>, string> = {
  setup: 'DEV_SETUP_STATE',
  config: 'DEV_CONFIG_STATE',
  'init-data-sent': 'DEV_INIT_DATA_SENT',
  end: 'END_OF_STATE',
};

/** Analyzes a whole stream held in memory. */
export function analyzeBytes(bytes: Uint8Array, options?: StreamAnalyzerOptions): StreamAnalysis {
  const a = new StreamAnalyzer(options);
  a.push(bytes);
  return a.finish();
}

/** Analyzes a stream read in chunks (e.g. fs.createReadStream); a read error becomes the report's error. */
export async function analyzeChunks(
  chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  options?: StreamAnalyzerOptions,
): Promise<StreamAnalysis> {
  const a = new StreamAnalyzer(options);
  try {
    for await (const c of chunks) a.push(c);
  } catch (err) {
    a.ioError(`reading the stream failed: ${(err as Error).message}`);
  }
  return a.finish();
}
