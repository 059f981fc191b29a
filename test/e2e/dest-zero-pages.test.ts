// A mostly-zero guest costs the destination no memory for its zero pages: it leaves a page that the
// source sent as a zero page untouched in its fresh memfd, so after the migration the destination's guest
// memfd holds (its allocated pages, guestRamAllocatedKib) only the pages that held data, far below the
// guest's size. Real processes and TCP. The guest's vCPUs write pages until the source's memfd holds at
// least DATA_MIB of guest RAM (it waits for that, however long it takes), then go idle: the rest of the
// guest is zero pages.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { guestRamAllocatedKib } from '../../src/harness/guest-ram-usage.ts';
import { startLocalPair, waitForMigration } from '../../src/harness/local-hosts.ts';

const GUEST_MIB = 1024;
/** The destination may hold at most this much guest RAM: 1/8 of the guest. */
const BOUND_MIB = GUEST_MIB / 8;
/** Guest RAM the vCPUs write before the migration, at least. */
const DATA_MIB = 4;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test(`a mostly-zero ${GUEST_MIB} MiB guest: the destination holds less than ${BOUND_MIB} MiB of it, and its memory equals the source's`, async () => {
  const pair = await startLocalPair({
    memSize: `${GUEST_MIB}M`,
    paused: true,
    source: { device: 'register-file', vmmArgs: ['--dirty-rate', '1000'] },
    destination: { device: 'register-file', vmmArgs: ['--dirty-rate', '0'] },
  });
  try {
    const srcPid = pair.procs.srcVmm.child.pid!;
    const dstPid = pair.procs.dstVmm.child.pid!;
    const before = guestRamAllocatedKib(dstPid);
    // A safety net only: the vCPUs reach DATA_MIB whenever they get CPU time.
    const deadline = Date.now() + 120_000;
    while (guestRamAllocatedKib(srcPid) < DATA_MIB << 10) {
      assert.ok(Date.now() < deadline, 'the guest wrote too little in 120 s');
      await sleep(20);
    }
    await pair.src.execute('x-guest-dirty-rate', { 'pages-per-second': 0 }, { timeoutMs: 60_000 });
    await pair.src.execute('migrate', { uri: pair.uri });
    const info = await waitForMigration(pair.src);
    assert.equal(info.status, 'completed', `migration ended ${info.status}: ${info['error-desc'] ?? ''}`);
    assert.equal((await waitForMigration(pair.dst)).status, 'completed');
    const ram = info.ram as Record<string, number>;
    // Measured before any digest: digests read every page, and reading a memfd hole allocates it.
    const dstMib = (guestRamAllocatedKib(dstPid) - before) / 1024;
    // The source holds what its vCPUs wrote: its scan found the rest in holes, unread. The destination
    // holds no more than that.
    const srcMib = guestRamAllocatedKib(srcPid) / 1024;
    console.log(
      `destination guest memfd +${dstMib.toFixed(1)} MiB after a ${GUEST_MIB} MiB guest: ` +
        `${ram.normal} data pages, ${ram.duplicate} zero pages sent; the source's holds ${srcMib.toFixed(1)} MiB`,
    );
    assert.ok(ram.normal! >= (DATA_MIB << 8) * 0.5, 'the data pages went with their contents');
    assert.ok(ram.duplicate! > (GUEST_MIB << 8) * 0.9, 'the guest is mostly zero pages');
    assert.ok(dstMib <= srcMib + 1, `the destination holds ${dstMib.toFixed(1)} MiB, the source ${srcMib.toFixed(1)}`);
    assert.ok(dstMib >= DATA_MIB / 2, `the destination holds ${dstMib.toFixed(1)} MiB: not its data pages`);
    assert.ok(dstMib < BOUND_MIB, `the destination holds ${dstMib.toFixed(1)} MiB of guest RAM`);
    // Each digest reads 1 GiB (the destination's faulting in its holes): no 10 s default on a busy machine.
    const [a, b] = await Promise.all([
      pair.src.execute<{ ram: string }>('x-query-digests', undefined, { timeoutMs: 120_000 }),
      pair.dst.execute<{ ram: string }>('x-query-digests', undefined, { timeoutMs: 120_000 }),
    ]);
    assert.equal(b.ram, a.ram, 'every guest page at the destination equals the source');
  } finally {
    await pair.stop();
  }
});
