// The switchover-ack capability (QEMU 8.1: migration/options.c, hw/vfio/migration.c): a v2 device using
// pre-copy ends its initial data with DEV_INIT_DATA_SENT; the destination, once every such device has
// loaded it, sends SWITCHOVER_ACK on the return path; the source does not stop the VM before that ack,
// however small the pending data. The ack is held by a TCP proxy between the two VMMs (the stream itself
// flows on), so the order of events is made, not hoped for.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { type LocalPair, startLocalPair, waitForMigration } from '../../src/harness/local-hosts.ts';
import { ReturnPathType } from '../../src/stream/return-path.ts';
import { finishMigration } from './support/migrate.ts';
import { TcpProxy } from './support/tcp-proxy.ts';

type VfioInfo = { flavor: string; 'device-state-name': string }[];

const CAPS = [
  { capability: 'return-path', state: true },
  { capability: 'switchover-ack', state: true },
];

async function v2Pair(lines: string[]): Promise<LocalPair> {
  const device = {
    device: 'large-memory',
    deviceArgs: ['--flavor', 'v2', '--device-mem', '2M', '--device-fill', 'random', '--work-rate', '0'],
  };
  return startLocalPair({
    memSize: '16M',
    paused: true,
    log: (l) => lines.push(l),
    source: { ...device, vmmArgs: ['--dirty-rate', '0'] },
    destination: device,
  });
}

/** Resolves once a line matching `re` was logged (a generous safety net, not the thing tested). */
async function logged(lines: string[], re: RegExp, what: string): Promise<number> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const i = lines.findIndex((l) => re.test(l));
    if (i >= 0) return i;
    assert.ok(Date.now() < deadline, `${what}: not logged within 60 s:\n${lines.slice(-20).join('\n')}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const AWAITING = /^src-vmm: .*switchover-ack: converged; pre-copy goes on until the destination acks/;
const APPROVED = /^src-vmm: .*switchover-ack: the destination approved the switch-over/;
const COMPLETED = /^src-vmm: .*migration completed/;

/**
 * Both sides with switchover-ack, a budget that would switch over after the first pass (generous: fixed
 * costs measured on a loaded machine cannot hold it back), the return path's traffic through `proxy`
 * held or dropped (`ack`), then `migrate`: resolves once the destination's SWITCHOVER_ACK reached the
 * proxy and the source logged that it converged and waits for the ack.
 */
async function migrateAwaitingAck(pair: LocalPair, proxy: TcpProxy, lines: string[], ack: 'hold' | 'drop') {
  await pair.src.execute('migrate-set-capabilities', { capabilities: CAPS });
  await pair.dst.execute('migrate-set-capabilities', { capabilities: CAPS });
  await pair.src.execute('migrate-set-parameters', { 'avail-switchover-bandwidth': 1 << 30, 'downtime-limit': 60_000 });
  proxy.setDown(ack);
  await pair.src.execute('migrate', { uri: proxy.uri });
  await proxy.until(
    () => proxy.downMessages.some((m) => m.type === ReturnPathType.SWITCHOVER_ACK),
    `the destination sends SWITCHOVER_ACK (${ack === 'hold' ? 'held' : 'dropped'})`,
    60_000,
  );
  await logged(lines, AWAITING, 'the source converged and waits for the ack');
}

describe('switchover-ack', () => {
  test("QMP: QEMU's names and checks", async () => {
    const pair = await v2Pair([]);
    try {
      const refused = (caps: unknown, re: RegExp) =>
        assert.rejects(pair.src.execute('migrate-set-capabilities', { capabilities: caps }), (e: Error) => {
          assert.match(e.message, re);
          return true;
        });
      await refused(
        [{ capability: 'switchover-ack', state: true }],
        /'switchover-ack' requires capability 'return-path'/,
      );
      await refused([{ capability: 'x-nonsense', state: true }], /does not accept value 'x-nonsense'/);
      await refused([{ capability: 'return-path' }], /capabilities\[0\]\.state' is missing/);
      const off = await pair.src.execute('query-migrate-capabilities');
      assert.deepEqual(off, [
        { capability: 'return-path', state: false },
        { capability: 'switchover-ack', state: false },
        { capability: 'multifd', state: false },
      ]);
      await pair.src.execute('migrate-set-capabilities', { capabilities: CAPS });
      assert.deepEqual(await pair.src.execute('query-migrate-capabilities'), [
        ...CAPS,
        { capability: 'multifd', state: false },
      ]);
      // Turning return-path off under switchover-ack is refused too, and nothing changes.
      await refused([{ capability: 'return-path', state: false }], /requires capability 'return-path'/);
      assert.deepEqual(await pair.src.execute('query-migrate-capabilities'), [
        ...CAPS,
        { capability: 'multifd', state: false },
      ]);
      // A file has no return path to carry the ack.
      await assert.rejects(pair.src.execute('migrate', { uri: `file:${pair.dir}/x.vm` }), /needs a return path/);
    } finally {
      await pair.stop();
    }
  });

  test('the source does not stop the guest before the ack; released, the migration completes', async () => {
    const lines: string[] = [];
    const pair = await v2Pair(lines);
    const proxy = await TcpProxy.start(pair.uri);
    try {
      // The destination acks (after its device loaded the initial data); the proxy holds the ack.
      await migrateAwaitingAck(pair, proxy, lines, 'hold');
      // The source could switch over but does not: pre-copy, guest running, device still in PRE_COPY.
      assert.equal((await pair.src.execute<{ status: string }>('query-migrate')).status, 'active');
      assert.equal((await pair.src.execute<{ status: string }>('query-status')).status, 'running');
      assert.equal((await pair.src.execute<VfioInfo>('x-query-vfio'))[0]!['device-state-name'], 'PRE_COPY');
      assert.equal(
        lines.findIndex((l) => APPROVED.test(l)),
        -1,
        'no ack reached the source yet',
      );
      proxy.setDown('forward');
      const { src: a, dst: b } = await finishMigration(pair, { timeoutMs: 120_000 });
      // In the source's own log (one ordered stream): converged, then the ack, then the switch-over.
      const [waiting, approved, completed] = [AWAITING, APPROVED, COMPLETED].map((re) =>
        lines.findIndex((l) => re.test(l)),
      );
      assert.ok(waiting! >= 0 && waiting! < approved! && approved! < completed!, lines.join('\n'));
      assert.equal(b.ram, a.ram);
      assert.ok(a.devices[0]!.digest);
      assert.equal(b.devices[0]!.digest, a.devices[0]!.digest);
      // The ack came before the destination's READY, as QEMU sends it during pre-copy.
      const types = proxy.downMessages.map((m) => m.type);
      assert.ok(types.indexOf(ReturnPathType.SWITCHOVER_ACK) < types.indexOf(ReturnPathType.READY), String(types));
    } finally {
      await proxy.close();
      await pair.stop();
    }
  });

  test('a destination whose ack never comes holds the source in pre-copy; cancel still works', async () => {
    const lines: string[] = [];
    const pair = await v2Pair(lines);
    const proxy = await TcpProxy.start(pair.uri);
    try {
      await migrateAwaitingAck(pair, proxy, lines, 'drop');
      // Passes go on (MIGRATION_PASS count grows) while the source stays in pre-copy with the guest running.
      const passes = async () =>
        (await pair.src.execute<{ ram: { 'dirty-sync-count': number } }>('query-migrate')).ram['dirty-sync-count'];
      const first = await passes();
      const deadline = Date.now() + 60_000;
      while ((await passes()) < first + 3) {
        assert.ok(Date.now() < deadline, 'the source stopped iterating');
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal((await pair.src.execute<{ status: string }>('query-migrate')).status, 'active');
      assert.equal((await pair.src.execute<{ status: string }>('query-status')).status, 'running');
      await pair.src.execute('migrate_cancel');
      const info = await waitForMigration(pair.src, { timeoutMs: 60_000 });
      assert.equal(info.status, 'cancelled');
      assert.equal((await pair.src.execute<{ status: string }>('query-status')).status, 'running');
      assert.equal((await pair.src.execute<VfioInfo>('x-query-vfio'))[0]!['device-state-name'], 'RUNNING');
      assert.equal(
        lines.findIndex((l) => APPROVED.test(l)),
        -1,
      );
    } finally {
      await proxy.close();
      await pair.stop();
    }
  });
});
