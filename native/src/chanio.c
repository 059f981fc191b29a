/*
 * Blocking socket I/O for a channel thread (QEMU's multifd threads call qio_channel_writev_full_all and
 * qio_channel_readv_full_all on their channels, which block the thread until every byte moved). A
 * multifd channel thread here does the same through these calls: the pages go from guest RAM to the
 * socket and from the socket into guest RAM in writev/readv calls on the thread itself, with no event
 * loop, stream machinery or callback per write in between.
 *
 * The fds stay nonblocking (they are created so, and the main thread owns and closes them): each call
 * moves what the kernel takes, then poll()s the socket together with an abort eventfd. The main thread
 * writes that eventfd to stop a thread at once (ECANCELED), which a thread sleeping in a blocking
 * read could not otherwise notice. `stallMs` bounds how long no byte may move (ETIMEDOUT): a stalled
 * link, where a blocking call would wait forever.
 */
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "chanio.h"
#include "vfio_native.h"

/* iovecs per writev/readv call (the kernel's UIO_MAXIOV). */
#define VN_CHAN_IOVS 1024

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Waits until fd is ready for `events`, the abort eventfd is readable, or `deadline` (CLOCK_MONOTONIC ms;
 * < 0: none) passes. 0 when ready (or hung up / in error: the next syscall says which), else an errno.
 */
static int wait_ready(int fd, short events, int abort_fd, int64_t deadline) {
  for (;;) {
    struct pollfd p[2] = {{.fd = fd, .events = events}, {.fd = abort_fd, .events = POLLIN}};
    int timeout = -1;
    if (deadline >= 0) {
      int64_t left = deadline - now_ms();
      if (left <= 0) return ETIMEDOUT;
      timeout = left > INT_MAX ? INT_MAX : (int)left;
    }
    int n = poll(p, abort_fd >= 0 ? 2 : 1, timeout);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (abort_fd >= 0 && p[1].revents != 0) return ECANCELED;
    if (p[0].revents != 0) return 0;
    if (n == 0 && deadline >= 0 && now_ms() >= deadline) return ETIMEDOUT;
  }
}

/* The arguments every transfer takes: fd, the parts, abortFd (-1: none), stallMs (-1: none). */
typedef struct {
  int fd, abort_fd;
  int64_t stall_ms;
  struct iovec* iov;
  uint32_t count;
  int32_t* progress; /* bumped once per syscall that moved bytes; NULL: none */
} vn_transfer;

static bool get_transfer(napi_env env, napi_value* argv, vn_transfer* t) {
  int64_t abort_fd;
  bool is_array = false;
  if (!vn_get_fd(env, argv[0], "fd", &t->fd)) return false;
  if (napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array) {
    vn_throw_type(env, "parts must be an array of Uint8Array");
    return false;
  }
  if (!vn_get_int(env, argv[2], "abortFd", -1, INT32_MAX, &abort_fd) ||
      !vn_get_int(env, argv[3], "stallMs", -1, INT32_MAX, &t->stall_ms))
    return false;
  t->abort_fd = (int)abort_fd;
  if (napi_get_array_length(env, argv[1], &t->count) != napi_ok) return false;
  t->iov = calloc(t->count > 0 ? t->count : 1, sizeof *t->iov);
  if (t->iov == NULL) {
    vn_throw_errno(env, ENOMEM, "calloc", NULL);
    return false;
  }
  for (uint32_t k = 0; k < t->count; k++) {
    napi_value part;
    uint8_t* data;
    size_t len;
    if (napi_get_element(env, argv[1], k, &part) != napi_ok || !vn_get_bytes(env, part, "each part", &data, &len)) {
      free(t->iov);
      return false;
    }
    t->iov[k].iov_base = data;
    t->iov[k].iov_len = len;
  }
  return true;
}

/*
 * Moves every byte of t's parts (write) or until EOF (read). Returns the bytes moved, or -errno. The
 * iovecs are consumed as they go (a short call resumes inside the part it stopped in).
 */
static ssize_t transfer(vn_transfer* t, bool write_side, const char** syscall) {
  size_t moved = 0;
  uint32_t first = 0;
  int64_t deadline = t->stall_ms >= 0 ? now_ms() + t->stall_ms : -1;
  while (first < t->count) {
    if (t->iov[first].iov_len == 0) {
      first++;
      continue;
    }
    int n = (int)(t->count - first < VN_CHAN_IOVS ? t->count - first : VN_CHAN_IOVS);
    ssize_t r = write_side ? writev(t->fd, t->iov + first, n) : readv(t->fd, t->iov + first, n);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        *syscall = write_side ? "writev" : "readv";
        return -errno;
      }
      int err = wait_ready(t->fd, write_side ? POLLOUT : POLLIN, t->abort_fd, deadline);
      if (err != 0) {
        *syscall = "poll";
        return -err;
      }
      continue;
    }
    if (r == 0) {
      if (write_side) {
        *syscall = "writev";
        return -EIO;
      }
      break; /* EOF: the caller sees fewer bytes than it asked for */
    }
    if (t->progress != NULL) __atomic_add_fetch(t->progress, 1, __ATOMIC_RELAXED);
    moved += (size_t)r;
    if (t->stall_ms >= 0) deadline = now_ms() + t->stall_ms;
    size_t left = (size_t)r;
    while (left > 0 && left >= t->iov[first].iov_len) left -= t->iov[first++].iov_len;
    if (left > 0) {
      t->iov[first].iov_base = (uint8_t*)t->iov[first].iov_base + left;
      t->iov[first].iov_len -= left;
    }
  }
  return (ssize_t)moved;
}

static napi_value finish_transfer(napi_env env, vn_transfer* t, bool write_side) {
  const char* syscall = NULL;
  ssize_t r = transfer(t, write_side, &syscall);
  free(t->iov);
  if (r < 0) return vn_throw_errno(env, (int)-r, syscall, NULL);
  return vn_int(env, (int64_t)r);
}

/* writevAll(fd, parts, abortFd, stallMs): every byte of parts, in order; returns how many. */
napi_value vn_writev_all(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  vn_transfer t = {.progress = NULL};
  if (!vn_args(env, info, 4, argv, NULL) || !get_transfer(env, argv, &t)) return NULL;
  return finish_transfer(env, &t, true);
}

/* readvAll(fd, parts, abortFd, stallMs, progress: Int32Array | null): fills parts in order; fewer bytes
 * than they hold means EOF came first. */
napi_value vn_readv_all(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  vn_transfer t = {.progress = NULL};
  if (!vn_args(env, info, 5, argv, NULL)) return NULL;
  napi_valuetype type;
  VN_CALL(env, napi_typeof(env, argv[4], &type));
  if (type != napi_null) {
    bool is_ta = false;
    napi_typedarray_type tt;
    size_t length;
    void* data;
    if (napi_is_typedarray(env, argv[4], &is_ta) != napi_ok || !is_ta ||
        napi_get_typedarray_info(env, argv[4], &tt, &length, &data, NULL, NULL) != napi_ok || tt != napi_int32_array ||
        length < 1)
      return vn_throw_type(env, "progress must be an Int32Array or null");
    t.progress = data;
  }
  if (!get_transfer(env, argv, &t)) return NULL;
  return finish_transfer(env, &t, false);
}

/* connectTcp(fd, address, port, abortFd, timeoutMs): connects a socket made by tcpSocket(); sets TCP_NODELAY. */
napi_value vn_connect_tcp(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  int fd;
  int64_t port, abort_fd, timeout_ms;
  struct sockaddr_storage ss;
  socklen_t alen;
  if (!vn_args(env, info, 5, argv, NULL) || !vn_get_fd(env, argv[0], "fd", &fd) ||
      !vn_get_int(env, argv[2], "port", 1, 65535, &port) ||
      !vn_get_int(env, argv[3], "abortFd", -1, INT32_MAX, &abort_fd) ||
      !vn_get_int(env, argv[4], "timeoutMs", -1, INT32_MAX, &timeout_ms) ||
      !vn_get_inet(env, argv[1], (int)port, &ss, &alen))
    return NULL;
  int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
    return vn_throw_errno(env, errno, "setsockopt", "TCP_NODELAY");
  if (connect(fd, (struct sockaddr*)&ss, alen) == 0) return NULL;
  if (errno != EINPROGRESS && errno != EINTR) return vn_throw_errno(env, errno, "connect", NULL);
  int err = wait_ready(fd, POLLOUT, (int)abort_fd, timeout_ms >= 0 ? now_ms() + timeout_ms : -1);
  if (err != 0) return vn_throw_errno(env, err, "connect", NULL);
  socklen_t elen = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0) return vn_throw_errno(env, errno, "getsockopt", NULL);
  if (err != 0) return vn_throw_errno(env, err, "connect", NULL);
  return NULL;
}

/* shutdown(fd, how): 0 read side, 1 write side (a FIN after what was written), 2 both. */
napi_value vn_shutdown(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  int64_t how;
  if (!vn_args(env, info, 2, argv, NULL) || !vn_get_fd(env, argv[0], "fd", &fd) ||
      !vn_get_int(env, argv[1], "how", SHUT_RD, SHUT_RDWR, &how))
    return NULL;
  if (shutdown(fd, (int)how) != 0) return vn_throw_errno(env, errno, "shutdown", NULL);
  return NULL;
}

/*
 * discardUntilEof(fd, abortFd, ms): reads and drops what arrives until the peer closes (true) or `ms`
 * pass (false). How a channel waits for the far side to finish with it.
 */
napi_value vn_discard_until_eof(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd;
  int64_t abort_fd, ms;
  if (!vn_args(env, info, 3, argv, NULL) || !vn_get_fd(env, argv[0], "fd", &fd) ||
      !vn_get_int(env, argv[1], "abortFd", -1, INT32_MAX, &abort_fd) ||
      !vn_get_int(env, argv[2], "ms", 0, INT32_MAX, &ms))
    return NULL;
  static __thread uint8_t sink[65536];
  int64_t deadline = now_ms() + ms;
  for (;;) {
    ssize_t r = read(fd, sink, sizeof sink);
    if (r == 0) break;
    if (r > 0) continue;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      if (errno == ECONNRESET) break; /* closed too, less politely */
      return vn_throw_errno(env, errno, "read", NULL);
    }
    int err = wait_ready(fd, POLLIN, (int)abort_fd, deadline);
    if (err == ETIMEDOUT) {
      napi_value no;
      VN_CALL(env, napi_get_boolean(env, false, &no));
      return no;
    }
    if (err != 0) return vn_throw_errno(env, err, "poll", NULL);
  }
  napi_value yes;
  VN_CALL(env, napi_get_boolean(env, true, &yes));
  return yes;
}
