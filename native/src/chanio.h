/* Blocking socket I/O for channel threads (chanio.c), used by chanthread.c. */
#ifndef VFIO_NATIVE_CHANIO_H
#define VFIO_NATIVE_CHANIO_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

/* CLOCK_MONOTONIC in ms. */
int64_t vn_now_ms(void);
/* Waits until fd is ready for `events` (poll), abort_fd is readable (ECANCELED) or `deadline` (vn_now_ms
 * time; < 0: none) passes (ETIMEDOUT). 0 when ready. */
int vn_wait_ready(int fd, short events, int abort_fd, int64_t deadline);

/* One channel's socket as the blocking calls use it. */
typedef struct {
  int fd, abort_fd;   /* abort_fd -1: none */
  int64_t stall_ms;   /* no byte moving for this long is ETIMEDOUT; -1: no limit */
  int32_t* progress;  /* bumped once per syscall that moved bytes; NULL: none */
} vn_chan_io;

/* Writes every byte of iov (write_side) or reads until they are full or EOF: the bytes moved, or -errno
 * with *syscall naming the call. iov is consumed as it goes. */
ssize_t vn_chan_transfer(const vn_chan_io* io, struct iovec* iov, uint32_t count, bool write_side,
                         const char** syscall);
/* Connects a nonblocking socket (TCP_NODELAY set first): 0 or an errno, *syscall naming the call. */
int vn_chan_connect(int fd, const struct sockaddr_storage* ss, socklen_t alen, int abort_fd, int64_t timeout_ms,
                    const char** syscall);
/* Reads and drops until EOF (1) or `ms` pass (0); -errno on failure. */
int vn_chan_discard(int fd, int abort_fd, int64_t ms, const char** syscall);


#endif
