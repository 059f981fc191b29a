// Options of `vfio-migrate conform`, apart from its implementation (../conform.ts) so that `help` and
// `--version` load only this.
import { type Command, Option } from 'commander';
import { FLAVOR_CHOICES } from '../../abi/migration.ts';
import type { FlavorChoice } from '../../vmm/vfio/attach.ts';
import { collect, integer } from '../option-types.ts';

export interface ConformOptions {
  socket?: string[];
  flavor: FlavorChoice;
  dmaWait: number;
  json?: boolean;
}

export function conformCommand(program: Command): Command {
  return program
    .command('conform')
    .summary("check a device's migration interface against its flavor's rules (two devices: A saves, B resumes)")
    .addOption(
      new Option(
        '--socket <path>',
        "a device server's vfio-user socket; twice: A is saved, B (a fresh device of the same kind) resumes A's state",
      ).argParser(collect),
    )
    .addOption(
      new Option('--flavor <f>', 'the interface to check; auto: the newest one A offers')
        .choices(FLAVOR_CHOICES)
        .default('auto'),
    )
    .addOption(
      new Option('--dma-wait <ms>', 'how long the dirty-page rule waits for the device to write guest memory')
        .argParser(integer(1))
        .default(3000),
    )
    .addOption(new Option('--json', 'the report as one JSON object'))
    .addHelpText(
      'after',
      '\nChecks (seed, v1, v2; docs/conform.md lists every rule): register or feature access rules, the state\n' +
        'table, save, resume in other chunk sizes with equal BARs after, an incomplete resume refused, cancel,\n' +
        'dirty pages (seed region, v1 DIRTY_PAGES, v2 DMA logging: reported, read and clear), error state, reset.\n' +
        'Exit code: 0 every rule passed or was skipped (each skip says why), 1 a rule failed, 2 a usage error.',
    );
}
