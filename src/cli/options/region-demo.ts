// Options of `vfio-migrate region-demo`, apart from its implementation (../region-demo.ts) so that `help`
// and `--version` load only this.
import { type Command, Option } from 'commander';
import { integer, size } from '../option-types.ts';

export interface RegionDemoOptions {
  device: 'large-memory' | 'register-file';
  deviceMem: number;
  dataSection: 'mmapped' | 'trapped';
  workRate: number;
  guest: number;
  downtimeLimit: number;
  maxIterations: number;
}

export function regionDemoCommand(program: Command): Command {
  return program
    .command('region-demo')
    .summary('live save and resume of one device through its migration region, in one process')
    .addOption(
      new Option('--device <name>', 'the sample device')
        .choices(['large-memory', 'register-file'])
        .default('large-memory'),
    )
    .addOption(
      new Option('--device-mem <size>', 'large-memory device memory').argParser(size).default(256 << 20, '256M'),
    )
    .addOption(
      new Option('--data-section <kind>', "the device's data section")
        .choices(['mmapped', 'trapped'])
        .default('mmapped'),
    )
    .addOption(
      new Option('--work-rate <n>', 'device writes per second while running').argParser(integer(0)).default(20000),
    )
    .addOption(
      new Option('--guest <size>', 'guest memory the device DMAs into').argParser(size).default(64 << 20, '64M'),
    )
    .addOption(
      new Option('--downtime-limit <ms>', 'device downtime budget for switch-over').argParser(integer(1)).default(300),
    )
    .addOption(
      new Option('--max-iterations <n>', 'pre-copy rounds before forcing switch-over')
        .argParser(integer(1))
        .default(30),
    );
}
