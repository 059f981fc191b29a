// Options of `vfio-migrate probe`, apart from its implementation (../probe.ts) so that `help` and
// `--version` load only this.
import { type Command, Option } from 'commander';
import { integer } from '../option-types.ts';

export interface ProbeOptions {
  socket?: string;
  json?: boolean;
  timeout: number;
}

export function probeCommand(program: Command): Command {
  return (
    program
      .command('probe')
      .summary('show what the device behind a vfio-user socket offers (like lspci -vv)')
      // Required, but checked by the command: commander checks mandatory options before unknown ones, and
      // `probe --sockt X` should hear about the typo, not about a missing --socket.
      .addOption(new Option('--socket <path>', 'vfio-user socket of a device server (required)'))
      .addOption(new Option('--json', 'one JSON object on stdout instead of text'))
      .addOption(
        new Option('--timeout <ms>', 'give up on an unanswered request after this long')
          .argParser(integer(1))
          .default(5000),
      )
  );
}
