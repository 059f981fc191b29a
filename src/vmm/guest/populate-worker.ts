// The populate-ahead thread (populate-ahead.ts): populates the ranges the loader asks for, in order, on
// the VMM's own mapping of guest RAM (GuestMemory.attach), and publishes how far it got.
import { parentPort, workerData } from 'node:worker_threads';
import { GuestMemory, type SharedGuestMemory } from './guest-memory.ts';

const { memory: shared, done } = workerData as { memory: SharedGuestMemory; done: Int32Array };
const memory = GuestMemory.attach(shared);
/** Pages per madvise call: the published progress moves in steps this size. */
const STEP = 1024;

parentPort!.on('message', (m: { first: number; count: number }) => {
  for (let at = m.first, end = m.first + m.count; at < end; at += STEP) {
    memory.prefault(at, Math.min(STEP, end - at), { touch: false });
    Atomics.store(done, 0, Math.min(at + STEP, end));
  }
});
