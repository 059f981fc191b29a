// Bundles the command line's front (src/cli/main.ts as compiled in dist/: the command table, every
// command's options, commander) into one module, dist/cli/front.js, which bin/vfio-migrate.js loads in an
// installed package. Node's ES module loader resolves, reads and compiles each module on its own: the
// front was a dozen of ours plus commander's seven files before `--version` or `--help` could answer.
// Each command's implementation stays a module of its own in dist/ (main.ts imports it dynamically when
// that command runs), so only the front is bundled; what a command shares with the front (the option
// parsers, format.ts) is then loaded again beside the bundle, which is why main.ts recognises a command's
// UsageError by its name rather than by its class.
import { build } from 'esbuild';

const dist = new URL('../dist/cli/', import.meta.url).pathname;

await build({
  entryPoints: [`${dist}main.js`],
  outfile: `${dist}front.js`,
  bundle: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  logLevel: 'warning',
  // commander is CommonJS: its require() of Node's modules needs a require in an ES module.
  banner: {
    js: "import { createRequire as frontRequire } from 'node:module';\nconst require = frontRequire(import.meta.url);",
  },
  plugins: [
    {
      name: 'commands-stay-modules',
      setup(b) {
        // The commands' implementations, imported when a command runs: left as imports of dist/cli/*.js.
        b.onResolve({ filter: /.*/ }, (args) =>
          args.kind === 'dynamic-import' ? { path: args.path, external: true } : undefined,
        );
      },
    },
  ],
});
