// The vfio-migrate command line, on commander: each command's options are declared in options/NAME.ts
// (light: commander and a few constants), its implementation sits in NAME.ts and is imported only when that
// command runs, so `--version`, `help` and `COMMAND --help` load no command's code, and `vmm` does not pay
// for the demo's (nor the other way round).
//
// Exit codes: 0 success; 1 the command failed (its message says why; analyze also for a damaged stream,
// conform for a failed rule); 2 a usage error (unknown command or option, missing or bad value). Under
// --json a failed command still prints one JSON object, {"error": …}, so stdout is always JSON.
import { readFileSync } from 'node:fs';
import { type Command, CommanderError, createCommand } from 'commander';
import { isUsageError } from './option-types.ts';
import { type AnalyzeOptions, analyzeCommand } from './options/analyze.ts';
import { type ConformOptions, conformCommand } from './options/conform.ts';
import { type DemoOptions, demoCommand } from './options/demo.ts';
import { type ProbeOptions, probeCommand } from './options/probe.ts';
import { type RegionDemoOptions, regionDemoCommand } from './options/region-demo.ts';
import { type ReportOptions, reportCommand } from './options/report.ts';
import { type ServeOptions, serveCommand } from './options/serve.ts';
import { type VmmOptions, vmmCommand } from './options/vmm.ts';

/** A command's implementation: its parsed options and positional arguments in, an exit code out. */
type Run<O> = (options: O, args: string[]) => Promise<number>;

interface Entry<O> {
  declare(program: Command): Command;
  load(): Promise<Run<O>>;
}

const entry = <O>(e: Entry<O>) => e as Entry<unknown>;

// In the order `help` lists them.
const COMMANDS: Entry<unknown>[] = [
  entry<DemoOptions>({ declare: demoCommand, load: () => import('./demo.ts').then((m) => m.runDemo) }),
  entry<RegionDemoOptions>({
    declare: regionDemoCommand,
    load: () => import('./region-demo.ts').then((m) => m.runRegionDemo),
  }),
  entry<ServeOptions>({ declare: serveCommand, load: () => import('./serve.ts').then((m) => m.runServe) }),
  entry<VmmOptions>({ declare: vmmCommand, load: () => import('./vmm.ts').then((m) => m.runVmm) }),
  entry<ProbeOptions>({ declare: probeCommand, load: () => import('./probe.ts').then((m) => m.runProbe) }),
  entry<ConformOptions>({ declare: conformCommand, load: () => import('./conform.ts').then((m) => m.runConform) }),
  entry<ReportOptions>({ declare: reportCommand, load: () => import('./report.ts').then((m) => m.runReport) }),
  entry<AnalyzeOptions>({ declare: analyzeCommand, load: () => import('./analyze.ts').then((m) => m.runAnalyze) }),
];

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

/** What the command that ran answered; commander's own answers (help, version, usage errors) are thrown. */
interface Outcome {
  code: number;
}

function program(outcome: Outcome): Command {
  const root = createCommand('vfio-migrate')
    .description('Live migration of VMs that own vfio-user devices.')
    .version(version(), '-V, --version', 'print the version')
    .helpOption('-h, --help', 'print help')
    .helpCommand('help [command]', "the manual, or one command's options")
    // Throw instead of process.exit, so main() decides the exit code; subcommands inherit this.
    .exitOverride()
    .addHelpText('after', '\nExit codes: 0 success, 1 the command failed, 2 a usage error.\nDocs: docs/cli.md');
  for (const e of COMMANDS) {
    const command = e.declare(root);
    command.action(async () => {
      const options = command.opts();
      const run = await e.load();
      try {
        outcome.code = await run(options, command.args);
      } catch (err) {
        if (isUsageError(err)) command.error(`error: ${err.message}`, { exitCode: 2, code: 'usage' });
        const msg = err instanceof Error ? err.message : String(err);
        console.error(`vfio-migrate ${command.name()}: ${msg}`);
        if (options.json) {
          // A VfioError (or a Node system error) carries its errno and its name: a script branches on those.
          const { errno, code } = err as { errno?: unknown; code?: unknown };
          console.log(
            JSON.stringify({
              error: msg,
              ...(typeof errno === 'number' ? { errno } : {}),
              ...(typeof code === 'string' ? { code } : {}),
            }),
          );
        }
        outcome.code = 1;
      }
    });
  }
  return root;
}

export async function main(argv: string[]): Promise<number> {
  const outcome: Outcome = { code: 0 };
  const cli = program(outcome);
  if (argv.length === 0) {
    cli.outputHelp();
    return 0;
  }
  // commander answers `help UNKNOWN` with the whole manual; parsing UNKNOWN as a command instead names it,
  // with a suggestion, as for a mistyped command.
  const known = cli.commands.map((c) => c.name());
  const topic = argv[0] === 'help' ? argv[1] : undefined;
  const args = topic !== undefined && !topic.startsWith('-') && !known.includes(topic) ? [topic] : argv;
  try {
    await cli.parseAsync(args, { from: 'user' });
    return outcome.code;
  } catch (err) {
    // commander has already printed its message (help, the version, or "error: … (Did you mean …?)").
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2;
    throw err;
  }
}
