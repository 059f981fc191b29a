// One synthetic vCPU: maps guest RAM itself and writes pages at its share of the rate, each write changing
// real bytes, then marking the page dirty. Write first, mark second: a saver that takes the bit and copies
// the page either copies the new bytes or finds the bit set again afterwards, so no write is ever lost.
// Runs as a worker_thread; the main thread steers it through a shared control block.

import { workerData } from 'node:worker_threads';
import { GuestDirtyBitmap } from './dirty-bitmap.ts';
import { GuestMemory, PAGE_SIZE } from './guest-memory.ts';
import { Control, type VcpuConfig } from './workload-control.ts';

const cfg = workerData as VcpuConfig;
const memory = GuestMemory.map(cfg.fd, cfg.size);
const dirty = new GuestDirtyBitmap(cfg.size / PAGE_SIZE, 0n, cfg.bitmap);
const ctl = new Int32Array(cfg.control);
const stats = new Float64Array(cfg.stats);
const TICK_MS = 10;
const perTick = cfg.pagesPerSecond * (TICK_MS / 1000);
let carry = 0;
let rng = (cfg.seed * 2654435761) >>> 0 || 1;
let seq = 0;
let nextSeq = 0;
const hotPages = Math.max(1, Math.floor(memory.pages * cfg.hotFraction));

function next(): number {
  rng ^= rng << 13;
  rng ^= rng >>> 17;
  rng ^= rng << 5;
  rng >>>= 0;
  return rng;
}

function pick(): number {
  switch (cfg.pattern) {
    case 'sequential':
      nextSeq = (nextSeq + 1) % memory.pages;
      return nextSeq;
    case 'hot':
      return next() % 8 !== 0 ? next() % hotPages : next() % memory.pages;
    default:
      return next() % memory.pages;
  }
}

for (;;) {
  const cmd = Atomics.load(ctl, Control.COMMAND);
  if (cmd === Control.STOP) break;
  if (cmd === Control.PAUSE) {
    Atomics.store(ctl, Control.ACK + cfg.index, 1);
    Atomics.notify(ctl, Control.ACK + cfg.index);
    Atomics.wait(ctl, Control.COMMAND, Control.PAUSE);
    Atomics.store(ctl, Control.ACK + cfg.index, 0);
    continue;
  }
  carry += perTick;
  const n = Math.floor(carry);
  carry -= n;
  for (let k = 0; k < n; k++) {
    const page = pick();
    const view = memory.page(page);
    const at = (next() % (PAGE_SIZE / 16)) * 16;
    const dv = new DataView(view.buffer, view.byteOffset + at, 16);
    dv.setFloat64(0, ++seq, true);
    dv.setUint32(8, cfg.index, true);
    dv.setUint32(12, next(), true);
    dirty.set(page);
  }
  stats[cfg.index] = seq;
  // Sleep one tick, but wake at once when the main thread changes the command.
  Atomics.wait(ctl, Control.COMMAND, Control.RUN, TICK_MS);
}
memory.close(true);
