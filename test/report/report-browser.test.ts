// The report in a real headless browser (Debian's chromium, driven by playwright-core; no browser is
// ever downloaded): a report made from a real recorded migration between two VMM processes, and one
// written by `vfio-migrate demo --report`, each loaded from a file:// URL with every other request
// blocked. No console or page errors, every plot drew marks, a screenshot for CI.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { type Browser, chromium } from 'playwright-core';
import { writeReport } from '../../src/cli/report.ts';
import { startLocalPair, waitForMigration } from '../../src/harness/local-hosts.ts';

// The page's document, for the functions that run in the browser (this project compiles without the DOM lib).
declare const document: {
  querySelector(selector: string): unknown;
  querySelectorAll(selector: string): { length: number };
};

const CHROMIUM = '/usr/bin/chromium';
const ROOT = new URL('../..', import.meta.url).pathname;
const BIN = join(ROOT, 'bin/vfio-migrate.js');
const ARTIFACTS = join(ROOT, 'test-artifacts');
const PLOTS = ['throughput', 'passes', 'device', 'downtime'];
const skip = existsSync(CHROMIUM)
  ? false
  : `no ${CHROMIUM}: install Debian's chromium (apt-get install -y chromium; .ci/run does) to run the report in a browser`;

let browser: Browser | undefined;
let dir = '';

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'report-browser-'));
  if (skip) return;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});

after(async () => {
  await browser?.close();
  rmSync(dir, { recursive: true, force: true });
});

/** Loads a report offline; returns the marks each plot drew, what went wrong, and the page's text. */
async function load(html: string, screenshot: string) {
  const context = await browser!.newContext({ viewport: { width: 1200, height: 900 }, offline: true });
  const blocked: string[] = [];
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (url.startsWith('file:')) return route.continue();
    blocked.push(url);
    return route.abort();
  });
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') errors.push(`console ${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  await page.goto(`file://${html}`);
  // Rendering is asynchronous (vega-embed); wait until every plot has its SVG or says why not.
  await page.waitForFunction(
    (ids) => ids.every((id) => document.querySelector(`#plot-${id} svg, #plot-${id} .empty`)),
    PLOTS,
    { timeout: 60_000 },
  );
  const marks = await page.evaluate(
    (ids) =>
      Object.fromEntries(
        ids.map((id) => [id, document.querySelectorAll(`#plot-${id} svg .role-mark > *`).length]),
      ) as Record<string, number>,
    PLOTS,
  );
  const text = (await page.textContent('body')) ?? '';
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: true });
  await context.close();
  return { marks, errors, blocked, text };
}

test('a report from a real recorded migration draws every plot offline, without errors', { skip }, async (t) => {
  const recording = join(dir, 'migration.jsonl');
  const deviceArgs = ['--device-mem', '8M', '--work-rate', '200'];
  const pair = await startLocalPair({
    memSize: '64M',
    source: {
      device: 'large-memory',
      deviceArgs,
      vmmArgs: ['--fill', 'random', '--dirty-rate', '500', '--record', recording],
    },
    destination: { device: 'large-memory', deviceArgs },
  });
  let info: Record<string, unknown>;
  try {
    // A bandwidth cap makes the migration last several seconds on any machine: several passes and
    // samples to plot, whatever the machine's speed.
    await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 16 * 1024 * 1024, 'downtime-limit': 300 });
    await pair.src.execute('migrate', { uri: pair.uri });
    info = await waitForMigration(pair.src, { timeoutMs: 300_000 });
  } finally {
    await pair.stop(); // the source VMM flushes its recording as it exits
  }
  assert.equal(info.status, 'completed');
  const html = join(dir, 'report.html');
  const data = writeReport(recording, html);
  assert.equal(data.status, 'completed');
  assert.ok(data.passes.length >= 2, `${data.passes.length} passes`);
  assert.equal(data.downtimeMs, info.downtime);
  const page = readFileSync(html, 'utf8');
  assert.doesNotMatch(page, /<script[^>]+src=|<link[^>]+href=/i, 'every script and style is inlined');

  const shot = join(ARTIFACTS, 'report.png');
  const r = await load(html, shot);
  t.diagnostic(`screenshot: ${shot}`);
  t.diagnostic(`marks per plot: ${JSON.stringify(r.marks)}`);
  assert.deepEqual(r.errors, []);
  assert.deepEqual(r.blocked, [], 'the report asked for nothing off the file');
  for (const id of PLOTS) assert.ok(r.marks[id]! > 0, `plot ${id} drew no marks`);
  // Bars: one per pass; the downtime bar: one segment per phase (plus its rules and labels).
  assert.ok(r.marks.passes! >= data.passes.length);
  assert.ok(r.marks.downtime! >= data.downtime.length);
  assert.match(r.text, /completed/);
});

test('demo --report writes a report with the verification, which renders offline', { skip }, async (t) => {
  const html = join(dir, 'demo.html');
  const child = spawn(
    process.execPath,
    [
      BIN,
      'demo',
      '--mem',
      '64M',
      '--device-mem',
      '8M',
      '--device-rate',
      '200',
      '--dirty-rate',
      '500',
      '--report',
      html,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  assert.equal(code, 0, out);
  assert.match(out, new RegExp(`report: +${html}`));
  const shot = join(ARTIFACTS, 'demo-report.png');
  const r = await load(html, shot);
  t.diagnostic(`screenshot: ${shot}`);
  assert.deepEqual(r.errors, []);
  assert.deepEqual(r.blocked, []);
  // Throughput is left out here: the demo's migration is not slowed, and a fast one may give a single
  // window (the first test checks that plot on a migration made to last).
  for (const id of ['passes', 'device', 'downtime']) assert.ok(r.marks[id]! > 0, `plot ${id} drew no marks`);
  assert.match(r.text, /Verification/);
  assert.match(r.text, /guest RAM: page digests equal at the stop point/);
  assert.match(r.text, /destination: running on/);
  assert.match(r.text, /verified\s*equal/i);
});
