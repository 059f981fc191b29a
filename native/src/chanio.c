/*
 * Blocking socket I/O for a multifd channel thread (chanthread.c; QEMU's multifd threads call
 * qio_channel_writev_full_all and qio_channel_readv_full_all on their channels, which block the thread
 * until every byte moved): the pages go between the socket and memory in writev/readv calls on the
 * thread itself, with no event loop, stream machinery or callback per write in between.
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

/* iovecs per writev/readv call (the kernel's UIO_MAXIOV). */
#define VN_CHAN_IOVS 1024

int64_t vn_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Waits until fd is ready for `events`, the abort eventfd is readable, or `deadline` (CLOCK_MONOTONIC ms;
 * < 0: none) passes. 0 when ready (or hung up / in error: the next syscall says which), else an errno.
 */
int vn_wait_ready(int fd, short events, int abort_fd, int64_t deadline) {
  for (;;) {
    struct pollfd p[2] = {{.fd = fd, .events = events}, {.fd = abort_fd, .events = POLLIN}};
    int timeout = -1;
    if (deadline >= 0) {
      int64_t left = deadline - vn_now_ms();
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
    if (n == 0 && deadline >= 0 && vn_now_ms() >= deadline) return ETIMEDOUT;
  }
}

/*
 * Moves every byte of the parts (write) or until EOF (read). Returns the bytes moved, or -errno. The
 * iovecs are consumed as they go (a short call resumes inside the part it stopped in).
 */
ssize_t vn_chan_transfer(const vn_chan_io* io, struct iovec* iov, uint32_t count, bool write_side,
                         const char** syscall) {
  size_t moved = 0;
  uint32_t first = 0;
  int64_t deadline = io->stall_ms >= 0 ? vn_now_ms() + io->stall_ms : -1;
  while (first < count) {
    if (iov[first].iov_len == 0) {
      first++;
      continue;
    }
    int n = (int)(count - first < VN_CHAN_IOVS ? count - first : VN_CHAN_IOVS);
    ssize_t r = write_side ? writev(io->fd, iov + first, n) : readv(io->fd, iov + first, n);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        *syscall = write_side ? "writev" : "readv";
        return -errno;
      }
      int err = vn_wait_ready(io->fd, write_side ? POLLOUT : POLLIN, io->abort_fd, deadline);
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
    if (io->progress != NULL) __atomic_add_fetch(io->progress, 1, __ATOMIC_RELAXED);
    moved += (size_t)r;
    if (io->stall_ms >= 0) deadline = vn_now_ms() + io->stall_ms;
    size_t left = (size_t)r;
    while (left > 0 && left >= iov[first].iov_len) left -= iov[first++].iov_len;
    if (left > 0) {
      iov[first].iov_base = (uint8_t*)iov[first].iov_base + left;
      iov[first].iov_len -= left;
    }
  }
  return (ssize_t)moved;
}

int vn_chan_connect(int fd, const struct sockaddr_storage* ss, socklen_t alen, int abort_fd, int64_t timeout_ms,
                    const char** syscall) {
  int one = 1;
  *syscall = "setsockopt";
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) return errno;
  *syscall = "connect";
  if (connect(fd, (const struct sockaddr*)ss, alen) == 0) return 0;
  if (errno != EINPROGRESS && errno != EINTR) return errno;
  int err = vn_wait_ready(fd, POLLOUT, abort_fd, timeout_ms >= 0 ? vn_now_ms() + timeout_ms : -1);
  if (err != 0) return err;
  socklen_t elen = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0) {
    *syscall = "getsockopt";
    return errno;
  }
  return err;
}

/* Reads and drops until the peer closes or `ms` pass: how a channel waits for the far side to finish. */
int vn_chan_discard(int fd, int abort_fd, int64_t ms, const char** syscall) {
  static __thread uint8_t sink[65536];
  int64_t deadline = vn_now_ms() + ms;
  for (;;) {
    ssize_t r = read(fd, sink, sizeof sink);
    if (r == 0) return 1;
    if (r > 0) continue;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      if (errno == ECONNRESET) return 1; /* closed too, less politely */
      *syscall = "read";
      return -errno;
    }
    int err = vn_wait_ready(fd, POLLIN, abort_fd, deadline);
    if (err == ETIMEDOUT) return 0;
    if (err != 0) {
      *syscall = "poll";
      return -err;
    }
  }
}
