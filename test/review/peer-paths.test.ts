// No path that a peer supplies is ever opened. Peers (a vfio-user client or server, the other end of a
// migration stream, a QMP client) send numbers, bytes and fds; the only paths the code opens come from the
// command line or from QMP (`migrate file:PATH`, a socket only its owner can reach: 0600). This test pins
// the reviewed list of places that open, create, connect to or remove a path: a new one fails it until it
// is reviewed for where its path comes from and added here with the answer.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { test } from 'node:test';

const root = new URL('../..', import.meta.url).pathname;
const OPENS =
  /\b(readFileSync|readFile|createReadStream|createWriteStream|openSync|writeFileSync|writeFile|appendFile|unlinkSync|rmSync|renameSync|chmodSync|mkdtempSync|connectUnix|listenUnix|FdSocket\.connect)\s*\(|\bopen\(\s*uri\.path|\bawait open\(/;

/** file → what it opens and where the path comes from (reviewed). */
const REVIEWED: Record<string, string> = {
  'src/cli/analyze.ts': 'the file named on the command line',
  'src/cli/main.ts': "the package's own package.json (--version)",
  'src/native/fd-socket.ts': 'the socket path given to listen()/connect() by the CLI or a test; stale-socket removal',
  'src/native/addon.ts': 'declarations of connectUnix/listenUnix',
  'src/vfio-user/client.ts': 'the device socket path from --device-socket',
  'src/harness/local-hosts.ts': 'its own temporary directory',
  'src/harness/guest-ram-usage.ts': '/proc/PID/smaps of a VMM process the harness or a test started (PID: a number)',
  'src/vmm/qmp/server.ts': 'the QMP socket path from --qmp, a private temp dir beside it, package.json',
  'src/vmm/migration/transport.ts': 'migrate file:PATH from QMP (owner-only socket), created 0600',
  'src/vmm/migration/incoming.ts': '--incoming file:PATH from the command line',
  'src/cli/demo.ts': 'its own temporary directory for the recording (demo --report)',
  'src/cli/report.ts': 'the recording and the HTML file named on the command line (or by demo --report)',
  'src/report/html.ts': 'the vega, vega-lite and vega-embed bundles, resolved in node_modules',
  'src/vmm/migration-recorder.ts': '--record FILE from the command line',
};

function walk(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? walk(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

test('only reviewed code opens paths, and none of those paths comes from a peer', () => {
  const found = new Map<string, string[]>();
  for (const f of walk(join(root, 'src'))) {
    const lines = readFileSync(f, 'utf8').split('\n');
    const hits = lines.filter((l) => !/^\s*(\/\/|\*)/.test(l) && OPENS.test(l));
    if (hits.length > 0)
      found.set(
        relative(root, f),
        hits.map((l) => l.trim()),
      );
  }
  const unreviewed = [...found.keys()].filter((f) => !(f in REVIEWED));
  assert.deepEqual(unreviewed, [], `new path-opening code to review: ${JSON.stringify(Object.fromEntries(found))}`);
  // The list is not stale either: each reviewed file still opens something.
  assert.deepEqual(
    Object.keys(REVIEWED).filter((f) => !found.has(f)),
    [],
    'a reviewed file no longer opens paths: drop it from the list',
  );
});
