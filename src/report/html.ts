// The migration report as one self-contained HTML file: the data of report-data.ts, Vega-Lite specs for
// its plots, and the vega, vega-lite and vega-embed browser bundles inlined from node_modules, so that it
// opens offline and can be mailed to a colleague. No QEMU counterpart.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { ReportData } from './report-data.ts';

const require = createRequire(import.meta.url);

/** The built browser bundles, in load order (vega-embed finds vega and vega-lite as globals). */
function bundles(): string[] {
  const dirOf = (pkg: string) => dirname(require.resolve(`${pkg}/package.json`));
  // vega-embed's exports map hides its package.json; its main entry lives in build/ beside the bundle.
  const embed = join(dirname(require.resolve('vega-embed')), 'vega-embed.min.js');
  return [join(dirOf('vega'), 'build/vega.min.js'), join(dirOf('vega-lite'), 'build/vega-lite.min.js'), embed].map(
    (f) => readFileSync(f, 'utf8'),
  );
}

/** Text safe inside a <script> element (no `</script`, no `<!--`). */
function scriptSafe(js: string): string {
  return js.replace(/<\/(script)/gi, '<\\/$1').replace(/<!--/g, '<\\!--');
}

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function size(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(v >= 100 ? 0 : 1)} ${units[u]}`;
}

const COLORS = {
  ram: '#4c78a8',
  device: '#f58518',
  pending: '#e45756',
  limit: '#b00020',
  dirty: '#54a24b',
  muted: '#5b6475',
};
const WIDTH = 470;
const HEIGHT = 220;

type Spec = Record<string, unknown>;

/** One Vega-Lite spec per plot, keyed by the id of the element it is drawn in. */
export function plotSpecs(d: ReportData): Record<string, Spec> {
  const config = {
    legend: { orient: 'bottom', direction: 'horizontal', titleFontSize: 11, labelFontSize: 11 },
    axis: { labelColor: '#3b4252', titleColor: '#3b4252', gridColor: '#eceff3' },
    view: { stroke: null },
  };
  const base = { $schema: 'https://vega.github.io/schema/vega-lite/v5.json', width: WIDTH, height: HEIGHT, config };
  const time = {
    field: 't',
    type: 'quantitative',
    title: d.role === 'source' ? 'time since migrate (s)' : 'time since the incoming migration started (s)',
  };
  /** Bytes shown in MiB (binary, as the rest of the tool prints sizes). */
  const toMiB = (field: string) => ({ calculate: `datum.${field} / 1048576`, as: `${field}MiB` });
  const mib = (field: string, title: string) => ({
    field: `${field}MiB`,
    type: 'quantitative',
    title,
    axis: { format: ',.3~r' },
  });
  const specs: Record<string, Spec> = {};
  specs.throughput = {
    ...base,
    data: { values: d.throughput },
    mark: { type: 'area', line: true, interpolate: 'step-before', opacity: 0.75 },
    encoding: {
      x: time,
      y: { field: 'mbPerS', type: 'quantitative', title: 'MB/s', stack: 'zero' },
      color: {
        field: 'part',
        type: 'nominal',
        title: d.role === 'source' ? 'sent' : 'received',
        scale: { domain: ['RAM', 'device'], range: [COLORS.ram, COLORS.device] },
      },
      tooltip: [time, { field: 'part' }, { field: 'mbPerS', format: '.1f', title: 'MB/s' }],
    },
  };
  specs.passes = {
    ...base,
    width: WIDTH - 40, // room for the second axis
    data: { values: d.passes },
    transform: [toMiB('remainingBytes'), toMiB('sentBytes')],
    encoding: { x: { field: 'pass', type: 'ordinal', title: 'pass (dirty-log sync)', axis: { labelAngle: 0 } } },
    layer: [
      {
        mark: { type: 'bar', color: COLORS.ram, opacity: 0.8 },
        encoding: {
          y: mib('remainingBytes', 'RAM dirty at the pass start (MiB)'),
          tooltip: [
            { field: 'pass' },
            { field: 'remainingBytesMiB', title: 'MiB dirty at start', format: '.1f' },
            { field: 'sentBytesMiB', title: 'MiB sent in the pass', format: '.1f' },
          ],
        },
      },
      {
        mark: { type: 'line', color: COLORS.dirty, point: { color: COLORS.dirty, size: 60 }, strokeWidth: 2 },
        encoding: {
          y: {
            field: 'dirtyPagesPerS',
            type: 'quantitative',
            title: 'guest dirty rate (pages/s)',
            axis: { titleColor: COLORS.dirty },
          },
          tooltip: [{ field: 'pass' }, { field: 'dirtyPagesPerS', title: 'pages/s' }],
        },
      },
    ],
    resolve: { scale: { y: 'independent' } },
  };
  specs.device = {
    ...base,
    data: { values: d.device },
    transform: [toMiB('bytes')],
    mark: { type: 'line', interpolate: 'step-after', point: { size: 18 }, strokeWidth: 2 },
    encoding: {
      x: time,
      y: mib('bytes', 'device data (MiB)'),
      color: {
        field: 'series',
        type: 'nominal',
        title: 'device',
        scale:
          d.role === 'source'
            ? { domain: ['sent', 'pending'], range: [COLORS.device, COLORS.pending] }
            : { domain: ['received'], range: [COLORS.device] },
      },
      tooltip: [time, { field: 'series' }, { field: 'bytesMiB', title: 'MiB', format: '.1f' }],
    },
  };
  const rules = [
    ...(d.downtimeLimitMs !== null
      ? [{ kind: 'limit', label: `limit ${d.downtimeLimitMs} ms`, ms: d.downtimeLimitMs }]
      : []),
    ...(d.expectedDowntimeMs !== null
      ? [{ kind: 'expected', label: `expected ${d.expectedDowntimeMs} ms`, ms: d.expectedDowntimeMs }]
      : []),
  ];
  specs.downtime = {
    $schema: base.$schema,
    config,
    width: WIDTH,
    height: 90,
    resolve: { scale: { color: 'independent' } },
    layer: [
      {
        data: { values: d.downtime.map((p, i) => ({ ...p, order: i })) },
        mark: { type: 'bar', height: 34 },
        encoding: {
          x: {
            field: 'ms',
            type: 'quantitative',
            stack: 'zero',
            title: 'ms (VM stopped)',
            // Room right of the furthest rule for its label.
            scale: { domain: [0, 1.2 * Math.max(1, d.downtimeMs ?? 0, ...rules.map((r) => r.ms))], nice: false },
          },
          color: {
            field: 'phase',
            type: 'nominal',
            title: 'downtime phase',
            sort: d.downtime.map((p) => p.phase),
            legend: { columns: 3, direction: 'vertical' },
            scale: { scheme: 'tableau10' },
          },
          order: { field: 'order' },
          tooltip: [{ field: 'phase' }, { field: 'ms', format: '.1f' }],
        },
      },
      {
        data: { values: rules },
        mark: { type: 'rule', strokeWidth: 2, strokeDash: [5, 3] },
        encoding: {
          x: { field: 'ms', type: 'quantitative' },
          color: {
            field: 'kind',
            type: 'nominal',
            scale: { domain: ['limit', 'expected'], range: [COLORS.limit, COLORS.muted] },
            legend: null,
          },
          tooltip: [{ field: 'label' }],
        },
      },
      // The limit's label right of its rule, the expected downtime's left of its own: they never overlap.
      ...(['limit', 'expected'] as const).map((kind) => ({
        data: { values: rules.filter((r) => r.kind === kind) },
        mark: {
          type: 'text',
          align: kind === 'limit' ? 'left' : 'right',
          dx: kind === 'limit' ? 4 : -4,
          dy: -36,
          fontSize: 11,
          color: kind === 'limit' ? COLORS.limit : COLORS.muted,
        },
        encoding: { x: { field: 'ms', type: 'quantitative' }, text: { field: 'label' } },
      })),
    ],
  };
  if (d.role === 'destination') {
    delete specs.passes;
    delete specs.downtime;
    specs.received = {
      ...base,
      data: { values: d.ramReceived },
      transform: [toMiB('bytes')],
      mark: {
        type: 'area',
        line: true,
        interpolate: 'step-after',
        color: COLORS.ram,
        opacity: 0.6,
        point: { size: 18 },
      },
      encoding: {
        x: time,
        y: mib('bytes', 'RAM received (MiB)'),
        tooltip: [time, { field: 'bytesMiB', title: 'MiB', format: '.1f' }],
      },
    };
    specs.timeline = {
      $schema: base.$schema,
      config,
      width: WIDTH,
      height: 90,
      data: { values: d.timeline.map((p, i) => ({ ...p, order: i })) },
      mark: { type: 'bar', height: 34 },
      encoding: {
        x: { field: 'ms', type: 'quantitative', stack: 'zero', title: 'ms since the incoming migration started' },
        color: {
          field: 'phase',
          type: 'nominal',
          title: 'phase',
          sort: d.timeline.map((p) => p.phase),
          legend: { columns: 3, direction: 'vertical' },
          scale: { scheme: 'tableau10' },
        },
        order: { field: 'order' },
        tooltip: [{ field: 'phase' }, { field: 'ms', format: '.1f' }],
      },
    };
  }
  return specs;
}

/** The plots of a destination's recording: what arrived, and its own timeline. */
const DESTINATION_PLOTS: [id: string, title: string, what: string][] = [
  ['throughput', 'Throughput over time', 'RAM and device bytes received per second, between consecutive samples.'],
  ['received', 'RAM received', 'Guest RAM payload received so far (pages and zero-page records).'],
  ['device', 'Device data', 'Device bytes received so far.'],
  [
    'timeline',
    'The migration as seen here',
    'Waiting for the first section, receiving the stream, then from the last section to the VM started: the load’s checks, READY, GO. The source’s stop is not visible here; its switch-over ends inside the last two.',
  ],
];

const PLOTS: [id: string, title: string, what: string][] = [
  ['throughput', 'Throughput over time', 'RAM and device bytes sent per second, between consecutive samples.'],
  [
    'passes',
    'RAM per pass',
    'RAM still dirty when each pass began (bars) and the guest dirty rate measured then (line).',
  ],
  ['device', 'Device data', 'Device bytes sent so far, and pending bytes as each pass counted them.'],
  [
    'downtime',
    'Downtime against the limit',
    'Where the switch-over time went, phase by phase, against the downtime limit and the expected downtime.',
  ],
];

const CSS = `
:root { color-scheme: light; --fg: #1d2330; --muted: #5b6475; --line: #dfe3ea; --ok: #1a7f37; --bad: #b00020; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
  background: #f5f6f8; }
header { background: #1d2330; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 20px; font-weight: 600; }
header p { margin: 0; color: #c5cbd6; }
main { padding: 20px 28px 32px; max-width: 1280px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(160px, 1fr)); gap: 12px; margin-bottom: 18px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
.card .k { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .v { font-size: 19px; font-weight: 600; margin-top: 2px; }
.ok { color: var(--ok); } .bad { color: var(--bad); }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 16px; }
section.plot, section.verify { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; }
section h2 { margin: 0; font-size: 15px; }
section p.what { margin: 2px 0 8px; color: var(--muted); font-size: 12.5px; }
section.verify { margin-top: 16px; }
section.verify ul { margin: 6px 0 0; padding-left: 0; list-style: none; }
section.verify li { padding: 3px 0; }
.empty { color: var(--muted); font-style: italic; padding: 30px 0; }
`;

/** The report: a complete HTML document with everything inlined. */
export function renderReportHtml(d: ReportData, title = 'vfio-migrate: migration report'): string {
  const specs = plotSpecs(d);
  const plots = d.role === 'source' ? PLOTS : DESTINATION_PLOTS;
  const s = d.summary;
  const completed = d.status === 'completed';
  const withinLimit = d.downtimeMs !== null && d.downtimeLimitMs !== null ? d.downtimeMs <= d.downtimeLimitMs : null;
  const afterLast = d.timeline.at(-1);
  const cards: [string, string, string?][] =
    d.role === 'destination'
      ? [
          ['role', 'destination'],
          ['status', d.status, completed ? 'ok' : 'bad'],
          ['total time', s.totalTimeMs !== null ? `${(s.totalTimeMs / 1000).toFixed(2)} s` : '-'],
          ['last section to start', afterLast ? `${afterLast.ms.toFixed(1)} ms` : '-'],
          ['guest RAM', size(s.ramBytes)],
          ['RAM received', size(s.ramSentBytes)],
          ['device received', size(s.deviceSentBytes)],
          ['sections', s.sections !== null ? String(s.sections) : '-'],
        ]
      : [
          ['status', d.status, completed ? 'ok' : 'bad'],
          ['total time', s.totalTimeMs !== null ? `${(s.totalTimeMs / 1000).toFixed(2)} s` : '-'],
          [
            'downtime',
            d.downtimeMs !== null
              ? `${d.downtimeMs} ms${d.downtimeLimitMs !== null ? ` / ${d.downtimeLimitMs}` : ''}`
              : '-',
            withinLimit === null ? undefined : withinLimit ? 'ok' : 'bad',
          ],
          ['passes', String(s.passes)],
          ['guest RAM', size(s.ramBytes)],
          ['RAM sent', size(s.ramSentBytes)],
          ['device sent', size(s.deviceSentBytes)],
        ];
  if (d.verification)
    cards.push(
      d.role === 'source'
        ? ['verified', d.verification.ok ? 'equal' : 'DIFFERS', d.verification.ok ? 'ok' : 'bad']
        : ['checks', d.verification.ok ? 'passed' : 'FAILED', d.verification.ok ? 'ok' : 'bad'],
    );
  const empty = (id: string) =>
    id === 'downtime' ? d.downtime.length === 0 : ((specs[id]!.data as { values: unknown[] }).values.length ?? 0) === 0;
  const verify = d.verification
    ? `<section class="verify" id="verification"><h2>Verification</h2>
<p class="what">${
        d.role === 'source'
          ? 'What the demo checked after the migration, source against destination.'
          : 'What this destination checked as it loaded the migration (a load that fails a check answers ERROR, not READY).'
      }</p>
<ul>${d.verification.checks
        .map(
          (c) => `<li><b class="${c.ok ? 'ok' : 'bad'}">${c.ok ? '✔' : '✘'}</b> ${esc(c.name)}: ${esc(c.detail)}</li>`,
        )
        .join('\n')}</ul></section>`
    : '';
  const data = JSON.stringify({ specs, empty: plots.map(([id]) => id).filter(empty) }).replace(/</g, '\\u003c');
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)}</title>
<style>${CSS}</style>
</head>
<body>
<header><h1>${esc(title)}</h1><p>recorded ${esc(d.startedAt || 'at an unknown time')} · ${s.samples} samples, ${s.events} events${
    s.error ? ` · error: ${esc(s.error)}` : ''
  }</p></header>
<main>
<div class="cards">${cards
    .map(
      ([k, v, cls]) =>
        `<div class="card"><div class="k">${esc(k)}</div><div class="v${cls ? ` ${cls}` : ''}">${esc(v)}</div></div>`,
    )
    .join('')}</div>
<div class="grid">
${plots
  .map(
    ([id, h, what]) =>
      `<section class="plot"><h2>${esc(h)}</h2><p class="what">${esc(what)}</p><div id="plot-${id}" data-plot="${id}"></div></section>`,
  )
  .join('\n')}
</div>
${verify}
</main>
${bundles()
  .map((b) => `<script>${scriptSafe(b)}</script>`)
  .join('\n')}
<script>
(function () {
  var report = ${data};
  Object.keys(report.specs).forEach(function (id) {
    var el = document.getElementById('plot-' + id);
    if (report.empty.indexOf(id) >= 0) {
      el.innerHTML = '<div class="empty">nothing recorded for this plot</div>';
      return;
    }
    vegaEmbed(el, report.specs[id], { actions: false, renderer: 'svg' }).catch(function (err) {
      el.textContent = 'plot failed: ' + err.message;
      console.error(err);
    });
  });
})();
</script>
</body>
</html>
`;
}
