/*
 * Multifd channel threads (QEMU's multifd_send_thread and multifd_recv_thread, migration/multifd.c): one
 * native thread per channel runs the channel's blocking socket I/O and its page copies, as QEMU's
 * threads do, with no JavaScript engine of its own (a V8 isolate per channel cost ~80 ms of CPU to start
 * on our 2-core machines, on each side, every migration).
 *
 * The thread knows where a packet's page counts and flags are (the framing the codec hands it) and no
 * more: the main thread's JavaScript encodes every header and checks every one received
 * (src/stream/multifd.ts). Sending, the thread writes a packet's pages behind the header it was given.
 * Receiving, it reads packets (header, offsets, pages) and lands their pages in guest RAM until one
 * carries SYNC or the source closes, handing the packets' headers and offsets to the callback as it goes
 * (CT_EVENT_PACKETS at a time, and whatever it has before the operation completes).
 * Either way a packet's pages go through the thread's staging buffer or straight between guest RAM and
 * the socket, as chanmode.c chooses; the JavaScript fails the migration on a header the codec
 * refuses. An offset outside guest RAM is never written (the thread checks each against the mapping).
 * Operations complete in queue order through a threadsafe function into the callback given to the
 * constructor: (an Error with code, errno and syscall or null, value, packets' headers and offsets back
 * to back or undefined).
 *
 * Guest RAM is the main thread's own mapping (its pieces, passed as mmapShare tokens), as QEMU's threads
 * share its address space; the thread holds it until it ends, so a VMM that unmaps guest RAM while a
 * migration still runs leaves it mapped for the thread. Every buffer an operation names must stay alive until that operation completes (the
 * TypeScript side keeps them in its queue).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "chanio.h"
#include "chanmode.h"
#include "chanthread.h"
#include "vfio_native.h"
#include "zero.h"

typedef enum {
  OP_CONNECT,
  OP_WRITEV,
  OP_SEND_PACKETS,
  OP_READV,
  OP_RECV,
  OP_SHUTDOWN,
  OP_DISCARD,
  OP_END,
} ct_kind;

typedef struct ct_op {
  struct ct_op* next;
  ct_kind kind;
  /* WRITEV, READV */
  struct iovec* iov;
  uint32_t iov_count;
  /* CONNECT */
  struct sockaddr_storage addr;
  socklen_t addr_len;
  int64_t ms; /* CONNECT: timeout; DISCARD: how long to wait for EOF */
  /* SEND_PACKETS: packets' headers back to back, each one's length, the normal pages' offsets of every
   * packet back to back, each one's count */
  uint8_t* heads;
  const uint32_t* head_lens;
  const double* offsets;
  const uint32_t* counts;
  uint32_t packets;
  /* an event of RECV (not its completion): copies of packets' headers and offsets, back to back */
  uint8_t* packet;
  size_t packet_len;
  int how;        /* SHUTDOWN */
  bool use_abort; /* DISCARD: wake on the abort eventfd (false: it was written already) */
  /* the result */
  int err;
  const char* syscall;
  int64_t value;
} ct_op;

typedef struct {
  pthread_t tid;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  ct_op *first, *last; /* the queue */
  bool ended;          /* END queued: nothing more may be */
  bool used;           /* an operation was queued (the I/O mode is fixed from then on) */
  bool quit;           /* teardown: the thread stops at once */
  bool exiting;        /* the thread took END: it makes no more calls on the fds */
  bool started;        /* the thread runs (main thread only) */
  bool thread_done;    /* the thread was joined (main thread only) */
  bool wrapper_gone;   /* the JS object was collected (main thread only) */
  napi_threadsafe_function tsfn;
  vn_chan_io io;
  /* guest RAM: each piece's hold on its mapping, its address and length */
  struct {
    void* hold;
    uint8_t* addr;
    size_t len;
  } * pieces;
  uint32_t npieces;
  size_t piece_size, mem_size;
  /* per-page maps (received at least once, written with data or a fill), fresh: unwritten pages read 0 */
  uint8_t *received, *written;
  bool fresh;
  /* framing: header bytes, the byte offsets of its be32 normal and zero page counts and flags, the SYNC
   * flag, the most pages a packet holds, the page size */
  uint32_t header_bytes, normal_at, zero_at, flags_at, sync_flag, max_pages, page_size;
  uint8_t* staging;   /* a packet's pages (staged I/O) */
  struct iovec* iov;  /* a packet's header and page runs (direct I/O) */
  uint8_t* head;      /* a received packet's header and offsets */
  double* offsets;    /* a received packet's offsets */
  vn_io_chooser mode; /* staged or direct, per packet (chanmode.c) */
  ct_op* pending;     /* the RECV event being filled, and how many packets it holds */
  uint32_t pending_packets;
} ct_chan;

static uint32_t be32(const uint8_t* p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The guest bytes of `count` pages at offset `off`, or NULL when they are not inside one piece. */
static uint8_t* guest(const ct_chan* c, double off, uint32_t count) {
  if (!(off >= 0) || off >= (double)c->mem_size) return NULL;
  size_t at = (size_t)off;
  if (at % c->page_size != 0) return NULL;
  size_t p = at / c->piece_size, in = at % c->piece_size;
  if (p >= c->npieces || in + (size_t)count * c->page_size > c->pieces[p].len) return NULL;
  return c->pieces[p].addr + in;
}

/*
 * The guest bytes of the pages at offsets[k..n) that follow offsets[k] page by page, as far as they stay
 * in one piece (how many in *run), or NULL when offsets[k] is not a guest page.
 */
static uint8_t* guest_run(const ct_chan* c, const double* offsets, uint32_t k, uint32_t n, uint32_t* run) {
  uint32_t r = 1;
  while (k + r < n && offsets[k + r] == offsets[k] + (double)r * c->page_size) r++;
  uint8_t* p = guest(c, offsets[k], r);
  while (p == NULL && r > 1) p = guest(c, offsets[k], --r); /* a run across pieces: split */
  *run = r;
  return p;
}

static void fail(ct_op* o, int err, const char* syscall) {
  o->err = err;
  o->syscall = syscall;
}

static void transfer(ct_chan* c, ct_op* o, struct iovec* iov, uint32_t n, bool write_side) {
  const char* syscall = NULL;
  ssize_t r = vn_chan_transfer(&c->io, iov, n, write_side, &syscall);
  if (r < 0) fail(o, (int)-r, syscall);
  else o->value = r;
}

/*
 * The iovecs of the pages at offsets[0..n) straight from guest RAM, one per run inside a piece, into
 * c->iov from index `first`; how many there are in total, or 0 when an offset is not a guest page.
 */
static uint32_t guest_iovecs(ct_chan* c, const double* offsets, uint32_t n, uint32_t first) {
  uint32_t m = first;
  for (uint32_t i = 0; i < n;) {
    uint32_t run;
    uint8_t* p = guest_run(c, offsets, i, n, &run);
    if (p == NULL) return 0;
    c->iov[m++] = (struct iovec){p, (size_t)run * c->page_size};
    i += run;
  }
  return m;
}

/* This thread's CPU ns since t0, or -1 when t0 was not taken (the packet is not timed) or the clock failed. */
static int64_t cpu_since(int64_t t0) {
  if (t0 < 0) return -1;
  int64_t now = vn_thread_cpu_ns();
  return now < 0 ? -1 : now - t0;
}

static void send_packets(ct_chan* c, ct_op* o) {
  uint8_t* head = o->heads;
  const double* offsets = o->offsets;
  int64_t total = 0;
  for (uint32_t k = 0; k < o->packets; k++) {
    uint32_t n = o->counts[k];
    vn_io_mode mode = n > 0 ? vn_io_next(&c->mode) : VN_IO_STAGED;
    int64_t t0 = n > 0 && vn_io_timed(&c->mode) ? vn_thread_cpu_ns() : -1;
    c->iov[0] = (struct iovec){head, o->head_lens[k]};
    uint32_t parts = guest_iovecs(c, offsets, n, 1);
    if (parts == 0) return fail(o, EINVAL, "guest page");
    if (mode == VN_IO_STAGED) {
      /* Gathered into the staging buffer, written from there. (Direct, as QEMU's multifd_send_thread:
       * the kernel copies the pages out of guest RAM.) */
      size_t at = 0;
      for (uint32_t i = 1; i < parts; i++) {
        memcpy(c->staging + at, c->iov[i].iov_base, c->iov[i].iov_len);
        at += c->iov[i].iov_len;
      }
      c->iov[1] = (struct iovec){c->staging, at};
      parts = 2;
    }
    transfer(c, o, c->iov, parts, true);
    if (o->err != 0) return;
    if (n > 0) vn_io_done(&c->mode, mode, cpu_since(t0), (size_t)n * c->page_size);
    total += o->value;
    head += o->head_lens[k];
    offsets += n;
  }
  o->value = total;
}

static uint64_t be64(const uint8_t* p) {
  return (uint64_t)be32(p) << 32 | be32(p + 4);
}

static void free_op(ct_op* o);

/*
 * Received packets whose headers and offsets go to the callback in one event: one call into JavaScript
 * per 8 MiB of pages, not per packet (a call per packet cost the destination's main thread about a
 * quarter of its CPU in a 1 GiB migration, in N-API and callback scopes rather than in the checks).
 */
#define CT_EVENT_PACKETS 16

/* Hands the packets gathered so far to the callback (an event is dropped at teardown). */
static void flush_packets(ct_chan* c) {
  ct_op* e = c->pending;
  if (e == NULL) return;
  c->pending = NULL;
  c->pending_packets = 0;
  if (napi_call_threadsafe_function(c->tsfn, e, napi_tsfn_nonblocking) != napi_ok) free_op(e);
}

/* Adds a copy of the received packet's header and offsets (its first `len` bytes) to the next event. */
static void post_packet(ct_chan* c, size_t len) {
  if (c->pending == NULL) {
    ct_op* e = calloc(1, sizeof *e);
    if (e == NULL) return;
    e->kind = OP_RECV;
    e->packet = malloc(CT_EVENT_PACKETS * (c->header_bytes + 8 * (size_t)c->max_pages));
    if (e->packet == NULL) {
      free(e);
      return;
    }
    c->pending = e;
  }
  memcpy(c->pending->packet + c->pending->packet_len, c->head, len);
  c->pending->packet_len += len;
  if (++c->pending_packets == CT_EVENT_PACKETS) flush_packets(c);
}

/* The received packet's offsets (its header's first `total`) into c->offsets; EINVAL if one is not a guest page. */
static int take_offsets(ct_chan* c, uint32_t total) {
  for (uint32_t k = 0; k < total; k++) {
    double off = (double)be64(c->head + c->header_bytes + 8 * (size_t)k);
    if (guest(c, off, 1) == NULL) return EINVAL;
    c->offsets[k] = off;
  }
  return 0;
}

/*
 * The received packet's pages land: the first `normal` offsets got data (copied from staging here if
 * `staged`; read straight into guest RAM otherwise), the rest are zero pages.
 */
static void land(ct_chan* c, uint32_t normal, uint32_t total, bool staged) {
  for (uint32_t k = 0; k < normal;) {
    uint32_t run;
    uint8_t* dst = guest_run(c, c->offsets, k, normal, &run); /* every offset was checked */
    if (staged) memcpy(dst, c->staging + (size_t)k * c->page_size, (size_t)run * c->page_size);
    for (uint32_t last = k + run; k < last; k++) {
      size_t i = (size_t)c->offsets[k] / c->page_size;
      if (c->written) c->written[i] = 1;
      if (c->received) c->received[i] = 1;
    }
  }
  for (uint32_t k = normal; k < total; k++) {
    uint8_t* page = guest(c, c->offsets[k], 1);
    size_t i = (size_t)c->offsets[k] / c->page_size;
    if (c->received) c->received[i] = 1;
    /* As the main stream's zero pages: one that reads as zero already is left alone (and a fresh
     * destination's never-written page is not even read, which would allocate it). */
    if (c->fresh && c->written && c->written[i] == 0) continue;
    if (vn_all_zero(page, c->page_size)) continue;
    memset(page, 0, c->page_size);
    if (c->written) c->written[i] = 1;
  }
}

/*
 * A packet's offsets and pages, after its header: read with its pages into staging and copied from there,
 * or its offsets read first and checked and then its pages read straight into guest RAM (QEMU's
 * multifd_recv_thread: an iovec per page). 0, or the errno to fail with (ECONNRESET: the source closed
 * mid-packet; EINVAL: an offset outside guest RAM, nothing of this packet's pages written).
 */
static int recv_body(ct_chan* c, ct_op* o, uint32_t normal, uint32_t total) {
  size_t offsets_len = 8 * (size_t)total, pages_len = (size_t)normal * c->page_size;
  vn_io_mode mode = normal > 0 ? vn_io_next(&c->mode) : VN_IO_STAGED;
  int64_t t0 = normal > 0 && vn_io_timed(&c->mode) ? vn_thread_cpu_ns() : -1;
  struct iovec body[2] = {{c->head + c->header_bytes, offsets_len}, {c->staging, pages_len}};
  transfer(c, o, body, mode == VN_IO_DIRECT ? 1 : 2, false);
  if (o->err != 0) return o->err;
  if ((size_t)o->value < (mode == VN_IO_DIRECT ? offsets_len : offsets_len + pages_len)) return ECONNRESET;
  int err = take_offsets(c, total);
  if (err != 0) return err;
  if (mode == VN_IO_DIRECT && normal > 0) {
    uint32_t parts = guest_iovecs(c, c->offsets, normal, 0); /* every offset was checked: never 0 */
    transfer(c, o, c->iov, parts, false);
    if (o->err != 0) return o->err;
    if ((size_t)o->value < pages_len) return ECONNRESET;
  }
  land(c, normal, total, mode != VN_IO_DIRECT);
  if (normal > 0) vn_io_done(&c->mode, mode, cpu_since(t0), pages_len);
  return 0;
}

/*
 * Packets until one with SYNC (value: packets read) or the source's close between packets (value: -1 -
 * packets read). A header whose counts exceed the buffers or an offset outside guest RAM ends it with
 * EPROTO or EINVAL, that packet's header the last one gathered for the callback (where the codec says what
 * is wrong).
 */
static void read_packets(ct_chan* c, ct_op* o) {
  int64_t packets = 0;
  for (;;) {
    struct iovec h = {c->head, c->header_bytes};
    transfer(c, o, &h, 1, false);
    if (o->err != 0) return;
    if (o->value == 0) {
      o->value = -1 - packets;
      return;
    }
    if (o->value < c->header_bytes) return fail(o, ECONNRESET, "packet");
    uint32_t normal = be32(c->head + c->normal_at), zero = be32(c->head + c->zero_at);
    if ((uint64_t)normal + zero > c->max_pages) {
      post_packet(c, c->header_bytes);
      return fail(o, EPROTO, "packet");
    }
    size_t len = c->header_bytes + 8 * ((size_t)normal + zero);
    int err = recv_body(c, o, normal, normal + zero);
    if (o->err != 0) return;
    if (err == ECONNRESET) return fail(o, err, "packet");
    post_packet(c, len);
    if (err != 0) return fail(o, err, "packet");
    packets++;
    if (be32(c->head + c->flags_at) & c->sync_flag) {
      o->value = packets;
      return;
    }
  }
}

/* read_packets, then the packets not yet handed over: the callback has them all before the completion. */
static void recv_packets(ct_chan* c, ct_op* o) {
  read_packets(c, o);
  flush_packets(c);
}

static void run_op(ct_chan* c, ct_op* o) {
  const char* syscall = NULL;
  switch (o->kind) {
    case OP_CONNECT: {
      int err = vn_chan_connect(c->io.fd, &o->addr, o->addr_len, c->io.abort_fd, o->ms, &syscall);
      if (err != 0) fail(o, err, syscall);
      break;
    }
    case OP_WRITEV:
      transfer(c, o, o->iov, o->iov_count, true);
      break;
    case OP_READV:
      transfer(c, o, o->iov, o->iov_count, false);
      break;
    case OP_SEND_PACKETS:
      send_packets(c, o);
      break;
    case OP_RECV:
      recv_packets(c, o);
      break;
    case OP_SHUTDOWN:
      if (shutdown(c->io.fd, o->how) != 0) fail(o, errno, "shutdown");
      break;
    case OP_DISCARD: {
      int r = vn_chan_discard(c->io.fd, o->use_abort ? c->io.abort_fd : -1, o->ms, &syscall);
      if (r < 0) fail(o, -r, syscall);
      else o->value = r;
      break;
    }
    case OP_END:
      break;
  }
}

static void release_pieces(ct_chan* c);

static void free_op(ct_op* o) {
  free(o->iov);
  free(o->packet);
  free(o);
}

static void* thread_main(void* arg) {
  ct_chan* c = arg;
  /* Named as QEMU names its multifd threads (multifdsend_N / multifdrecv_N), for top, perf and /proc. */
  pthread_setname_np(pthread_self(), "vfm-multifd");
  /* Fault the staging buffer in now, not inside the first staged packet, whose CPU time chanmode.c weighs. */
  memset(c->staging, 0, (size_t)c->max_pages * c->page_size);
  for (;;) {
    pthread_mutex_lock(&c->mu);
    while (c->first == NULL && !c->quit) pthread_cond_wait(&c->cv, &c->mu);
    ct_op* o = c->quit ? NULL : c->first;
    if (o != NULL) {
      c->first = o->next;
      if (c->first == NULL) c->last = NULL;
      /* From END's completion on, the JavaScript may close (and the process reuse) the fds. */
      if (o->kind == OP_END) c->exiting = true;
    }
    pthread_mutex_unlock(&c->mu);
    if (o == NULL) break;
    bool end = o->kind == OP_END;
    run_op(c, o);
    if (end) release_pieces(c); /* before END completes: its caller may count the mappings */
    if (napi_call_threadsafe_function(c->tsfn, o, napi_tsfn_nonblocking) != napi_ok) free_op(o);
    if (end) break;
  }
  napi_release_threadsafe_function(c->tsfn, napi_tsfn_release);
  return NULL;
}

/* On the main thread: an operation's result (or a received packet) into the JS callback. */
static void call_js(napi_env env, napi_value cb, void* context, void* data) {
  (void)context;
  ct_op* o = data;
  if (env != NULL && cb != NULL) {
    napi_value argv[3], undefined;
    void* copy;
    /* A failure as the addon throws it everywhere: an Error with code, errno and syscall. */
    bool ok = (o->err != 0 ? vn_errno_error(env, o->err, o->syscall, NULL, &argv[0])
                           : napi_get_null(env, &argv[0]) == napi_ok) &&
              napi_create_int64(env, o->value, &argv[1]) == napi_ok &&
              (o->packet != NULL ? napi_create_buffer_copy(env, o->packet_len, o->packet, &copy, &argv[2])
                                 : napi_get_undefined(env, &argv[2])) == napi_ok &&
              napi_get_undefined(env, &undefined) == napi_ok;
    if (ok) napi_call_function(env, undefined, cb, 3, argv, NULL);
  }
  free_op(o);
}

/* Lets go of guest RAM: unmapped now if its owner did already. */
static void release_pieces(ct_chan* c) {
  for (uint32_t k = 0; k < c->npieces; k++) vn_mapping_release(c->pieces[k].hold);
  c->npieces = 0;
}

/* What chan_setup gave c, and c itself. */
static void free_setup(ct_chan* c) {
  release_pieces(c);
  free(c->pieces);
  free(c->staging);
  free(c->head);
  free(c->offsets);
  free(c->iov);
  free(c);
}

static void free_chan(ct_chan* c) {
  for (ct_op* o = c->first; o != NULL;) {
    ct_op* next = o->next;
    free_op(o);
    o = next;
  }
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->cv);
  free_setup(c);
}

/*
 * The threadsafe function is gone: after the thread released it (END), or at the env's teardown with the
 * thread perhaps still inside a call, which the abort eventfd and `quit` end before it is joined.
 */
static void tsfn_finalize(napi_env env, void* data, void* hint) {
  (void)env;
  (void)hint;
  ct_chan* c = data;
  pthread_mutex_lock(&c->mu);
  c->quit = true;
  pthread_cond_signal(&c->cv);
  bool exiting = c->exiting;
  pthread_mutex_unlock(&c->mu);
  if (!exiting && c->io.abort_fd >= 0) {
    /* Teardown with the thread perhaps inside a call: the fds are still open (the JavaScript closes them
     * only after END). */
    uint64_t one = 1;
    ssize_t w = write(c->io.abort_fd, &one, sizeof one);
    (void)w;
  }
  if (c->started) pthread_join(c->tid, NULL);
  c->thread_done = true;
  release_pieces(c);
  if (c->wrapper_gone) free_chan(c);
}

static void wrapper_finalize(napi_env env, void* data, void* hint) {
  (void)env;
  (void)hint;
  ct_chan* c = data;
  c->wrapper_gone = true;
  if (c->thread_done) free_chan(c);
}

static bool get_u8_or_null(napi_env env, napi_value v, const char* name, uint8_t** out) {
  napi_valuetype t;
  size_t len;
  if (napi_typeof(env, v, &t) != napi_ok) return false;
  if (t == napi_null) {
    *out = NULL;
    return true;
  }
  return vn_get_bytes(env, v, name, out, &len);
}

/* The constructor's arguments into c (argv[0..7]); false with an exception pending. */
static bool chan_setup(napi_env env, napi_value* argv, ct_chan* c) {
  int fd;
  int64_t abort_fd, stall_ms;
  if (!vn_get_fd(env, argv[0], "fd", &fd) || !vn_get_int(env, argv[1], "abortFd", -1, INT32_MAX, &abort_fd) ||
      !vn_get_int(env, argv[2], "stallMs", -1, INT32_MAX, &stall_ms))
    return false;
  c->io = (vn_chan_io){.fd = fd, .abort_fd = (int)abort_fd, .stall_ms = stall_ms, .progress = NULL};

  bool is_array = false;
  uint32_t n = 0;
  if (napi_is_array(env, argv[3], &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, argv[3], &n) != napi_ok || n == 0) {
    vn_throw_type(env, "pieces must be a non-empty array of mmapShare tokens");
    return false;
  }
  c->pieces = calloc(n, sizeof *c->pieces);
  if (c->pieces == NULL) {
    vn_throw_errno(env, ENOMEM, "calloc", NULL);
    return false;
  }
  for (uint32_t k = 0; k < n; k++) {
    napi_value token;
    if (napi_get_element(env, argv[3], k, &token) != napi_ok ||
        !vn_mapping_adopt(env, token, "ChannelThread", &c->pieces[k].hold, &c->pieces[k].addr, &c->pieces[k].len))
      return false;
    c->npieces = k + 1;
    c->mem_size += c->pieces[k].len;
  }
  c->piece_size = c->pieces[0].len;

  napi_valuetype t;
  if (napi_typeof(env, argv[4], &t) != napi_ok) return false;
  if (t != napi_null) {
    napi_value r, w;
    if (napi_get_element(env, argv[4], 0, &r) != napi_ok || napi_get_element(env, argv[4], 1, &w) != napi_ok ||
        !get_u8_or_null(env, r, "maps[0]", &c->received) || !get_u8_or_null(env, w, "maps[1]", &c->written))
      return false;
  }
  if (!vn_get_bool(env, argv[5], "fresh", &c->fresh) || napi_typeof(env, argv[6], &t) != napi_ok) return false;
  size_t len = 0;
  void* data;
  if (t != napi_null) {
    if (!vn_get_typed(env, argv[6], napi_int32_array, "Int32Array", "progress", &data, &len)) return false;
    if (len < 1) {
      vn_throw_type(env, "progress must hold one Int32");
      return false;
    }
    c->io.progress = data;
  }
  if (!vn_get_typed(env, argv[7], napi_uint32_array, "Uint32Array", "framing", &data, &len)) return false;
  if (len != 7) {
    vn_throw_type(env, "framing must be 7 Uint32s");
    return false;
  }
  const uint32_t* f = data;
  c->header_bytes = f[0], c->normal_at = f[1], c->zero_at = f[2], c->flags_at = f[3], c->sync_flag = f[4];
  c->max_pages = f[5], c->page_size = f[6];
  if (c->page_size == 0 || c->max_pages == 0 || c->max_pages > 65536 || c->normal_at + 4 > c->header_bytes ||
      c->zero_at + 4 > c->header_bytes || c->flags_at + 4 > c->header_bytes || c->piece_size % c->page_size != 0) {
    vn_throw_range(env, "framing does not fit its header or the pages");
    return false;
  }
  vn_io_init(&c->mode, VN_IO_AUTO);
  c->staging = malloc((size_t)c->max_pages * c->page_size);
  c->head = malloc(c->header_bytes + 8 * (size_t)c->max_pages);
  c->offsets = malloc(sizeof(double) * c->max_pages);
  c->iov = malloc(sizeof(struct iovec) * ((size_t)c->max_pages + 1));
  if (c->staging == NULL || c->head == NULL || c->offsets == NULL || c->iov == NULL) {
    vn_throw_errno(env, ENOMEM, "malloc", NULL);
    return false;
  }
  return true;
}

/*
 * new ChannelThread(fd, abortFd, stallMs, pieces: bigint[] (mmapShare tokens), maps: [received, written] | null,
 *                   fresh, progress: Int32Array | null, framing: Uint32Array, callback)
 * framing: [header bytes, normal count at, zero count at, flags at, SYNC flag, most pages, page size]
 */
static napi_value chan_new(napi_env env, napi_callback_info info) {
  napi_value argv[9], self, target;
  napi_valuetype t;
  if (!vn_args(env, info, 9, argv, &self)) return NULL;
  VN_CALL(env, napi_get_new_target(env, info, &target));
  if (target == NULL) return vn_throw_type(env, "ChannelThread must be called with new");
  if (napi_typeof(env, argv[8], &t) != napi_ok || t != napi_function)
    return vn_throw_type(env, "callback must be a function");
  ct_chan* c = calloc(1, sizeof *c);
  if (c == NULL) return vn_throw_errno(env, ENOMEM, "ChannelThread", NULL);
  if (!chan_setup(env, argv, c)) {
    free_setup(c);
    return NULL;
  }
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);

  napi_value name;
  napi_status st = napi_create_string_utf8(env, "MultifdChannel", NAPI_AUTO_LENGTH, &name);
  if (st == napi_ok)
    st = napi_create_threadsafe_function(env, argv[8], NULL, name, 0, 1, c, tsfn_finalize, NULL, call_js, &c->tsfn);
  if (st != napi_ok) {
    free_chan(c);
    return vn_throw_status(env, st, "napi_create_threadsafe_function");
  }
  int rc = pthread_create(&c->tid, NULL, thread_main, c);
  if (rc != 0) {
    /* No thread and no wrapper: the finalizer joins nothing and frees it. */
    c->wrapper_gone = true;
    napi_release_threadsafe_function(c->tsfn, napi_tsfn_abort);
    return vn_throw_errno(env, rc, "pthread_create", NULL);
  }
  c->started = true;
  st = napi_wrap(env, self, c, wrapper_finalize, NULL, NULL);
  if (st != napi_ok) {
    pthread_mutex_lock(&c->mu);
    c->quit = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    c->wrapper_gone = true;
    return vn_throw_status(env, st, "napi_wrap");
  }
  return self;
}

static ct_chan* unwrap(napi_env env, napi_callback_info info, size_t want, napi_value* argv) {
  napi_value self;
  void* data = NULL;
  if (!vn_args(env, info, want, argv, &self)) return NULL;
  if (napi_unwrap(env, self, &data) != napi_ok || data == NULL) {
    vn_throw_type(env, "not a ChannelThread");
    return NULL;
  }
  return data;
}

static ct_op* new_op(napi_env env, ct_kind kind) {
  ct_op* o = calloc(1, sizeof *o);
  if (o == NULL) vn_throw_errno(env, ENOMEM, "calloc", NULL);
  else o->kind = kind;
  return o;
}

/* Queues o (taking it); throws once END was queued. */
static napi_value enqueue(napi_env env, ct_chan* c, ct_op* o) {
  pthread_mutex_lock(&c->mu);
  bool ended = c->ended;
  if (!ended) {
    if (c->last != NULL) c->last->next = o;
    else c->first = o;
    c->last = o;
    if (o->kind == OP_END) c->ended = true;
    c->used = true;
    pthread_cond_signal(&c->cv);
  }
  pthread_mutex_unlock(&c->mu);
  if (ended) {
    free_op(o);
    napi_throw_error(env, "ERR_CHANNEL_ENDED", "ChannelThread has ended");
  }
  return NULL;
}

/* Queues an operation that takes no arguments. */
static napi_value queue_bare(napi_env env, napi_callback_info info, ct_kind kind) {
  ct_chan* c = unwrap(env, info, 0, NULL);
  ct_op* o = c == NULL ? NULL : new_op(env, kind);
  return o == NULL ? NULL : enqueue(env, c, o);
}

/* The parts of an array of Uint8Array as iovecs of a new op. */
static ct_op* parts_op(napi_env env, ct_kind kind, napi_value parts) {
  bool is_array = false;
  uint32_t n = 0;
  if (napi_is_array(env, parts, &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, parts, &n) != napi_ok) {
    vn_throw_type(env, "parts must be an array of Uint8Array");
    return NULL;
  }
  ct_op* o = new_op(env, kind);
  if (o == NULL) return NULL;
  o->iov = calloc(n > 0 ? n : 1, sizeof *o->iov);
  o->iov_count = n;
  if (o->iov == NULL) {
    free(o);
    vn_throw_errno(env, ENOMEM, "calloc", NULL);
    return NULL;
  }
  for (uint32_t k = 0; k < n; k++) {
    napi_value part;
    uint8_t* data;
    size_t len;
    if (napi_get_element(env, parts, k, &part) != napi_ok || !vn_get_bytes(env, part, "each part", &data, &len)) {
      free_op(o);
      return NULL;
    }
    o->iov[k] = (struct iovec){data, len};
  }
  return o;
}

/* connect(address, port, timeoutMs) */
static napi_value chan_connect(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int64_t port, ms;
  ct_chan* c = unwrap(env, info, 3, argv);
  if (c == NULL || !vn_get_int(env, argv[1], "port", 1, 65535, &port) ||
      !vn_get_int(env, argv[2], "timeoutMs", -1, INT32_MAX, &ms))
    return NULL;
  ct_op* o = new_op(env, OP_CONNECT);
  if (o == NULL) return NULL;
  o->ms = ms;
  if (!vn_get_inet(env, argv[0], (int)port, &o->addr, &o->addr_len)) {
    free_op(o);
    return NULL;
  }
  return enqueue(env, c, o);
}

/* writev(parts): every byte, in order; value: bytes written */
static napi_value chan_writev(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  ct_chan* c = unwrap(env, info, 1, argv);
  ct_op* o = c == NULL ? NULL : parts_op(env, OP_WRITEV, argv[0]);
  return o == NULL ? NULL : enqueue(env, c, o);
}

/* readv(parts): fills them; value: bytes read, fewer when EOF came first */
static napi_value chan_readv(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  ct_chan* c = unwrap(env, info, 1, argv);
  ct_op* o = c == NULL ? NULL : parts_op(env, OP_READV, argv[0]);
  return o == NULL ? NULL : enqueue(env, c, o);
}

/*
 * sendPackets(heads: Uint8Array, headLens: Uint32Array, offsets: Float64Array, counts: Uint32Array): for
 * each packet, its header (the next headLens[k] bytes of heads) and its counts[k] pages (the next offsets)
 * in one writev; value: bytes written
 */
static napi_value chan_send_packets(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  void *lens, *offs, *counts;
  size_t heads_len, nlens, noffs, ncounts;
  uint8_t* heads;
  ct_chan* c = unwrap(env, info, 4, argv);
  if (c == NULL || !vn_get_bytes(env, argv[0], "heads", &heads, &heads_len) ||
      !vn_get_typed(env, argv[1], napi_uint32_array, "Uint32Array", "headLens", &lens, &nlens) ||
      !vn_get_typed(env, argv[2], napi_float64_array, "Float64Array", "offsets", &offs, &noffs) ||
      !vn_get_typed(env, argv[3], napi_uint32_array, "Uint32Array", "counts", &counts, &ncounts))
    return NULL;
  size_t head_sum = 0, page_sum = 0;
  for (size_t k = 0; k < nlens; k++) head_sum += ((uint32_t*)lens)[k];
  for (size_t k = 0; k < ncounts; k++) {
    if (((uint32_t*)counts)[k] > c->max_pages) return vn_throw_range(env, "a packet of more than %u pages", c->max_pages);
    page_sum += ((uint32_t*)counts)[k];
  }
  if (nlens != ncounts || head_sum > heads_len || page_sum > noffs)
    return vn_throw_range(env, "headers, lengths, offsets and counts do not agree");
  ct_op* o = new_op(env, OP_SEND_PACKETS);
  if (o == NULL) return NULL;
  o->heads = heads;
  o->head_lens = lens;
  o->offsets = offs;
  o->counts = counts;
  o->packets = (uint32_t)nlens;
  return enqueue(env, c, o);
}

/*
 * recv(): packets into guest RAM until one carries SYNC (value: packets read) or the source closes between
 * packets (value: -1 - packets read); each packet's header and offsets go to the callback first.
 */
static napi_value chan_recv(napi_env env, napi_callback_info info) {
  return queue_bare(env, info, OP_RECV);
}

/* shutdown(how) */
static napi_value chan_shutdown(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int64_t how;
  ct_chan* c = unwrap(env, info, 1, argv);
  if (c == NULL || !vn_get_int(env, argv[0], "how", SHUT_RD, SHUT_RDWR, &how)) return NULL;
  ct_op* o = new_op(env, OP_SHUTDOWN);
  if (o == NULL) return NULL;
  o->how = (int)how;
  return enqueue(env, c, o);
}

/* discard(ms, useAbort): reads and drops until EOF (value 1) or ms pass (0) */
static napi_value chan_discard(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int64_t ms;
  bool use_abort;
  ct_chan* c = unwrap(env, info, 2, argv);
  if (c == NULL || !vn_get_int(env, argv[0], "ms", 0, INT32_MAX, &ms) ||
      !vn_get_bool(env, argv[1], "useAbort", &use_abort))
    return NULL;
  ct_op* o = new_op(env, OP_DISCARD);
  if (o == NULL) return NULL;
  o->ms = ms;
  o->use_abort = use_abort;
  return enqueue(env, c, o);
}

/* end(): the last operation; once it completes the thread is gone */
static napi_value chan_end(napi_env env, napi_callback_info info) {
  return queue_bare(env, info, OP_END);
}

/* unref(): the thread no longer keeps the process alive */
/*
 * setIoMode(mode): how packets' pages move: 0 chosen by measuring (the default), 1 through the staging
 * buffer, 2 straight between guest RAM and the socket. Only before the first operation (the thread then
 * owns the chooser): throws after.
 */
static napi_value chan_set_io_mode(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int64_t mode;
  ct_chan* c = unwrap(env, info, 1, argv);
  if (c == NULL || !vn_get_int(env, argv[0], "mode", VN_IO_AUTO, VN_IO_DIRECT, &mode)) return NULL;
  /* Under the queue's lock, which the thread takes before its first operation: it sees the mode. */
  pthread_mutex_lock(&c->mu);
  bool used = c->used;
  if (!used) vn_io_init(&c->mode, (vn_io_mode)mode);
  pthread_mutex_unlock(&c->mu);
  if (used) return vn_throw_type(env, "setIoMode after an operation was queued");
  return NULL;
}

/* ioCounts(): [packets moved staged, packets moved direct] so far. */
static napi_value chan_io_counts(napi_env env, napi_callback_info info) {
  ct_chan* c = unwrap(env, info, 0, NULL);
  if (c == NULL) return NULL;
  napi_value arr, v;
  VN_CALL(env, napi_create_array_with_length(env, 2, &arr));
  for (uint32_t i = 0; i < 2; i++) {
    VN_CALL(env, napi_create_double(env, (double)__atomic_load_n(&c->mode.counts[i], __ATOMIC_RELAXED), &v));
    VN_CALL(env, napi_set_element(env, arr, i, v));
  }
  return arr;
}

static napi_value chan_unref(napi_env env, napi_callback_info info) {
  ct_chan* c = unwrap(env, info, 0, NULL);
  if (c != NULL && !c->thread_done) VN_CALL(env, napi_unref_threadsafe_function(env, c->tsfn));
  return NULL;
}

bool vn_chan_thread_define(napi_env env, napi_value exports) {
  napi_property_descriptor methods[] = {
      {"connect", NULL, chan_connect, NULL, NULL, NULL, napi_default_method, NULL},
      {"writev", NULL, chan_writev, NULL, NULL, NULL, napi_default_method, NULL},
      {"readv", NULL, chan_readv, NULL, NULL, NULL, napi_default_method, NULL},
      {"sendPackets", NULL, chan_send_packets, NULL, NULL, NULL, napi_default_method, NULL},
      {"recv", NULL, chan_recv, NULL, NULL, NULL, napi_default_method, NULL},
      {"shutdown", NULL, chan_shutdown, NULL, NULL, NULL, napi_default_method, NULL},
      {"discard", NULL, chan_discard, NULL, NULL, NULL, napi_default_method, NULL},
      {"end", NULL, chan_end, NULL, NULL, NULL, napi_default_method, NULL},
      {"unref", NULL, chan_unref, NULL, NULL, NULL, napi_default_method, NULL},
      {"setIoMode", NULL, chan_set_io_mode, NULL, NULL, NULL, napi_default_method, NULL},
      {"ioCounts", NULL, chan_io_counts, NULL, NULL, NULL, napi_default_method, NULL},
  };
  napi_value cls;
  if (napi_define_class(env, "ChannelThread", NAPI_AUTO_LENGTH, chan_new, NULL, sizeof methods / sizeof methods[0],
                        methods, &cls) != napi_ok ||
      napi_set_named_property(env, exports, "ChannelThread", cls) != napi_ok) {
    vn_throw_status(env, napi_generic_failure, "define ChannelThread");
    return false;
  }
  return true;
}
