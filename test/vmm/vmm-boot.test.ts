// Vmm.create booting a guest in this process (no devices): the vCPU threads are up before the VM runs, as
// QEMU creates its vCPU threads before the machine starts, so a stop right after boot (a migration's
// switch-over among them) never waits for their start-up.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Vmm } from '../../src/vmm/vmm.ts';

test('a booted VM is running with every vCPU thread up when create() resolves', async () => {
  const vmm = await Vmm.create({
    memSize: 4 << 20,
    deviceSockets: [],
    incoming: false,
    workload: { vcpus: 3, pagesPerSecond: 0, pattern: 'random' },
  });
  try {
    assert.equal(vmm.runState.state, 'running');
    assert.equal(vmm.workload?.vcpus, 3);
    assert.equal(vmm.workload.vcpusUp, 3, 'every vCPU thread entered its loop before the VM was reported running');
  } finally {
    await vmm.close();
  }
});
