// node scripts/cpu-top.js FILE.cpuprofile [N]: the N (default 15) functions with the most self time in a
// V8 CPU profile (`node --cpu-prof`), with their share of the sampled time, for docs/performance.md's
// "where the time goes". Self time: the samples whose top frame is the function (Chrome DevTools' "Self").
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';

const [file, n = '15'] = process.argv.slice(2);
if (!file) {
  console.error('usage: node scripts/cpu-top.js FILE.cpuprofile [N]');
  process.exit(2);
}
const prof = JSON.parse(readFileSync(file, 'utf8'));
const byId = new Map(prof.nodes.map((node) => [node.id, node]));
// Time per sample: the gap to the next one (timeDeltas[i] is the gap before sample i).
const self = new Map();
let total = 0;
for (let i = 0; i < prof.samples.length; i++) {
  const dt = prof.timeDeltas[i + 1] ?? 0;
  const f = byId.get(prof.samples[i]).callFrame;
  const where = f.url ? `${relative(process.cwd(), new URL(f.url).pathname || f.url)}:${f.lineNumber + 1}` : '';
  const key = `${f.functionName || '(anonymous)'} ${where}`.trim();
  self.set(key, (self.get(key) ?? 0) + dt);
  total += dt;
}
console.log(`${file}: ${(total / 1000).toFixed(0)} ms sampled`);
for (const [key, us] of [...self].sort((a, b) => b[1] - a[1]).slice(0, Number(n)))
  console.log(`${((100 * us) / total).toFixed(1).padStart(5)}%  ${(us / 1000).toFixed(0).padStart(6)} ms  ${key}`);
