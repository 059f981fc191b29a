// `vfio-migrate analyze FILE`: reads a saved migration stream (`migrate file:PATH`) with the same checks a
// destination applies, and prints what is in it: header, one line per state entry (RAM pages, zero pages,
// VFIO data chunks …), totals, and the first error with its location. `--sections` adds one line per
// section; `--json` prints the whole analysis as one JSON object. Exit status: 0 for a whole, valid
// stream; 1 for a damaged or incomplete one (or an unreadable file); 2 for a usage error.
import { createReadStream } from 'node:fs';
import { analyzeChunks, type SectionSummary, type StreamAnalysis } from '../stream/analyze.ts';
import { bytes } from './format.ts';
import { UsageError } from './option-types.ts';
import type { AnalyzeOptions } from './options/analyze.ts';

export async function runAnalyze(o: AnalyzeOptions, [file]: string[]): Promise<number> {
  if (file === undefined) throw new UsageError('give one FILE');
  const report = await analyzeChunks(createReadStream(file, { highWaterMark: 1 << 20 }), {
    maxSectionBytes: o.maxSection,
    keepSections: o.sections || o.json,
  });
  if (o.json) console.log(JSON.stringify({ file, ...report }, null, 2));
  else console.log(formatAnalysis(file, report, o.sections ?? false));
  return report.complete ? 0 : 1;
}

/** The text report. */
export function formatAnalysis(file: string, a: StreamAnalysis, sections: boolean): string {
  const lines: string[] = [];
  const state = a.complete
    ? `complete, EOF after ${plural(a.eof!.sections, 'section')}`
    : a.error?.code === 'io'
      ? 'UNREADABLE'
      : a.error?.code === 'truncated'
        ? 'INCOMPLETE'
        : 'DAMAGED';
  lines.push(`stream   ${file}: ${bytes(a.bytes)} (${a.bytes} bytes), ${state}`);
  if (a.header) {
    const h = a.header;
    lines.push(
      `header   ${h.magic} version ${h.version}, machine "${h.machine}", format ${h.formatSubsection} version ${h.formatVersion}`,
    );
  }
  const t = a.totals;
  if (t.sections > 0) {
    const by = t.byType;
    lines.push(`sections ${t.sections}: START ${by.start}, PART ${by.part}, END ${by.end}, FULL ${by.full}`);
  }
  for (const e of a.entries) {
    const kinds = (['start', 'part', 'end', 'full'] as const)
      .filter((k) => e.sections[k] > 0)
      .map((k) => `${e.sections[k]} ${k.toUpperCase()}`)
      .join(' ');
    let what = '';
    if (e.ram) {
      const blocks = e.ram.memSize
        ? e.ram.memSize.blocks.map((b) => `${b.name} ${bytes(b.usedLength)}`).join(', ')
        : e.ram.blocks.join(', ');
      what = `; ${plural(e.ram.pages, 'page')} (${bytes(e.ram.pageBytes)}), ${plural(e.ram.zeroPages, 'zero page')}; blocks: ${blocks || 'none'}`;
    } else if (e.vfio) {
      what = `; ${plural(e.vfio.dataChunks, 'data chunk')} (${bytes(e.vfio.dataBytes)})${e.vfio.configBytes !== undefined ? `, config ${bytes(e.vfio.configBytes)}` : ''}`;
    }
    lines.push(
      `  ${JSON.stringify(e.idstr)} id ${e.sectionId} instance ${e.instanceId} version ${e.versionId}: ${kinds}, payload ${bytes(e.payloadBytes)}${what}`,
    );
  }
  if (t.sections > 0) {
    lines.push(
      `totals   payload ${bytes(t.payloadBytes)}, framing ${bytes(t.overheadBytes)}; RAM ${plural(t.ram.pages, 'page')} + ${plural(t.ram.zeroPages, 'zero page')}; VFIO ${plural(t.vfio.dataChunks, 'data chunk')} (${bytes(t.vfio.dataBytes)}), config ${bytes(t.vfio.configBytes)}`,
    );
  }
  if (a.eof) lines.push(`eof      at byte ${a.eof.offset}, counts ${plural(a.eof.sections, 'section')}`);
  if (a.trailingBytes > 0) lines.push(`trailing ${a.trailingBytes} bytes after EOF (not part of the stream)`);
  if (sections && a.sections.length > 0) {
    lines.push('', '     seq       offset  type   id  idstr                    payload  contents');
    for (const s of a.sections) lines.push(sectionLine(s));
  }
  if (a.error) {
    const where = a.error.section
      ? [
          a.error.section.idstr !== undefined ? `idstr "${a.error.section.idstr}"` : '',
          a.error.section.sectionId !== undefined ? `section id ${a.error.section.sectionId}` : '',
          a.error.section.seq !== undefined ? `seq ${a.error.section.seq}` : '',
        ]
          .filter(Boolean)
          .join(', ')
      : '';
    lines.push(
      '',
      `error    ${a.error.code} at byte ${a.error.offset}${where ? ` (${where})` : ''}: ${a.error.detail}`,
    );
  }
  return lines.join('\n');
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

function sectionLine(s: SectionSummary): string {
  let contents = '';
  if (s.ram) {
    const r = s.ram;
    const parts: string[] = [];
    if (r.memSize) parts.push(`MEM_SIZE ${bytes(r.memSize.total)} (${r.memSize.blocks.map((b) => b.name).join(', ')})`);
    if (r.pages) parts.push(plural(r.pages, 'page'));
    if (r.zeroPages) parts.push(`${r.zeroPages} zero`);
    parts.push('EOS');
    contents = parts.join(', ');
  } else if (s.vfio) {
    contents = s.vfio.tags.join(' ');
    if (s.vfio.dataChunks) contents += ` (${bytes(s.vfio.dataBytes)} data)`;
    if (s.vfio.configBytes !== undefined) contents += ` (${bytes(s.vfio.configBytes)} config)`;
  } else {
    contents = '(opaque)';
  }
  return [
    String(s.seq).padStart(8),
    String(s.offset).padStart(12),
    ` ${s.type.toUpperCase().padEnd(5)}`,
    String(s.sectionId).padStart(3),
    ` ${s.idstr.padEnd(22)}`,
    bytes(s.payloadBytes).padStart(9),
    ` ${contents}`,
  ].join(' ');
}
