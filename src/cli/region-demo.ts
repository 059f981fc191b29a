// `vfio-migrate region-demo`: a live save of a running sample device through its migration region into a fresh
// device instance, in this process. The device keeps changing its memory and doing DMA into a guest
// buffer during pre-copy; the demo switches over when what is left fits the downtime limit at the
// measured rate, resumes the copy, and proves the result: the resumed device equals the source at its
// stop point, and every guest page the device's DMA changed was reported through the dirty bitmap.

import { DeviceState } from '../abi/migration.ts';
import type { DataSectionKind } from '../device/region-layout.ts';
import { LargeMemoryDevice } from '../device/samples/large-memory.ts';
import { RegisterFileDevice } from '../device/samples/register-file.ts';
import type { SampleDevice } from '../device/samples/sample-device.ts';
import { SeedMigrationRegion } from '../device/seed-region.ts';
import { GuestDirtyBitmap } from '../vmm/guest/dirty-bitmap.ts';
import { type LiveSaveStats, saveDeviceLive } from '../vmm/vfio/device-live-save.ts';
import { localRegionPort } from '../vmm/vfio/local-region-port.ts';
import { SeedRegionClient } from '../vmm/vfio/seed-region-client.ts';
import { bytes, ms, ProgressLine, rate } from './format.ts';
import type { RegionDemoOptions } from './options/region-demo.ts';

const PAGE = 4096;

export async function runRegionDemo(o: RegionDemoOptions): Promise<number> {
  const kind: DataSectionKind = o.dataSection;
  const workRate = o.workRate;
  const downtimeMs = o.downtimeLimit;
  const guestSize = o.guest;
  const make = (): SampleDevice =>
    o.device === 'register-file' ? new RegisterFileDevice() : new LargeMemoryDevice({ memSize: o.deviceMem, workRate });

  const src = make();
  const dst = make();
  dst.setWorkRate(0); // the copy does nothing until it is resumed and compared
  const guest = new Uint8Array(guestSize);
  src.attachDma({
    write: (iova, d) => guest.set(d, Number(iova)),
    read: (iova, n) => guest.slice(Number(iova), Number(iova) + n),
  });
  if (src instanceof LargeMemoryDevice) src.configureDma(0n, BigInt(guestSize));
  const srcRegion = new SeedMigrationRegion({ backend: src.migration, kind });
  const dstRegion = new SeedMigrationRegion({ backend: dst.migration, kind });
  const client = new SeedRegionClient(localRegionPort(srcRegion));
  const dirty = new GuestDirtyBitmap(guestSize / PAGE);

  console.log(
    `vfio-migrate demo: ${src.model} device (${bytes(src.stateSize())} of state), ${kind} data section, ` +
      `${workRate} device writes/s with DMA into ${bytes(guestSize)} of guest memory`,
  );
  await new Promise((r) => setTimeout(r, 200)); // the device has been running for a while
  const guestAtStart = guest.slice();
  // The copy resumes as the chunks arrive, as a destination VMM does with chunks off the network.
  const dstClient = new SeedRegionClient(localRegionPort(dstRegion));
  await dstClient.setDeviceState(~DeviceState.MASK, DeviceState.RESUMING);
  let resumeMs = 0;
  const progress = new ProgressLine(process.stderr);
  let digestAtStop = '';
  let guestAtStop = guest;
  const t0 = performance.now();
  const stats: LiveSaveStats = await saveDeviceLive(client, {
    // Switch over when what is pending moves within the downtime limit at the rate measured so far.
    switchoverBytes: (s) => (s.precopyMs > 0 ? (s.precopyBytes / s.precopyMs) * downtimeMs : 0),
    maxIterations: o.maxIterations,
    onChunk: async (c) => {
      const t = performance.now();
      await dstClient.loadBuffer(c);
      resumeMs += performance.now() - t;
    },
    between: () => new Promise((r) => setTimeout(r, 50)),
    logSync: async () => {
      await client.dirtyBitmap(0n, BigInt(PAGE), BigInt(guestSize / PAGE), dirty.sink);
    },
    onStopped: () => {
      digestAtStop = src.stateDigest();
      guestAtStop = guest.slice();
    },
    onProgress: (p) => {
      const total = src.stateSize();
      const frac = p.phase === 'pre-copy' ? Math.min(1, p.sent / (p.sent + Number(p.pending) || 1)) : 1;
      progress.update(
        frac,
        `${p.phase} iteration ${p.iteration}: ${bytes(p.pending)} pending, ${bytes(p.sent)} sent (state ${bytes(total)})`,
      );
    },
  });
  progress.done();
  const saveMs = performance.now() - t0;

  await dstClient.setDeviceState(~DeviceState.MASK, DeviceState.RUNNING);
  const resumedDigest = dst.stateDigest();
  let missed = 0;
  let dmaPages = 0;
  for (let p = 0; p < guestSize / PAGE; p++) {
    const a = guestAtStart.subarray(p * PAGE, (p + 1) * PAGE);
    const b = guestAtStop.subarray(p * PAGE, (p + 1) * PAGE);
    if (Buffer.compare(a, b) !== 0) {
      dmaPages++;
      if (!dirty.has(p)) missed++;
    }
  }
  src.close();
  dst.close();

  const sent = stats.precopyBytes + stats.stopCopyBytes;
  console.log(
    `pre-copy:       ${stats.iterations} iterations, ${bytes(stats.precopyBytes)} at ${rate(stats.precopyBytes, stats.precopyMs)}${stats.converged ? '' : ' (did not converge: switch-over forced)'}`,
  );
  console.log(
    `stop-and-copy:  ${bytes(stats.stopCopyBytes)} in ${ms(stats.stopCopyMs)} (device downtime; limit ${downtimeMs} ms)`,
  );
  console.log(
    `moved:          ${bytes(sent)} in ${stats.chunks} chunks through the region; save ${ms(saveMs)} (of which loading into the copy ${ms(resumeMs)})`,
  );
  console.log(
    `dirty bitmap:   ${dirty.count()} guest pages reported by the device; ${dmaPages} pages changed by its DMA, ${missed} missed`,
  );
  console.log(`device state:   source at stop ${digestAtStop.slice(0, 16)}…, resumed ${resumedDigest.slice(0, 16)}…`);
  console.log(
    `region state:   source ${srcRegion.state === DeviceState.STOPPED ? 'stopped' : srcRegion.state}, resumed ${dstRegion.state === DeviceState.RUNNING ? 'running' : dstRegion.state}`,
  );
  if (resumedDigest !== digestAtStop || missed > 0) {
    console.error(
      resumedDigest !== digestAtStop
        ? 'FAILED: the resumed device differs from the source'
        : `FAILED: ${missed} DMA-dirtied pages were never reported`,
    );
    return 1;
  }
  console.log(
    'verified: the resumed device is identical to the source at its stop point, and no DMA-dirtied page was missed',
  );
  return 0;
}
