/*
 * The I/O mode chooser of a multifd channel thread (chanthread.c). QEMU's multifd threads always write
 * from and read into guest RAM (an iovec per page). Which is cheaper depends on the host: on one kind of
 * machine the kernel's copies between a socket and memory not in the caches cost several times a
 * user-space copy through a small reused buffer, on another the extra user-space copy is the waste
 * (docs/performance.md has both). So with AUTO the thread measures: the first packets alternate between
 * the two ways, then it keeps the one with less CPU time per byte of its own, trying the other on two
 * packets of every PROBE_WINDOW to notice a change (a cache or link that behaves differently later on),
 * of every PROBE_WINDOW_CLEAR once one way is clearly cheaper (a probe there costs the difference).
 * CPU time rather than wall time, so that a slow peer or a busy machine does not weigh in. One packet's
 * CPU time is noisy (on loopback a sender also runs the receiver's TCP processing, in softirq), so the
 * other way takes over only when it is cheaper by SWITCH_MARGIN: flipping on noise sent a tenth of the
 * packets the dearer way.
 */
#include "chanmode.h"

#include <time.h>

#include "vfio_native.h"

/* Packets at the start that alternate between the modes before any choice. */
#define WARMUP 8
/* Two packets of each window go the other way... */
#define PROBE_WINDOW 32
/* ...or of each of these once one way costs CLEAR_GAP times the other. */
#define PROBE_WINDOW_CLEAR 256
#define CLEAR_GAP 1.25
#define CLEAR_SAMPLES 12
/* After the warm-up, the other way takes over when the current one costs this many times as much. */
#define SWITCH_MARGIN 1.1
/* Weight of a new measurement in the mean (the rest: the history). */
#define NEW_WEIGHT 0.125
/* After the warm-up, one packet in this many of the way in use is timed (and every probe): reading a
 * thread's CPU clock is a system call (about 1.2 us here; 3% of a channel thread's CPU when every packet
 * took two). */
#define TIMED_EVERY 8

void vn_io_init(vn_io_chooser* ch, vn_io_mode mode) {
  *ch = (vn_io_chooser){.fixed = mode, .best = VN_IO_STAGED};
}

static vn_io_mode other(vn_io_mode m) {
  return m == VN_IO_STAGED ? VN_IO_DIRECT : VN_IO_STAGED;
}

vn_io_mode vn_io_next(const vn_io_chooser* ch) {
  if (ch->fixed != VN_IO_AUTO) return ch->fixed;
  if (ch->packets < WARMUP) return ch->packets % 2 == 0 ? VN_IO_STAGED : VN_IO_DIRECT;
  return ch->packets % (ch->clear ? PROBE_WINDOW_CLEAR : PROBE_WINDOW) < 2 ? other(ch->best) : ch->best;
}

bool vn_io_timed(const vn_io_chooser* ch) {
  if (ch->fixed != VN_IO_AUTO) return false;
  if (ch->packets < WARMUP) return true;
  return vn_io_next(ch) != ch->best || ch->packets % TIMED_EVERY == 0;
}

void vn_io_done(vn_io_chooser* ch, vn_io_mode mode, int64_t cpu_ns, size_t bytes) {
  int i = mode == VN_IO_DIRECT;
  __atomic_add_fetch(&ch->counts[i], 1, __ATOMIC_RELAXED);
  ch->packets++;
  if (bytes == 0 || cpu_ns < 0) return;
  double per_byte = (double)cpu_ns / (double)bytes;
  ch->cost[i] = ch->cost[i] == 0 ? per_byte : (1 - NEW_WEIGHT) * ch->cost[i] + NEW_WEIGHT * per_byte;
  double staged = ch->cost[0], direct = ch->cost[1];
  if (staged == 0 || direct == 0) return;
  double margin = ch->packets <= WARMUP ? 1 : SWITCH_MARGIN;
  if (ch->best == VN_IO_STAGED ? staged > direct * margin : direct > staged * margin)
    ch->best = other(ch->best);
  /* Rare probes only once both means rest on several packets: a few noisy ones must not lock a way in. */
  ch->clear = ch->counts[0] >= CLEAR_SAMPLES && ch->counts[1] >= CLEAR_SAMPLES &&
              (staged > direct * CLEAR_GAP || direct > staged * CLEAR_GAP);
}

int64_t vn_thread_cpu_ns(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return -1;
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

napi_value vn_io_chooser_run(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!vn_args(env, info, 2, argv, NULL)) return NULL;
  void *staged_p, *direct_p, *out_p;
  size_t n_staged, n_direct;
  if (!vn_get_typed(env, argv[0], napi_float64_array, "Float64Array", "staged", &staged_p, &n_staged) ||
      !vn_get_typed(env, argv[1], napi_float64_array, "Float64Array", "direct", &direct_p, &n_direct))
    return NULL;
  if (n_staged != n_direct) return vn_throw_range(env, "%zu staged costs, %zu direct", n_staged, n_direct);
  napi_value ab, out;
  VN_CALL(env, napi_create_arraybuffer(env, n_staged, &out_p, &ab));
  VN_CALL(env, napi_create_typedarray(env, napi_uint8_array, n_staged, ab, 0, &out));
  const double* cost[2] = {staged_p, direct_p};
  uint8_t* modes = out_p;
  vn_io_chooser ch;
  vn_io_init(&ch, VN_IO_AUTO);
  for (size_t k = 0; k < n_staged; k++) {
    vn_io_mode m = vn_io_next(&ch);
    modes[k] = (uint8_t)m;
    /* A packet of 1 MB at the given cost per byte, timed or not as a channel thread would. */
    vn_io_done(&ch, m, vn_io_timed(&ch) ? (int64_t)(cost[m == VN_IO_DIRECT][k] * 1e6) : -1, 1000000);
  }
  return out;
}
