// Options of `vfio-migrate serve`, apart from its implementation (../serve.ts) so that `help` and
// `--version` load only this.
import { type Command, Option } from 'commander';
import { MIGRATION_FLAVORS, type MigrationFlavor } from '../../abi/migration.ts';
import type { SampleDeviceName } from '../../device/samples/index.ts';
import { collect, integer, size } from '../option-types.ts';

// The sample devices' names, checked against the device layer's list by the compiler (a type import
// costs nothing at run time; the device module itself is not loaded for `help`).
const DEVICES = ['register-file', 'large-memory', 'lvu-sample'] as const satisfies readonly SampleDeviceName[];

export interface ServeOptions {
  device: SampleDeviceName;
  socket: string;
  flavor: MigrationFlavor;
  dataSection: 'mmapped' | 'trapped';
  deviceMem: number;
  workRate: number;
  deviceFill: 'zero' | 'random';
  quiet?: boolean;
  xPrecopyQuota: number;
  xFault?: string[];
}

export function serveCommand(program: Command): Command {
  return program
    .command('serve')
    .summary('host a sample device behind a vfio-user socket')
    .description('Host one sample device behind a vfio-user socket until SIGINT or SIGTERM.')
    .addOption(new Option('--device <name>', 'the sample device').choices(DEVICES).makeOptionMandatory())
    .addOption(new Option('--socket <path>', 'UNIX socket to create (mode 0600)').makeOptionMandatory())
    .addOption(
      new Option(
        '--flavor <f>',
        'migration interface: seed (the 2019 region with its dirty bitmap), v1 (the Linux 5.8 region, dirty pages through DIRTY_PAGES) or v2 (DEVICE_FEATURE state machine, MIG_DATA_READ/WRITE)',
      )
        .choices(MIGRATION_FLAVORS)
        .default('seed'),
    )
    .addOption(
      new Option('--data-section <kind>', 'the data section').choices(['mmapped', 'trapped']).default('mmapped'),
    )
    .addOption(
      new Option('--device-mem <size>', 'large-memory device memory').argParser(size).default(256 << 20, '256M'),
    )
    .addOption(
      new Option('--work-rate <n>', 'large-memory device writes per second while running')
        .argParser(integer(0))
        .default(2000),
    )
    .addOption(
      new Option('--device-fill <kind>', 'large-memory initial memory').choices(['zero', 'random']).default('zero'),
    )
    .addOption(new Option('--quiet', 'no log lines on stderr (injected faults are still logged)'))
    .addOption(
      new Option(
        '--x-precopy-quota <size>',
        '(testing) large-memory: release at most SIZE of state per pre-copy round, so a migration takes several rounds; 0 = no quota',
      )
        .argParser(size)
        .default(0),
    )
    .addOption(
      new Option(
        '--x-fault <spec>',
        '(testing) inject a device fault, repeatable: WHAT@STATE[,count=N][,after=SIZE]; WHAT: fail-transition | kill-transition | fail-data | kill-data; STATE: stopped | running | stop-and-copy | pre-copy | resuming',
      ).argParser(collect),
    );
}
