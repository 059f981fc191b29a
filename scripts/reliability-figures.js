// npm run reliability: runs the fault-injection and fuzzing tests, collects the figures they print
// (`FAULT-MATRIX key=value ...` and `FUZZ-FIGURES key=value ...` lines), and writes them into
// docs/reliability.md and docs/fuzzing.md between their figures markers, so the documents' numbers are the
// tests' own output. Extra arguments replace the default test filters. Nothing is written when a test
// fails, or when a figure the documents need is missing from the output: a missing figure is an error,
// never a blank or a zero. `--from-log FILE` renders the output of an earlier run (this script's own
// stdout, saved) instead of running the tests again.
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';

const root = new URL('..', import.meta.url).pathname;
const BEGIN = '<!-- figures:begin (written by npm run reliability) -->';
const END = '<!-- figures:end -->';
const args = process.argv.slice(2);
const fromLog = args[0] === '--from-log' ? args[1] : undefined;
if (args[0] === '--from-log' && !fromLog) throw new Error('--from-log needs a file');
const filters = fromLog || args.length === 0 ? ['faults', 'fuzz', 'dest-memory'] : args;

/** Fields every FAULT-MATRIX line carries (printed by test/e2e/support/fault-table.ts). */
const FAULT_FIELDS = [
  'fault',
  'phase',
  'status',
  'source',
  'destination',
  'device_state',
  'pages_lost',
  'device_changed',
  'test',
];
/** Fields every FUZZ-FIGURES line carries (printed by test/support/fuzz.ts). */
const FUZZ_FIELDS = ['target', 'inputs', 'valid', 'crashes', 'seed'];
/** Every fuzz target the documents quote. */
const FUZZ_TARGETS = [
  'abi-decoders',
  'stream-decoders',
  'qmp-parser-and-checks',
  'qmp-vmm',
  'migration-stream-destination',
  'vfio-user-server',
  'vfio-user-region-access',
  'vfio-user-bad-requests',
  'vfio-user-pipelining',
  'vfio-user-pending-while-dma',
  'destination-memory-during-load',
];
/** Every fault test file must report its faults. */
const FAULT_FILES = readdirSync(`${root}test/e2e`).filter((f) => /^faults-.*\.test\.ts$/.test(f));

function fail(why) {
  console.error(`reliability: ${why}; docs left unchanged`);
  process.exit(1);
}

/** `KIND a=1 b="x y"` → { a: '1', b: 'x y' }. */
function fields(text) {
  const out = {};
  for (const m of text.matchAll(/([\w-]+)=("([^"]*)"|\S+)/g)) out[m[1]] = m[3] ?? m[2];
  return out;
}

/** A figure as a number; a missing or non-numeric one stops the run. */
function num(row, key, what) {
  const v = row[key];
  if (v === undefined || v === '' || !Number.isFinite(Number(v))) fail(`${what} has no numeric ${key} (got ${v})`);
  return Number(v);
}

function table(rows, columns) {
  const head = `| ${columns.join(' | ')} |\n|${columns.map(() => '---').join('|')}|\n`;
  return head + rows.map((r) => `| ${columns.map((c) => r[c] ?? '').join(' | ')} |`).join('\n');
}

function between(path, body) {
  const current = readFileSync(path, 'utf8');
  const a = current.indexOf(BEGIN);
  const b = current.indexOf(END);
  if (a < 0 || b < a) fail(`${path} has no figures markers`);
  return current.slice(0, a) + [BEGIN, '', body, '', END].join('\n') + current.slice(b + END.length);
}

async function run() {
  const child = spawn(process.execPath, [`${root}scripts/run-tests.js`, ...filters], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d) => {
    out += d;
    process.stdout.write(d);
  });
  const code = await new Promise((r) => child.on('close', r));
  if (code !== 0) fail(`tests failed (exit ${code})`);
  return out;
}

// A saved run counts only if its tests passed: the runner's summary says so.
function saved(path) {
  const out = readFileSync(path, 'utf8');
  const failed = /^ℹ fail (\d+)$/m.exec(out);
  if (failed?.[1] !== '0') fail(`${path} is not the output of a passing run`);
  return out;
}

const text = fromLog ? saved(fromLog) : await run();

const faults = [];
const fuzz = [];
for (const line of text.split('\n')) {
  const f = /FAULT-MATRIX\s+(.*)$/.exec(line);
  if (f) faults.push(fields(f[1]));
  const z = /FUZZ-FIGURES\s+(.*)$/.exec(line);
  if (z) fuzz.push(fields(z[1]));
}

for (const [i, r] of faults.entries())
  for (const k of FAULT_FIELDS) if (r[k] === undefined) fail(`FAULT-MATRIX line ${i + 1} has no ${k}`);
for (const [i, r] of fuzz.entries())
  for (const k of FUZZ_FIELDS) if (r[k] === undefined) fail(`FUZZ-FIGURES line ${i + 1} has no ${k}`);
for (const f of FAULT_FILES) if (!faults.some((r) => r.test === f)) fail(`no FAULT-MATRIX line from ${f}`);
for (const t of FUZZ_TARGETS) if (!fuzz.some((r) => r.target === t)) fail(`no FUZZ-FIGURES line for ${t}`);
const incomplete = fuzz.filter((r) => r.incomplete !== undefined);
if (incomplete.length) fail(`incomplete figures for ${incomplete.map((r) => r.target).join(', ')}`);

const sum = (rows, k, what) => rows.reduce((n, r) => n + num(r, k, `${what} ${r.target ?? r.fault}`), 0);
const pagesLost = sum(faults, 'pages_lost', 'fault');
const kept = faults.filter((r) => r.device_state !== 'lost');
const devicesChanged = sum(kept, 'device_changed', 'fault');
const devicesLost = faults.length - kept.length;
const retried = faults.filter((r) => r.retry_pages_lost !== undefined);
const retryLost = sum(retried, 'retry_pages_lost', 'fault');
const badInputs = sum(fuzz, 'inputs', 'target');
const validLoad = sum(fuzz, 'valid', 'target');
const crashes = sum(fuzz, 'crashes', 'target');
const stamp = `node ${process.version}, ${new Date().toISOString().slice(0, 10)}`;

const faultCols = [...new Set(faults.flatMap(Object.keys))];
const fuzzCols = [...new Set(fuzz.flatMap(Object.keys))];
const reliability = [
  `Faults injected: ${faults.length}; guest pages lost on the source: ${pagesLost}; ` +
    `device states changed: ${devicesChanged} (and ${devicesLost} devices lost with their killed server, ` +
    `as those rows expect); retries to a fresh destination: ${retried.length}, ` +
    `pages differing there: ${retryLost}. ` +
    `Bad inputs tried: ${badInputs}; valid requests sent as load: ${validLoad}; crashes: ${crashes}. (${stamp})`,
  '',
  table(faults, faultCols),
  '',
  table(fuzz, fuzzCols),
].join('\n');

const mem = fuzz.find((r) => r.target === 'destination-memory-during-load');
const memKib = num(mem, 'rss_delta_kib', 'destination-memory-during-load');
const fuzzing = [
  `Destination memory during a load: RssAnon grew by ${memKib} KiB (${(memKib / 1024).toFixed(1)} MiB) while a ` +
    `${num(mem, 'stream_mib', 'destination-memory-during-load')} MiB stream of a ` +
    `${num(mem, 'guest_mib', 'destination-memory-during-load')} MiB guest loaded; the test's bound is ` +
    `${num(mem, 'bound_mib', 'destination-memory-during-load')} MiB.`,
  '',
  `Over all fuzz targets: ${badInputs} bad inputs, ${validLoad} valid requests sent as load, ${crashes} crashes. ` +
    `Per target, with the servers' fd and RSS change, in [reliability.md](reliability.md#figures). (${stamp})`,
].join('\n');

const docs = {
  [`${root}docs/reliability.md`]: between(`${root}docs/reliability.md`, reliability),
  [`${root}docs/fuzzing.md`]: between(`${root}docs/fuzzing.md`, fuzzing),
};
for (const [path, body] of Object.entries(docs)) writeFileSync(path, body);
console.log(
  `reliability: ${faults.length} fault rows and ${fuzz.length} fuzzing rows written to docs/reliability.md and docs/fuzzing.md`,
);
