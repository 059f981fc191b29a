// `vfio-migrate conform`: a black-box conformance check of a vfio-user device's migration interface
// against its flavor's rules, on two devices of the same kind (A saves, B resumes), one line per rule.
// Exit code 0 when every rule passed (skips allowed), 1 when one failed, 2 for a usage error.
import { formatReport } from '../conform/report.ts';
import { conform } from '../conform/run.ts';
import { UsageError } from './option-types.ts';
import type { ConformOptions } from './options/conform.ts';

export async function runConform(o: ConformOptions): Promise<number> {
  const sockets = o.socket ?? [];
  if (sockets.length !== 2) {
    throw new UsageError('give --socket twice: device A (saved) and device B (resumes)');
  }
  const report = await conform({
    sockets: [sockets[0]!, sockets[1]!],
    flavor: o.flavor,
    dmaWaitMs: o.dmaWait,
  });
  console.log(o.json ? JSON.stringify(report, null, 2) : formatReport(report));
  return report.failed === 0 ? 0 : 1;
}
