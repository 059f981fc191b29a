// Live migration end to end: two device servers and two VMMs as separate processes, real sockets, real
// TCP. Each test proves nothing was lost: digests of every guest page and of the device at the
// destination (kept paused after loading) equal the source's at its stop point.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { guestRamHugeKib } from '../../src/harness/guest-ram-usage.ts';
import { type LocalPair, startLocalPair, waitForMigration } from '../../src/harness/local-hosts.ts';
import { DEFAULT_DATA_SIZE } from '../../src/vfio-user/hosted-device.ts';
import { collapseSkipReason } from '../support/huge-pages.ts';
import { until } from '../support/until.ts';
import { type Digests, migrateToEnd } from './support/migrate.ts';

async function migrateAndVerify(pair: LocalPair, params: Record<string, number> = {}) {
  if (Object.keys(params).length) await pair.src.execute('migrate-set-parameters', params);
  const { info, src: a, dst: b } = await migrateToEnd(pair);
  assert.equal(b.ram, a.ram, 'every guest page at the destination equals the source at the stop point');
  assert.deepEqual(
    b.devices.map((d) => d.digest),
    a.devices.map((d) => d.digest),
    'device state equal',
  );
  assert.deepEqual(await pair.src.execute('query-status'), {
    running: false,
    singlestep: false,
    status: 'postmigrate',
  });
  return info;
}

describe('live migration across processes', () => {
  test('a VM dirtying memory, with a large-memory device doing DMA during pre-copy', async () => {
    const pair = await startLocalPair({
      memSize: '128M',
      paused: true,
      source: {
        device: 'large-memory',
        // Random memory: every block goes whole, so "the device memory moved" does not wait on the
        // device's work having touched every block (which a starved device process may not have done).
        deviceArgs: ['--device-mem', '16M', '--device-fill', 'random', '--work-rate', '20000'],
        vmmArgs: ['--dirty-rate', '20000'],
      },
      destination: { device: 'large-memory', deviceArgs: ['--device-mem', '16M', '--work-rate', '20000'] },
    });
    try {
      const info = await migrateAndVerify(pair);
      const ram = info.ram as Record<string, number>;
      assert.ok(ram.normal! > 0 && ram.duplicate! > 0, 'pages and zero pages both sent');
      // Pages dirtied since the last pre-copy sync go while the VM is stopped, counted as downtime bytes.
      // Whether there are any depends on the vCPUs getting CPU time in that window (not asserted: a
      // loaded machine may give them none); that every byte is counted on one side or the other is certain.
      assert.equal(ram['precopy-bytes']! + ram['downtime-bytes']!, ram.transferred);
      assert.ok((info.vfio as { transferred: number }).transferred > 16 << 20, 'the device memory moved');
      assert.ok(typeof info.downtime === 'number');
      // The destination runs the guest on: cont, and its vCPUs and device change memory again.
      const before = await pair.dst.execute<Digests>('x-query-digests');
      await pair.dst.execute('cont');
      assert.equal((await pair.dst.execute<{ status: string }>('query-status')).status, 'running');
      await ramChanges(pair.dst, before.ram, 'the guest goes on at the destination');
      await pair.dst.execute('stop');
    } finally {
      await pair.stop();
    }
  });

  test('a prefaulted destination (--prefault, no populate per section) loads every page', async () => {
    const pair = await startLocalPair({
      memSize: '64M',
      paused: true,
      source: { device: 'register-file', vmmArgs: ['--dirty-rate', '20000', '--fill', 'random'] },
      destination: { device: 'register-file', vmmArgs: ['--prefault'] },
    });
    try {
      const info = await migrateAndVerify(pair);
      assert.ok((info.ram as Record<string, number>).normal! > 0, 'data pages sent');
    } finally {
      await pair.stop();
    }
  });

  test('a fresh destination collapses the RAM it received into huge pages afterwards, changing no byte', async (t) => {
    const pair = await startLocalPair({
      memSize: '64M',
      paused: true,
      source: { vmmArgs: ['--dirty-rate', '0', '--fill', 'random'] },
      destination: {},
    });
    try {
      const before = guestRamHugeKib(pair.procs.dstVmm.child.pid!);
      await migrateAndVerify(pair);
      type Mem = {
        'huge-page-sweep': string;
        'huge-page-passes': number;
        'swept-huge-bytes': number;
        'swept-failure': string | null;
      };
      let mem: Mem | undefined;
      await until(async () => {
        mem = await pair.dst.execute<Mem>('x-query-guest-memory');
        return mem['huge-page-passes'] >= 1 || mem['huge-page-sweep'] !== 'active';
      }, "the huge-page sweep's first pass");
      const skip = collapseSkipReason(mem!['swept-failure']);
      if (skip) return t.skip(skip);
      // It goes on (a pass every few seconds, as khugepaged does), and nothing failed.
      assert.deepEqual([mem!['huge-page-sweep'], mem!['swept-failure']], ['active', null]);
      const huge = guestRamHugeKib(pair.procs.dstVmm.child.pid!);
      // A random guest is allocated in full: every 2 MiB block collapses, and the kernel maps it so.
      assert.equal(before, 0, 'fresh guest RAM holds no huge page before the migration');
      assert.equal(mem!['swept-huge-bytes'], 64 << 20);
      assert.equal(huge, 64 << 10, 'all 64 MiB mapped with 2 MiB entries');
      const [a, b] = await Promise.all([
        pair.src.execute<Digests>('x-query-digests'),
        pair.dst.execute<Digests>('x-query-digests'),
      ]);
      assert.equal(b.ram, a.ram, 'collapsing changed no byte of guest RAM');
    } finally {
      await pair.stop();
    }
  });

  test('a device whose state takes many chunks over several pre-copy rounds, through a trapped data section', async () => {
    // The rounds are made, not hoped for: the device releases at most QUOTA bytes per pre-copy round
    // (serve --x-precopy-quota) while its pending_bytes counts all of its state, and the VMM may only
    // switch over once everything pending fits THRESHOLD (avail-switchover-bandwidth × downtime-limit, the
    // switch-over's fixed costs only add to that). Nothing re-dirties anything (no device work, an idle
    // guest), so the state is exactly the 32 MiB of random memory plus record headers, and the number of
    // rounds follows from these figures alone, however fast or slow the machine. The first test covers
    // a device re-dirtying its memory between rounds.
    const MiB = 1 << 20;
    const DEVICE_MEM = 32 * MiB;
    const QUOTA = 4 * MiB;
    const DOWNTIME_LIMIT_MS = 1000;
    const AVAIL_BANDWIDTH = 2 * MiB; // bytes/s: THRESHOLD = 2 MiB
    const THRESHOLD = (AVAIL_BANDWIDTH * DOWNTIME_LIMIT_MS) / 1000;
    const device = {
      device: 'large-memory',
      deviceArgs: ['--device-mem', '32M', '--device-fill', 'random', '--work-rate', '0', '--data-section', 'trapped'],
      vmmArgs: ['--dirty-rate', '0'],
    };
    const pair = await startLocalPair({
      memSize: '64M',
      paused: true,
      source: { ...device, deviceArgs: [...device.deviceArgs, '--x-precopy-quota', '4M'] },
      destination: device,
    });
    try {
      await migrateAndVerify(pair, {
        'downtime-limit': DOWNTIME_LIMIT_MS,
        'avail-switchover-bandwidth': AVAIL_BANDWIDTH,
      });
      type Vfio = { chunks: number; 'precopy-rounds': number; transferred: number }[];
      const [src] = await pair.src.execute<Vfio>('x-query-vfio');
      const [dst] = await pair.dst.execute<Vfio>('x-query-vfio');
      const rounds = src!['precopy-rounds'];
      console.log(`device: ${src!.chunks} chunks, ${rounds} pre-copy rounds, ${src!.transferred} bytes`);
      // The state is more than DEVICE_MEM (every block is random, so each goes whole, with a header).
      assert.ok(src!.transferred > DEVICE_MEM, `the device sent ${src!.transferred} bytes`);
      // Pending after k rounds is at least DEVICE_MEM - k × QUOTA: above THRESHOLD until k reaches this.
      const fewest = Math.ceil((DEVICE_MEM - THRESHOLD) / QUOTA); // 8
      // After this many rounds nothing is left to release while running, and a pass without data is no round.
      const most = Math.ceil(src!.transferred / QUOTA); // 9
      assert.ok(rounds >= fewest && rounds <= most, `${rounds} pre-copy rounds, expected ${fewest} to ${most}`);
      // A chunk holds at most one data section (the seed default), and at most one round's quota.
      const perChunk = Math.min(DEFAULT_DATA_SIZE.seed, QUOTA);
      assert.ok(src!.chunks >= DEVICE_MEM / perChunk, `the state moved in ${src!.chunks} chunks`);
      assert.equal(dst!.chunks, src!.chunks, 'the destination loaded every chunk the source sent');
      assert.equal(dst!.transferred, src!.transferred);
    } finally {
      await pair.stop();
    }
  });

  test('an idle VM with a register-file device', async () => {
    const pair = await startLocalPair({
      memSize: '64M',
      paused: true,
      source: { device: 'register-file', vmmArgs: ['--dirty-rate', '0'] },
      destination: { device: 'register-file', vmmArgs: ['--dirty-rate', '0'] },
    });
    try {
      // The real VMM behind QMP checks arguments as QEMU does, before anything starts.
      const refused = async (cmd: string, args: Record<string, unknown>, desc: RegExp) =>
        assert.rejects(pair.src.execute(cmd, args), (e: { errorClass?: string; message: string }) => {
          assert.equal(e.errorClass, 'GenericError', e.message);
          assert.match(e.message, desc);
          return true;
        });
      await refused('migrate', { uri: 'tcp:127.0.0.1' }, /error parsing address/);
      await refused('migrate', { uri: 'unix:/tmp/x' }, /not supported here/);
      await refused('migrate-set-parameters', { 'downtime-limit': 2_000_001 }, /downtime_limit/);
      assert.deepEqual(await pair.src.execute('query-migrate'), {}, 'QEMU answers {} before any migration');
      const info = await migrateAndVerify(pair);
      assert.ok((info.ram as { duplicate: number }).duplicate > 0);
      const ram = info.ram as Record<string, number>;
      assert.equal(ram['precopy-bytes'], ram.transferred, 'an idle guest dirties nothing after the stop');
      assert.equal(ram['downtime-bytes'], 0);
      for (const k of ['postcopy-requests', 'multifd-bytes', 'pages-per-second', 'mbps'])
        assert.equal(typeof ram[k], 'number', `QAPI MigrationStats member ${k}`);
    } finally {
      await pair.stop();
    }
  });

  test('cancel during pre-copy leaves the source running with its device running; a second migrate succeeds', async () => {
    const pair = await startLocalPair({
      memSize: '256M',
      paused: true,
      source: {
        device: 'large-memory',
        deviceArgs: ['--device-mem', '16M', '--device-fill', 'random'],
        vmmArgs: ['--dirty-rate', '20000'],
      },
      destination: { device: 'large-memory', deviceArgs: ['--device-mem', '16M'] },
    });
    try {
      // The migration stays in pre-copy long past the cancel: with downtime-limit 0 it switches over only
      // once nothing at all is pending, and the device's 16 MiB of random memory (incompressible) alone
      // takes 16 s through a 1 MiB/s link, on any machine (a slow one only takes longer).
      await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 1 << 20, 'downtime-limit': 0 });
      await pair.src.execute('migrate', { uri: pair.uri });
      await waitForActive(pair);
      await pair.src.execute('migrate_cancel');
      const info = await waitForMigration(pair.src);
      assert.equal(info.status, 'cancelled');
      assert.equal((await pair.src.execute<{ status: string }>('query-status')).status, 'running');
      const vfio = await pair.src.execute<{ 'device-state': number }[]>('x-query-vfio');
      assert.deepEqual(
        vfio.map((d) => d['device-state']),
        [1],
        'the device is back in RUNNING (not SAVING)',
      );
      // The guest and device keep running after the cancel.
      const a = await pair.src.execute<Digests>('x-query-digests');
      await ramChanges(pair.src, a.ram, 'the guest runs on after the cancel');
      // A second migration succeeds (to a file here: the cancelled destination has given up).
      await pair.src.execute('migrate-set-parameters', { 'max-bandwidth': 0, 'downtime-limit': 300 });
      await pair.src.execute('migrate', { uri: `file:${pair.dir}/retry.vm` });
      const retry = await waitForMigration(pair.src);
      assert.equal(retry.status, 'completed', String(retry['error-desc'] ?? ''));
      assert.equal((await pair.src.execute<{ status: string }>('query-status')).status, 'postmigrate');
    } finally {
      await pair.stop();
    }
  });
});

/** Deadlines here are safety nets against a hang, never what is tested: a loaded machine is slow. */
const DEADLINE_MS = 60_000;

async function waitForActive(pair: LocalPair): Promise<void> {
  const end = Date.now() + DEADLINE_MS;
  let info: Record<string, unknown> = {};
  while (Date.now() < end) {
    info = await pair.src.execute<Record<string, unknown>>('query-migrate');
    // RAM and device bytes together: how much of it is RAM depends on how much the guest wrote so far.
    const sent =
      ((info.ram as { transferred?: number })?.transferred ?? 0) +
      ((info.vfio as { transferred?: number })?.transferred ?? 0);
    if (info.status === 'active' && sent > 1 << 20) return;
    if (['completed', 'failed', 'cancelled'].includes(info.status as string)) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`migration never became active with 1 MiB sent: ${JSON.stringify(info)}`);
}

/** Polls the RAM digest until it differs from `before` (a running guest writes; when is up to the machine). */
async function ramChanges(qmp: LocalPair['src'], before: string, what: string): Promise<void> {
  await until(async () => (await qmp.execute<Digests>('x-query-digests')).ram !== before, `${what}: RAM to change`, {
    ms: DEADLINE_MS,
    everyMs: 50,
  });
}
