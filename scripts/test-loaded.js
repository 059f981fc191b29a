// Runs the test suite on a saturated machine: one busy process per core plus one, then `npm test` (extra
// arguments pass through as file filters), `--times N` times in a row (default 3), stopping at the first
// failure. A test that passes only when the machine is quiet fails here. The hogs die with this script:
// on success, on failure, on SIGINT/SIGTERM.
//   npm run test:loaded -- --times 1 e2e/migration
import { spawn } from 'node:child_process';
import { availableParallelism } from 'node:os';

const root = new URL('..', import.meta.url).pathname;
const args = process.argv.slice(2);
let times = 3;
const filters = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--times') {
    times = Number(args[++i]);
    if (!Number.isInteger(times) || times < 1) {
      console.error(`--times takes a whole number >= 1, got ${args[i]}`);
      process.exit(2);
    }
  } else filters.push(args[i]);
}

const hogs = [];
let tests = null;
function killHogs() {
  for (const h of hogs.splice(0)) {
    if (h.exitCode === null && h.signalCode === null) h.kill('SIGKILL');
  }
}
process.on('exit', killHogs);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    killHogs();
    console.error(`test:loaded: ${sig}: busy processes stopped, stopping the tests`);
    if (!tests || tests.exitCode !== null || tests.signalCode !== null) process.exit(130);
    // The tests run in their own process group (device servers and VMMs included): the whole group gets
    // the signal, as from a terminal's Ctrl-C, so each process shuts down its own way; then SIGKILL.
    signalTests(sig);
    setTimeout(() => {
      signalTests('SIGKILL');
      process.exit(130);
    }, 10_000).unref();
    tests.on('exit', () => process.exit(130));
  });
}

function signalTests(sig) {
  try {
    process.kill(-tests.pid, sig);
  } catch {
    // the group is gone already
  }
}

const cores = availableParallelism();
for (let i = 0; i <= cores; i++) {
  // stdio ignored and not detached: a hog is a plain child, killed by its pid above.
  hogs.push(spawn(process.execPath, ['-e', 'for(;;){}'], { stdio: 'ignore' }));
}
console.log(
  `test:loaded: ${hogs.length} busy processes on ${cores} cores; ${times} run(s) of npm test ${filters.join(' ')}`,
);

function runOnce() {
  return new Promise((resolve) => {
    // The README's test command, as a user types it.
    const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
    const child = spawn(npm, ['test', '--', ...filters], { cwd: root, stdio: 'inherit', detached: true });
    tests = child;
    child.on('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
    child.on('error', (err) => {
      console.error(`test:loaded: ${err.message}`);
      resolve(1);
    });
  });
}

const results = [];
let failed = false;
for (let run = 1; run <= times && !failed; run++) {
  const t0 = performance.now();
  const code = await runOnce();
  const seconds = ((performance.now() - t0) / 1000).toFixed(1);
  results.push(`run ${run}/${times}: ${code === 0 ? 'pass' : `FAIL (exit ${code})`} in ${seconds} s`);
  console.log(`test:loaded: ${results.at(-1)}`);
  failed = code !== 0;
}
killHogs();
console.log(`test:loaded: busy processes stopped; ${failed ? 'FAILED' : 'all runs passed'}`);
for (const r of results) console.log(`test:loaded: ${r}`);
process.exit(failed ? 1 : 0);
