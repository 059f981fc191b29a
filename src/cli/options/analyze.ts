// Options of `vfio-migrate analyze`, apart from its implementation (../analyze.ts) so that `help` and
// `--version` load only this.
import { type Command, Option } from 'commander';
import { integer } from '../option-types.ts';

export interface AnalyzeOptions {
  sections?: boolean;
  json?: boolean;
  maxSection?: number;
}

export function analyzeCommand(program: Command): Command {
  return program
    .command('analyze')
    .summary('check a saved migration stream (migrate file:PATH) and summarize it')
    .description(
      'Read a saved migration stream with the checks a destination applies and summarize it. Exit code: 0 a ' +
        'whole, valid stream; 1 a damaged, incomplete or unreadable one; 2 a usage error.',
    )
    .argument('<file>', 'a migration stream saved with migrate file:PATH')
    .addOption(new Option('--sections', 'also list every section (offset, type, id, idstr, payload, contents)'))
    .addOption(new Option('--json', 'one JSON object on stdout instead of text'))
    .addOption(
      new Option('--max-section <bytes>', 'largest section accepted (default 16777216, as a destination)').argParser(
        integer(1),
      ),
    );
}
