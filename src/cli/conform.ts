// `vfio-migrate conform`: a black-box conformance check of a vfio-user device's migration interface
// against its flavor's rules, on two devices of the same kind (A saves, B resumes), one line per rule.
// Exit code 0 when every rule passed (skips allowed), 1 when one failed, 2 for a usage error.
import { parseArgs } from 'node:util';
import { formatReport } from '../conform/report.ts';
import { conform } from '../conform/run.ts';
import { FLAVOR_CHOICES, type FlavorChoice } from '../vmm/vfio/attach.ts';

export const conformUsage = `usage: vfio-migrate conform --socket A --socket B [options]
  --socket PATH         a device server's vfio-user socket; twice: A is saved, B (a device of the same
                        kind, fresh) resumes A's state
  --flavor F            auto (default: the newest interface A offers), seed, v1 or v2
  --dma-wait MS         how long the dirty-page rule waits for the device to write guest memory (default 3000)
  --json                the report as one JSON object
Checks (seed): register access rules, the device_state table, stop-and-copy and pending_bytes, resume in
other chunk sizes with equal BARs after, an incomplete resume refused, cancel, dirty-page reporting.
Exit code: 0 every rule passed or was skipped (each skip says why), 1 a rule failed, 2 a usage error.`;

export async function runConform(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      socket: { type: 'string', multiple: true, default: [] },
      flavor: { type: 'string', default: 'auto' },
      'dma-wait': { type: 'string', default: '3000' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(conformUsage);
    return 0;
  }
  const sockets = values.socket!;
  const flavor = values.flavor as FlavorChoice;
  if (sockets.length !== 2 || !FLAVOR_CHOICES.includes(flavor)) {
    console.error(
      `vfio-migrate conform: give --socket twice and --flavor ${FLAVOR_CHOICES.join('|')}\n${conformUsage}`,
    );
    return 2;
  }
  const report = await conform({
    sockets: [sockets[0]!, sockets[1]!],
    flavor,
    dmaWaitMs: Number(values['dma-wait']),
  });
  console.log(values.json ? JSON.stringify(report, null, 2) : formatReport(report));
  return report.failed === 0 ? 0 : 1;
}
