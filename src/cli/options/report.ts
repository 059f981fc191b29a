// Options of `vfio-migrate report`, apart from its implementation (../report.ts) so that `help` and
// `--version` load only this.
import { type Command, Option } from 'commander';

export interface ReportOptions {
  output: string;
  title?: string;
}

export function reportCommand(program: Command): Command {
  return program
    .command('report')
    .summary('render a recorded migration (vmm --record) as a self-contained HTML page with plots')
    .argument('<recording>', 'a JSON-lines recording written by vfio-migrate vmm --record (source or destination)')
    .addOption(
      new Option('-o, --output <file>', 'the HTML report to write (one file, works offline)').makeOptionMandatory(),
    )
    .addOption(new Option('--title <text>', "the report's title"));
}
