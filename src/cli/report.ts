// `vfio-migrate report FILE.jsonl -o FILE.html`: a migration recording (`vmm --record`) as one
// self-contained HTML page with its plots (docs/report.md).
import { readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { renderReportHtml } from '../report/html.ts';
import { parseRecording, reportData, type Verification } from '../report/report-data.ts';

export const reportUsage = `usage: vfio-migrate report RECORDING.jsonl -o REPORT.html
  RECORDING.jsonl       written by vfio-migrate vmm --record (or demo --report)
  -o, --output FILE     the HTML report to write (one file, works offline)
  --title TEXT          the report's title`;

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

export async function runReport(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      output: { type: 'string', short: 'o' },
      title: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(reportUsage);
    return 0;
  }
  if (positionals.length !== 1 || !values.output) {
    console.error(reportUsage);
    return 2;
  }
  const d = writeReport(positionals[0]!, values.output, { title: values.title });
  console.log(
    `report: ${values.output} (migration ${d.status}, ${d.summary.samples} samples, ${d.passes.length} passes)`,
  );
  return 0;
}
