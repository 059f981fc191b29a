// One synthetic vCPU, run as a worker_thread: maps guest RAM itself (from the memfd, as a device server
// would) and writes pages at its share of the workload's rate, then marks them in the shared dirty log.
// The main thread steers it through the control block (workload-control.ts).
//
// Each write stores a 16-byte record at a pseudo-random 16-byte slot of the page: this vCPU's write
// sequence number (8 bytes, from 1), its index + 1 (4 bytes) and a pseudo-random word. No (vCPU, seq)
// pair is ever written twice, and a slot holds either zeroes or one whole earlier record, so every write
// changes the page's bytes and so its digest.
//
// Write first, mark second. The saver takes a page's bit (Atomics.exchange) and then copies the page.
// If our mark comes after its take, the bit is set again and the page goes out again in a later pass.
// If our mark came before its take, the take reads-from our Atomics.or, and everything we did before the
// mark (the write) happens-before the saver's copy: the copy has the new bytes. Marking first would let
// the saver take the bit and copy the page before the write lands, and the write would then be lost. (The
// page bytes live in a shared mapping rather than a SharedArrayBuffer, so this leans on what the
// hardware does with plain stores before a locked instruction, x86-TSO here, and on V8 not moving stores
// across an Atomics call, which it does not.)

import { workerData } from 'node:worker_threads';
import { GuestDirtyBitmap } from './dirty-bitmap.ts';
import { GuestMemory, PAGE_SIZE } from './guest-memory.ts';
import { Control, Stats, unreservedPage, type VcpuConfig, vcpuStats } from './workload-control.ts';

const cfg = workerData as VcpuConfig;
const memory = GuestMemory.map(cfg.fd, cfg.size, { pieceSize: cfg.pieceSize });
const dirty = new GuestDirtyBitmap(memory.pages, 0n, cfg.bitmap);
const ctl = new Int32Array(cfg.control);
const nums = new Float64Array(cfg.stats);
const my = vcpuStats(cfg.index);

// Int32 views of each mapping piece, to write records without allocating.
const pagesPerPiece = memory.pieceSize / PAGE_SIZE;
const pieces: Int32Array[] = [];
for (let p = 0; p < memory.pages; p += pagesPerPiece) pieces.push(new Int32Array(memory.page(p).buffer));

/** Writes at most this many pages between two looks at the command (bounds pause latency). */
const BATCH = 256;
/** A vCPU that fell behind (descheduled, say) catches up at most this much, then drops the rest. */
const MAX_BACKLOG_S = 0.05;

let rng = Math.imul(cfg.seed | 0, 0x9e3779b1) >>> 0 || 1;
function next(): number {
  rng ^= rng << 13;
  rng ^= rng >>> 17;
  rng ^= rng << 5;
  rng >>>= 0;
  return rng;
}

// The pages this vCPU may write, counted without the reserved ones; pickIndex() returns an index among them.
const pages = cfg.reserved.reduce((n, [, count]) => n - count, memory.pages);
const hotPages = Math.max(1, Math.min(pages, Math.floor(pages * cfg.hotFraction)));
const hotThreshold = cfg.hotShare * 2 ** 32;
let cursor = Math.floor((pages / cfg.vcpus) * cfg.index) - 1;

/** The next page to write: an index among the pages this vCPU may write, as the pattern has it. */
function pickIndex(): number {
  switch (cfg.pattern) {
    case 'sequential':
      cursor = cursor + 1 >= pages ? 0 : cursor + 1;
      return cursor;
    case 'hot':
      return next() < hotThreshold ? next() % hotPages : next() % pages;
    default:
      return next() % pages;
  }
}

let seq = 0;
const tag = cfg.index + 1;

function writePage(page: number): void {
  const piece = pieces[Math.floor(page / pagesPerPiece)]!;
  const slot = next() & (PAGE_SIZE / 16 - 1);
  const at = ((page % pagesPerPiece) * PAGE_SIZE + slot * 16) >>> 2;
  seq++;
  piece[at] = seq >>> 0;
  piece[at + 1] = Math.floor(seq / 2 ** 32);
  piece[at + 2] = tag;
  piece[at + 3] = next();
  dirty.set(page); // after the write: see the header
}

nums[my + Stats.STARTED] = 1;
Atomics.add(ctl, Control.SIGNAL, 1);
Atomics.notify(ctl, Control.SIGNAL);

// The rate is kept against the clock from a baseline (reset after each pause and after a backlog is
// dropped): pages due = rate × elapsed − pages written since the baseline.
let t0 = performance.now();
let sinceT0 = 0;
let lastRate = -1;

for (;;) {
  // EPOCH first: the command read after it is at least as new (the main thread stores the command,
  // then bumps the epoch).
  const epoch = Atomics.load(ctl, Control.EPOCH);
  const cmd = Atomics.load(ctl, Control.COMMAND);
  if (cmd === Control.STOP) break;
  if (cmd === Control.PAUSE) {
    nums[my + Stats.WRITES] = seq;
    // seq-cst store after every write and mark of ours: whoever loads this epoch sees them all.
    Atomics.store(ctl, Control.ACK + cfg.index, epoch);
    Atomics.add(ctl, Control.SIGNAL, 1);
    Atomics.notify(ctl, Control.SIGNAL);
    // Sleep until the next command (resume, stop, or another pause to acknowledge).
    Atomics.wait(ctl, Control.EPOCH, epoch);
    t0 = performance.now();
    sinceT0 = 0;
    continue;
  }
  const rate = nums[Stats.RATE]! / cfg.vcpus;
  if (rate !== lastRate) {
    lastRate = rate;
    t0 = performance.now();
    sinceT0 = 0;
  }
  if (!(rate > 0)) {
    // Idle: sleep until a command (setRate bumps the epoch too).
    Atomics.wait(ctl, Control.EPOCH, epoch, 1000);
    continue;
  }
  const now = performance.now();
  let due = Math.floor((rate * (now - t0)) / 1000) - sinceT0;
  const backlog = Math.max(BATCH, rate * MAX_BACKLOG_S);
  if (due > backlog) {
    // Behind: forget the excess, as a real guest would not write faster to make up for lost time.
    t0 = now - (backlog * 1000) / rate;
    sinceT0 = 0;
    due = Math.floor(backlog);
  }
  if (due <= 0) {
    const untilNext = ((sinceT0 + 1) * 1000) / rate - (now - t0);
    Atomics.wait(ctl, Control.EPOCH, epoch, Math.min(50, Math.max(1, untilNext)));
    continue;
  }
  const n = Math.min(due, BATCH);
  for (let k = 0; k < n; k++) writePage(unreservedPage(pickIndex(), cfg.reserved));
  sinceT0 += n;
  nums[my + Stats.WRITES] = seq;
}
nums[my + Stats.WRITES] = seq;
memory.close(true);
