/*
 * The I/O mode chooser of a multifd channel thread (chanthread.c). QEMU's multifd threads always write
 * from and read into guest RAM (an iovec per page). Which is cheaper depends on the host: on one kind of
 * machine the kernel's copies between a socket and memory not in the caches cost several times a
 * user-space copy through a small reused buffer, on another the extra user-space copy is the waste
 * (docs/performance.md has both). So with AUTO the thread measures: the first packets alternate between
 * the two ways, then it keeps the one with less CPU time per byte of its own, trying the other on two
 * packets of every PROBE_WINDOW to notice a change (a cache or link that behaves differently later on).
 * CPU time rather than wall time, so that a slow peer or a busy machine does not weigh in.
 */
#include "chanmode.h"

#include <time.h>

/* Packets at the start that alternate between the modes before any choice. */
#define WARMUP 8
/* Two packets of each window go the other way. */
#define PROBE_WINDOW 32
/* Weight of a new measurement in the mean (the rest: the history). */
#define NEW_WEIGHT 0.25

void vn_io_init(vn_io_chooser* ch, vn_io_mode mode) {
  *ch = (vn_io_chooser){.fixed = mode, .best = VN_IO_STAGED};
}

static vn_io_mode other(vn_io_mode m) {
  return m == VN_IO_STAGED ? VN_IO_DIRECT : VN_IO_STAGED;
}

vn_io_mode vn_io_next(const vn_io_chooser* ch) {
  if (ch->fixed != VN_IO_AUTO) return ch->fixed;
  if (ch->packets < WARMUP) return ch->packets % 2 == 0 ? VN_IO_STAGED : VN_IO_DIRECT;
  return ch->packets % PROBE_WINDOW < 2 ? other(ch->best) : ch->best;
}

void vn_io_done(vn_io_chooser* ch, vn_io_mode mode, int64_t cpu_ns, size_t bytes) {
  int i = mode == VN_IO_DIRECT;
  __atomic_add_fetch(&ch->counts[i], 1, __ATOMIC_RELAXED);
  ch->packets++;
  if (bytes == 0 || cpu_ns < 0) return;
  double per_byte = (double)cpu_ns / (double)bytes;
  ch->cost[i] = ch->cost[i] == 0 ? per_byte : (1 - NEW_WEIGHT) * ch->cost[i] + NEW_WEIGHT * per_byte;
  if (ch->cost[0] > 0 && ch->cost[1] > 0) ch->best = ch->cost[1] < ch->cost[0] ? VN_IO_DIRECT : VN_IO_STAGED;
}

int64_t vn_thread_cpu_ns(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return -1;
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
