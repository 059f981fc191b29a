// Options of `vfio-migrate demo`, apart from its implementation (../demo.ts) so that `help` and
// `--version` load only this.
import { type Command, Option } from 'commander';
import { MIGRATION_FLAVORS, type MigrationFlavor } from '../../abi/migration.ts';
import { integer, size } from '../option-types.ts';

export interface DemoOptions {
  mem: number;
  dirtyRate: number;
  device: 'large-memory' | 'register-file';
  deviceMem: number;
  deviceRate: number;
  downtimeLimit: number;
  /** Seconds the live migration may iterate before the demo cancels it as not converging. */
  convergeWithin: number;
  /** Testing control passed to the source's device server (serve --x-precopy-quota); 0 = none. */
  xPrecopyQuota: number;
  dataSection: 'mmapped' | 'trapped';
  /** mixed: three devices in one VM, one per flavor. */
  flavor: MigrationFlavor | 'mixed';
  report?: string;
  json?: boolean;
  verbose?: boolean;
}

export function demoCommand(program: Command): Command {
  return program
    .command('demo')
    .summary('live migration of a VM with a device, four processes on this machine, verified (npm start)')
    .description(
      'Two device servers, a source VMM with a live guest and a device doing DMA, and a destination VMM: a live ' +
        'migration over loopback TCP, then the guest RAM and device digests compared at the stop point.',
    )
    .addOption(new Option('--mem <size>', 'guest RAM').argParser(size).default(1 << 30, '1G'))
    .addOption(new Option('--dirty-rate <n>', 'guest page writes per second').argParser(integer(0)).default(20000))
    .addOption(
      new Option('--device <name>', 'the sample device')
        .choices(['large-memory', 'register-file'])
        .default('large-memory'),
    )
    .addOption(
      new Option('--device-mem <size>', 'large-memory device memory').argParser(size).default(256 << 20, '256M'),
    )
    .addOption(
      new Option('--device-rate <n>', 'device writes per second while running, each also a DMA write')
        .argParser(integer(0))
        .default(5000),
    )
    .addOption(new Option('--downtime-limit <ms>', 'switch-over downtime budget').argParser(integer(1)).default(300))
    .addOption(
      new Option('--converge-within <s>', 'cancel the migration (the source runs on) if it has not converged by then')
        .argParser(integer(1))
        .default(60),
    )
    .addOption(
      new Option('--x-precopy-quota <size>', "(testing) the source device server's serve --x-precopy-quota")
        .argParser(size)
        .default(0)
        .hideHelp(),
    )
    .addOption(
      new Option('--data-section <kind>', "the devices' data section")
        .choices(['mmapped', 'trapped'])
        .default('mmapped'),
    )
    .addOption(
      new Option(
        '--flavor <f>',
        "the devices' migration interface: seed (the 2019 region), v1 (Linux 5.8's region) or v2 (Linux 5.18+'s DEVICE_FEATURE state machine); both VMMs drive it. mixed: three devices in one VM, a seed and a v2 --device and a v1 register-file, each VMM picking every device's flavor from what it offers",
      )
        .choices([...MIGRATION_FLAVORS, 'mixed'])
        .default('seed'),
    )
    .addOption(
      new Option(
        '--report <file>',
        'record the source VMM and write an HTML report of the migration and its verification',
      ),
    )
    .addOption(new Option('--json', 'one JSON object on stdout at the end (the story goes to stderr)'))
    .addOption(new Option('--verbose', "the four processes' log lines on stderr"));
}
