// npm run reliability: runs the fault-injection and fuzzing tests, collects the figures they print
// (`FAULT-MATRIX key=value ...` and `FUZZ-FIGURES key=value ...` lines), and writes them into
// docs/reliability.md between its figures markers, so the document's numbers are the tests' own output.
// Extra arguments replace the default test filters. Nothing is written when a test fails.
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';

const root = new URL('..', import.meta.url).pathname;
const doc = `${root}docs/reliability.md`;
const BEGIN = '<!-- figures:begin (written by npm run reliability) -->';
const END = '<!-- figures:end -->';
const filters = process.argv.length > 2 ? process.argv.slice(2) : ['faults', 'fuzz', 'dest-memory'];

/** `KIND a=1 b="x y"` → { a: '1', b: 'x y' }. */
function fields(text) {
  const out = {};
  for (const m of text.matchAll(/([\w-]+)=("([^"]*)"|\S+)/g)) out[m[1]] = m[3] ?? m[2];
  return out;
}

function table(rows, columns) {
  const head = `| ${columns.join(' | ')} |\n|${columns.map(() => '---').join('|')}|\n`;
  return head + rows.map((r) => `| ${columns.map((c) => r[c] ?? '').join(' | ')} |`).join('\n');
}

const child = spawn(process.execPath, [`${root}scripts/run-tests.js`, ...filters], {
  cwd: root,
  stdio: ['ignore', 'pipe', 'inherit'],
});
let text = '';
child.stdout.setEncoding('utf8').on('data', (d) => {
  text += d;
  process.stdout.write(d);
});
const code = await new Promise((r) => child.on('close', r));
if (code !== 0) {
  console.error(`reliability: tests failed (exit ${code}); ${doc} left unchanged`);
  process.exit(code ?? 1);
}
const faults = [];
const fuzz = [];
for (const line of text.split('\n')) {
  const f = /FAULT-MATRIX\s+(.*)$/.exec(line);
  if (f) faults.push(fields(f[1]));
  const z = /FUZZ-FIGURES\s+(.*)$/.exec(line);
  if (z) fuzz.push(fields(z[1]));
}
const sum = (rows, k) => rows.reduce((n, r) => n + (Number(r[k]) || 0), 0);
const faultCols = [...new Set(faults.flatMap(Object.keys))];
const fuzzCols = [...new Set(fuzz.flatMap(Object.keys))];
const body = [
  BEGIN,
  '',
  `Faults injected: ${faults.length}; pages lost: ${sum(faults, 'pages_lost')}. ` +
    `Bad inputs tried: ${sum(fuzz, 'inputs')}; crashes: ${sum(fuzz, 'crashes')}. ` +
    `(node ${process.version}, ${new Date().toISOString().slice(0, 10)})`,
  '',
  faults.length ? table(faults, faultCols) : '(no fault-injection figures printed)',
  '',
  fuzz.length ? table(fuzz, fuzzCols) : '(no fuzzing figures printed)',
  '',
  END,
].join('\n');
const current = readFileSync(doc, 'utf8');
const a = current.indexOf(BEGIN);
const b = current.indexOf(END);
if (a < 0 || b < a) {
  console.error(`reliability: ${doc} has no figures markers`);
  process.exit(1);
}
writeFileSync(doc, current.slice(0, a) + body + current.slice(b + END.length));
console.log(`reliability: ${faults.length} fault rows and ${fuzz.length} fuzzing rows written to docs/reliability.md`);
