/*
 * How a multifd channel thread moves a packet's pages (chanmode.c): through its staging buffer or straight
 * between guest RAM and the socket, chosen by measuring both.
 */
#ifndef VFIO_NATIVE_CHANMODE_H
#define VFIO_NATIVE_CHANMODE_H

#include <node_api.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
  VN_IO_AUTO = 0,   /* measure both, use the cheaper */
  VN_IO_STAGED = 1, /* pages copied through the staging buffer */
  VN_IO_DIRECT = 2, /* pages written from / read into guest RAM */
} vn_io_mode;

typedef struct {
  vn_io_mode fixed;   /* AUTO, or the one mode always used */
  vn_io_mode best;    /* AUTO: the mode used between probes */
  bool clear;         /* AUTO: one mode is clearly the cheaper (probes are rarer) */
  uint64_t packets;   /* packets accounted */
  double cost[2];     /* per mode (STAGED, DIRECT): thread CPU ns per byte, a decaying mean (0: none yet) */
  uint64_t counts[2]; /* packets moved each way (read by the main thread: atomically) */
} vn_io_chooser;

void vn_io_init(vn_io_chooser* ch, vn_io_mode mode);
/* The mode for the next packet. */
vn_io_mode vn_io_next(const vn_io_chooser* ch);
/* Whether the next packet's CPU time is to be measured (vn_thread_cpu_ns before and after it). */
bool vn_io_timed(const vn_io_chooser* ch);
/* A packet moved `bytes` of pages `mode`'s way for `cpu_ns` of this thread's CPU time (< 0: not timed). */
void vn_io_done(vn_io_chooser* ch, vn_io_mode mode, int64_t cpu_ns, size_t bytes);
/* This thread's CPU time, ns. */
int64_t vn_thread_cpu_ns(void);

/* ioChooserRun(staged: Float64Array, direct: Float64Array): Uint8Array. For tests: an AUTO chooser fed
 * packet k's CPU ns per byte from staged[k] or direct[k], whichever way it chose; the mode of each. */
napi_value vn_io_chooser_run(napi_env env, napi_callback_info info);

#endif
