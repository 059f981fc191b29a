// The vfio-migrate command line: one file per command; this file only dispatches.
import { runAnalyze } from './analyze.ts';
import { demoUsage, runDemo } from './demo.ts';
import { probeUsage, runProbe } from './probe.ts';
import { regionDemoUsage, runRegionDemo } from './region-demo.ts';
import { runServe, serveUsage } from './serve.ts';
import { runVmm, vmmUsage } from './vmm.ts';

const usage = `usage: vfio-migrate <command> [options]

commands:
  demo         live migration of a VM with a device, four processes on this machine, verified (npm start)
  region-demo  live save and resume of one device through its migration region, in one process
  serve    host a sample device behind a vfio-user socket
  vmm      a VMM: guest RAM, a synthetic guest, vfio-user devices, QMP, live migration
  probe    show what the device behind a vfio-user socket offers (like lspci -vv)
  analyze  check a saved migration stream (migrate file:PATH) and summarize it (analyze --help)
  help     this text

${demoUsage}

${regionDemoUsage}

${serveUsage}

${vmmUsage}

${probeUsage}`;

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'demo':
        return await runDemo(rest);
      case 'region-demo':
        return await runRegionDemo(rest);
      case 'serve':
        return await runServe(rest);
      case 'vmm':
        return await runVmm(rest);
      case 'probe':
        return await runProbe(rest);
      case 'analyze':
        return await runAnalyze(rest);
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        console.log(usage);
        return 0;
      default:
        console.error(`vfio-migrate: unknown command "${command}"\n\n${usage}`);
        return 2;
    }
  } catch (err) {
    console.error(`vfio-migrate ${command}: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  }
}
