// The vfio-migrate command line: one file per command; this file only dispatches. A command's module is
// loaded only when that command runs, so `vfio-migrate vmm` does not pay for the demo's code (nor the other
// way round) and `--version` loads none.
//
// Exit codes: 0 success; 1 the command failed (its message says why); 2 a usage error (unknown command or
// option, bad value); analyze also uses 1 for a damaged stream.
import { readFileSync } from 'node:fs';

interface Command {
  summary: string;
  load(): Promise<{ run(argv: string[]): Promise<number>; usage: string }>;
}

const COMMANDS: Record<string, Command> = {
  demo: {
    summary: 'live migration of a VM with a device, four processes on this machine, verified (npm start)',
    load: async () => import('./demo.ts').then((m) => ({ run: m.runDemo, usage: m.demoUsage })),
  },
  'region-demo': {
    summary: 'live save and resume of one device through its migration region, in one process',
    load: async () => import('./region-demo.ts').then((m) => ({ run: m.runRegionDemo, usage: m.regionDemoUsage })),
  },
  serve: {
    summary: 'host a sample device behind a vfio-user socket',
    load: async () => import('./serve.ts').then((m) => ({ run: m.runServe, usage: m.serveUsage })),
  },
  vmm: {
    summary: 'a VMM: guest RAM, a synthetic guest, vfio-user devices, QMP, live migration',
    load: async () => import('./vmm.ts').then((m) => ({ run: m.runVmm, usage: m.vmmUsage })),
  },
  probe: {
    summary: 'show what the device behind a vfio-user socket offers (like lspci -vv)',
    load: async () => import('./probe.ts').then((m) => ({ run: m.runProbe, usage: m.probeUsage })),
  },
  conform: {
    summary: "check a device's migration interface against its flavor's rules (two devices: A saves, B resumes)",
    load: async () => import('./conform.ts').then((m) => ({ run: m.runConform, usage: m.conformUsage })),
  },
  report: {
    summary: 'render a recorded migration (vmm --record) as a self-contained HTML page with plots',
    load: async () => import('./report.ts').then((m) => ({ run: m.runReport, usage: m.reportUsage })),
  },
  analyze: {
    summary: 'check a saved migration stream (migrate file:PATH) and summarize it',
    load: async () => import('./analyze.ts').then((m) => ({ run: m.runAnalyze, usage: m.analyzeUsage })),
  },
};

function overview(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length)) + 2;
  return [
    'usage: vfio-migrate <command> [options]',
    "       vfio-migrate help [command]    the manual, or one command's options",
    '       vfio-migrate --version',
    '',
    'commands:',
    ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}${c.summary}`),
    '',
    'exit codes: 0 success, 1 the command failed, 2 a usage error',
  ].join('\n');
}

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

/** The known command closest to a mistyped one (edit distance at most 2), for "did you mean". */
export function suggestCommand(typed: string, known: readonly string[] = Object.keys(COMMANDS)): string | undefined {
  let best: { name: string; d: number } | undefined;
  for (const name of known) {
    const d = editDistance(typed, name);
    if (d <= 2 && (!best || d < best.d)) best = { name, d };
  }
  return best?.name;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length]!;
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === '--version' || command === '-V' || command === 'version') {
    console.log(version());
    return 0;
  }
  if (command === undefined || command === 'help' || command === '--help' || command === '-h') {
    const topic = command === 'help' ? rest[0] : undefined;
    if (topic && COMMANDS[topic]) {
      console.log((await COMMANDS[topic].load()).usage);
      return 0;
    }
    if (topic) {
      console.error(unknown(topic));
      return 2;
    }
    console.log(overview());
    return 0;
  }
  const entry = COMMANDS[command];
  if (!entry) {
    console.error(unknown(command));
    return 2;
  }
  try {
    return await (await entry.load()).run(rest);
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    console.error(`vfio-migrate ${command}: ${msg}`);
    // parseArgs refuses an unknown or malformed option with ERR_PARSE_ARGS_*: that is a usage error.
    return (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') ? 2 : 1;
  }
}

function unknown(command: string): string {
  const hint = suggestCommand(command);
  return `vfio-migrate: unknown command "${command}"${hint ? ` (did you mean "${hint}"?)` : ''}; "vfio-migrate help" lists the commands`;
}
