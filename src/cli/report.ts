// `vfio-migrate report FILE.jsonl -o FILE.html`: a migration recording (`vmm --record`) as one
// self-contained HTML page with its plots (docs/report.md).
import { readFileSync, writeFileSync } from 'node:fs';
import { renderReportHtml } from '../report/html.ts';
import { parseRecording, reportData, type Verification } from '../report/report-data.ts';
import { UsageError } from './option-types.ts';
import type { ReportOptions } from './options/report.ts';

/** Reads a recording and writes its report; the demo calls this with its verification. */
export function writeReport(
  recordingPath: string,
  htmlPath: string,
  o: { title?: string; verification?: Verification } = {},
) {
  const data = reportData(parseRecording(readFileSync(recordingPath, 'utf8')), o.verification);
  writeFileSync(htmlPath, renderReportHtml(data, o.title));
  return data;
}

export async function runReport(o: ReportOptions, [recording]: string[]): Promise<number> {
  if (recording === undefined) throw new UsageError('give one RECORDING');
  const d = writeReport(recording, o.output, { title: o.title });
  console.log(
    `report: ${o.output} (${d.role}'s recording, migration ${d.status}, ${d.summary.samples} samples, ${d.passes.length} passes)`,
  );
  return 0;
}
