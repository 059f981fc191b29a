/* UNIX stream sockets (and accept for any listener): every fd is born nonblocking and close-on-exec (no
 * window for a fork to inherit it). */
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vfio_native.h"

#define VN_SOCK_FLAGS (SOCK_NONBLOCK | SOCK_CLOEXEC)

/* Closes fd without disturbing the errno we are about to report. */
static napi_value fail_closing(napi_env env, int fd, const char* syscall, const char* detail) {
  int err = errno;
  close(fd);
  return vn_throw_errno(env, err, syscall, detail);
}

napi_value vn_socketpair(napi_env env, napi_callback_info info) {
  (void)info;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | VN_SOCK_FLAGS, 0, sv) != 0) return vn_throw_errno(env, errno, "socketpair", NULL);
  napi_value arr, a, b;
  if (napi_create_array_with_length(env, 2, &arr) != napi_ok || napi_create_int32(env, sv[0], &a) != napi_ok ||
      napi_create_int32(env, sv[1], &b) != napi_ok || napi_set_element(env, arr, 0, a) != napi_ok ||
      napi_set_element(env, arr, 1, b) != napi_ok) {
    close(sv[0]);
    close(sv[1]);
    return vn_throw_status(env, napi_generic_failure, "socketpair result");
  }
  return arr;
}

/*
 * listenUnix(path, backlog). The socket file must never exist with a wider mode than 0600, not even
 * between bind() and a chmod(). On Linux, unix_bind() creates the inode with the socket inode's own
 * mode (masked by umask), so fchmod() on the unbound socket first closes that window.
 */
napi_value vn_listen_unix(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  struct sockaddr_un addr;
  socklen_t alen;
  int64_t backlog;
  if (!vn_args(env, info, 2, argv, NULL) || !vn_get_sockaddr(env, argv[0], &addr, &alen) ||
      !vn_get_int(env, argv[1], "backlog", 0, INT32_MAX, &backlog))
    return NULL;
  int fd = socket(AF_UNIX, SOCK_STREAM | VN_SOCK_FLAGS, 0);
  if (fd < 0) return vn_throw_errno(env, errno, "socket", NULL);
  if (fchmod(fd, S_IRUSR | S_IWUSR) != 0) return fail_closing(env, fd, "fchmod", NULL);
  if (bind(fd, (struct sockaddr*)&addr, alen) != 0) return fail_closing(env, fd, "bind", addr.sun_path);
  if (listen(fd, (int)backlog) != 0) {
    int err = errno;
    unlink(addr.sun_path); /* we created it a moment ago */
    close(fd);
    return vn_throw_errno(env, err, "listen", addr.sun_path);
  }
  return vn_int(env, fd);
}

/* accept(fd): a new nonblocking, cloexec fd from any listening socket (UNIX or TCP), or -1 when nothing is
 * pending. */
napi_value vn_accept(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!vn_args(env, info, 1, argv, NULL) || !vn_get_fd(env, argv[0], "fd", &fd)) return NULL;
  for (;;) {
    int c = accept4(fd, NULL, NULL, VN_SOCK_FLAGS);
    if (c >= 0) return vn_int(env, c);
    if (errno == EINTR || errno == ECONNABORTED) continue; /* ECONNABORTED: that peer left; try the next */
    if (errno == EAGAIN || errno == EWOULDBLOCK) return vn_int(env, -1);
    return vn_throw_errno(env, errno, "accept4", NULL);
  }
}

/*
 * connectUnix(path): a connected nonblocking fd. A UNIX stream connect never goes EINPROGRESS: it
 * succeeds at once, or fails (ENOENT, ECONNREFUSED, or EAGAIN when the listener's backlog is full).
 * Connecting nonblocking means a full backlog can never stall the event loop.
 */
napi_value vn_connect_unix(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  struct sockaddr_un addr;
  socklen_t alen;
  if (!vn_args(env, info, 1, argv, NULL) || !vn_get_sockaddr(env, argv[0], &addr, &alen)) return NULL;
  int fd = socket(AF_UNIX, SOCK_STREAM | VN_SOCK_FLAGS, 0);
  if (fd < 0) return vn_throw_errno(env, errno, "socket", NULL);
  if (connect(fd, (struct sockaddr*)&addr, alen) != 0) return fail_closing(env, fd, "connect", addr.sun_path);
  return vn_int(env, fd);
}

/*
 * setSendBuffer(fd, bytes): asks for SO_SNDBUF of `bytes` and returns what the kernel granted (getsockopt:
 * Linux doubles the request for its bookkeeping and caps the request at net.core.wmem_max).
 */
napi_value vn_set_send_buffer(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  int64_t bytes;
  if (!vn_args(env, info, 2, argv, NULL) || !vn_get_fd(env, argv[0], "fd", &fd) ||
      !vn_get_int(env, argv[1], "bytes", 1, INT32_MAX / 2, &bytes))
    return NULL;
  return vn_setsockopt_int(env, fd, SOL_SOCKET, SO_SNDBUF, (int)bytes);
}
