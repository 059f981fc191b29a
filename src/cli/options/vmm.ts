// Options of `vfio-migrate vmm`, apart from its implementation (../vmm.ts) so that `help` and `--version`
// load only this (the start-up bench times `help vmm`).
import { type Command, InvalidArgumentError, Option } from 'commander';
import { FLAVOR_CHOICES } from '../../abi/migration.ts';
import type { GuestRange, WritePattern } from '../../vmm/guest/workload-control.ts';
import type { FlavorChoice } from '../../vmm/vfio/attach.ts';
import { collect, integer, ranges, size } from '../option-types.ts';

const PATTERNS = ['random', 'hot', 'sequential'] as const satisfies readonly WritePattern[];

export interface VmmOptions {
  deviceSocket?: string[];
  flavor: FlavorChoice;
  qmp: string;
  incoming?: string;
  paused?: boolean;
  mem: number;
  vcpus: number;
  dirtyRate: number;
  pattern: WritePattern;
  dmaBuffers?: GuestRange[];
  fill: 'zero' | 'random';
  prefault?: boolean;
  hugePages: boolean;
  trace: string;
  dmaRegions: number;
  intx?: boolean;
  stallTimeout: number;
  uuid?: Uint8Array;
  record?: string;
  recordInterval: number;
}

export function vmmCommand(program: Command): Command {
  return program
    .command('vmm')
    .summary('a VMM: guest RAM, a synthetic guest, vfio-user devices, QMP, live migration')
    .addOption(
      new Option(
        '--device-socket <path[,precopy=off][,max-write=SIZE]>',
        "a vfio-user device (repeat for several); precopy=off leaves a v2 device's PRE_COPY unused (stop-copy only); max-write=SIZE caps write messages (default: none for our servers, about 32 KiB for others, whose reads may need whole messages)",
      ).argParser(collect),
    )
    .addOption(
      new Option(
        '--flavor <f>',
        'migration interface to drive on each device; auto: the newest one the device offers (others are refused if the device does not offer them)',
      )
        .choices(FLAVOR_CHOICES)
        .default('auto'),
    )
    .addOption(new Option('--qmp <path>', 'QMP control socket to create (mode 0600)').makeOptionMandatory())
    .addOption(
      new Option(
        '--incoming <uri>',
        'wait for a migration: tcp:HOST:PORT (port 0 picks one), file:PATH, or defer (QMP migrate-incoming gives the URI, after migrate-set-capabilities)',
      ),
    )
    .addOption(new Option('--paused', "after an incoming migration, stay paused until QMP 'cont' (QEMU's -S)"))
    .addOption(new Option('--mem <size>', 'guest RAM').argParser(size).default(1 << 30, '1G'))
    .addOption(new Option('--vcpus <n>', 'synthetic vCPUs').argParser(integer(1)).default(2))
    .addOption(
      new Option('--dirty-rate <n>', 'guest page writes per second, all vCPUs (0 = idle guest)')
        .argParser(integer(0))
        .default(20000),
    )
    .addOption(new Option('--pattern <p>', "the guest's write pattern").choices(PATTERNS).default('hot'))
    .addOption(
      new Option(
        '--dma-buffers <ranges>',
        "guest RAM the synthetic vCPUs never write, as a guest driver leaves its devices' DMA buffers alone: OFFSET+LENGTH[,…], e.g. 0+4K,8M+4K",
      ).argParser(ranges),
    )
    .addOption(
      new Option('--fill <kind>', 'guest RAM contents at boot (random: a non-zero guest to migrate)')
        .choices(['zero', 'random'])
        .default('zero'),
    )
    .addOption(
      new Option('--prefault', "fault all of guest RAM in at startup (QEMU's -mem-prealloc), not on first use"),
    )
    .addOption(
      new Option(
        '--no-huge-pages',
        'keep guest RAM in 4 KiB pages (by default it is advised MADV_HUGEPAGE, and collapsed into 2 MiB pages where --prefault or --fill random fault it in, and in the background wherever it becomes wholly allocated)',
      ),
    )
    .addOption(new Option('--trace <pattern>', "trace events, e.g. 'vfio_*' (to stderr)").default(''))
    .addOption(
      new Option(
        '--dma-regions <n>',
        'map guest RAM into each device as N equal DMA regions, as QEMU maps one per RAM section',
      )
        .argParser(integer(1))
        .default(1),
    )
    .addOption(new Option('--intx', "wire each device's INTx to an eventfd (SET_IRQS)"))
    .addOption(
      new Option(
        '--uuid <uuid>',
        "the VM's uuid (QEMU's -uuid): multifd channels carry it, and a destination checks it",
      ).argParser(parseUuid),
    )
    .addOption(
      new Option(
        '--stall-timeout <ms>',
        'a migration link that takes no 4 MiB write (sending) or brings nothing (receiving) this long fails, as does a destination that does not answer READY within it',
      )
        .argParser(integer(1))
        .default(10000),
    )
    .addOption(
      new Option(
        '--record <file>',
        "write this VMM's migrations as JSON lines: QMP events, query-migrate samples, results (vfio-migrate report renders them)",
      ),
    )
    .addOption(
      new Option('--record-interval <ms>', 'sampling interval of --record while a migration is active')
        .argParser(integer(1))
        .default(100),
    );
}

/** A uuid as QEMU's -uuid takes it: 32 hex digits, dashes as in 8-4-4-4-12. */
function parseUuid(text: string): Uint8Array {
  if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(text))
    throw new InvalidArgumentError(`"${text}" is not a uuid (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)`);
  return Uint8Array.from(Buffer.from(text.replaceAll('-', ''), 'hex'));
}
