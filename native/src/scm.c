/*
 * sendmsg/recvmsg with SCM_RIGHTS, the part of vfio-user Node cannot do (net.Socket drops ancillary
 * data). Both are nonblocking and never raise SIGPIPE. fds always ride on the first byte of a send,
 * and the Linux receiver returns them with the recv that reads that byte.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "vfio_native.h"

typedef union {
  struct cmsghdr align; /* CMSG_* need cmsghdr alignment */
  char buf[CMSG_SPACE(sizeof(int) * VN_MAX_FDS)];
} vn_cmsg_buf;

static bool get_fd_array(napi_env env, napi_value v, int* fds, uint32_t* count) {
  bool is_array = false;
  uint32_t n = 0;
  if (napi_is_array(env, v, &is_array) != napi_ok || !is_array || napi_get_array_length(env, v, &n) != napi_ok) {
    vn_throw_type(env, "fds must be an array of fd numbers");
    return false;
  }
  if (n > VN_MAX_FDS) {
    vn_throw_range(env, "at most %d fds fit in one SCM_RIGHTS message, got %u", VN_MAX_FDS, n);
    return false;
  }
  for (uint32_t i = 0; i < n; i++) {
    napi_value e;
    if (napi_get_element(env, v, i, &e) != napi_ok) {
      vn_throw_status(env, napi_generic_failure, "napi_get_element");
      return false;
    }
    if (!vn_get_fd(env, e, "fds[i]", &fds[i])) return false;
  }
  *count = n;
  return true;
}

/* data: one Uint8Array, or an array of up to VN_MAX_IOV of them sent in order as one write. */
static bool get_iovecs(napi_env env, napi_value v, struct iovec* iov, size_t* count, size_t* total) {
  bool is_array = false;
  uint32_t n = 1;
  if (napi_is_array(env, v, &is_array) != napi_ok || (is_array && napi_get_array_length(env, v, &n) != napi_ok)) {
    vn_throw_type(env, "data must be a Uint8Array or an array of them");
    return false;
  }
  if (n > VN_MAX_IOV) {
    vn_throw_range(env, "at most %d buffers in one sendmsg, got %u", VN_MAX_IOV, n);
    return false;
  }
  *total = 0;
  for (uint32_t i = 0; i < n; i++) {
    napi_value e = v;
    if (is_array && napi_get_element(env, v, i, &e) != napi_ok) {
      vn_throw_status(env, napi_generic_failure, "napi_get_element");
      return false;
    }
    uint8_t* data;
    size_t len;
    if (!vn_get_bytes(env, e, is_array ? "data[i]" : "data", &data, &len)) return false;
    iov[i].iov_base = data;
    iov[i].iov_len = len;
    *total += len;
  }
  *count = n;
  return true;
}

/*
 * sendmsg(fd, data, fds): bytes sent (possibly fewer than the data's length), or -1 on EAGAIN. Several
 * buffers go as one write (an iovec), so a message made of parts reaches the peer as one send would.
 */
napi_value vn_sendmsg(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd;
  struct iovec iov[VN_MAX_IOV];
  size_t niov = 0;
  size_t len = 0;
  int fds[VN_MAX_FDS];
  uint32_t nfds = 0;
  if (!vn_args(env, info, 3, argv, NULL) || !vn_get_fd(env, argv[0], "fd", &fd) ||
      !get_iovecs(env, argv[1], iov, &niov, &len) || !get_fd_array(env, argv[2], fds, &nfds))
    return NULL;
  /* A stream socket drops ancillary data sent with zero bytes: refuse rather than lose the fds. */
  if (nfds > 0 && len == 0) return vn_throw_errno(env, EINVAL, "sendmsg", "(fds need at least one data byte)");

  struct msghdr msg = {.msg_iov = iov, .msg_iovlen = niov};
  vn_cmsg_buf ctrl;
  if (nfds > 0) {
    memset(&ctrl, 0, sizeof ctrl);
    msg.msg_control = ctrl.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  ssize_t n;
  do n = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return vn_int(env, -1);
  if (n < 0) return vn_throw_errno(env, errno, "sendmsg", NULL);
  return vn_int(env, n);
}

static void close_all(const int* fds, size_t n) {
  for (size_t i = 0; i < n; i++) close(fds[i]);
}

/*
 * recvmsg(fd, buf, maxFds): {bytes, fds, truncated} or null on EAGAIN; bytes 0 is EOF. If the
 * ancillary data did not fit (MSG_CTRUNC) every fd that did arrive is closed and truncated is true:
 * the caller treats that as a protocol error, and no fd leaks whatever it does next.
 */
napi_value vn_recvmsg(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd;
  uint8_t* data;
  size_t len;
  int64_t max_fds;
  if (!vn_args(env, info, 3, argv, NULL) || !vn_get_fd(env, argv[0], "fd", &fd) ||
      !vn_get_bytes(env, argv[1], "buf", &data, &len) ||
      !vn_get_int(env, argv[2], "maxFds", 0, VN_MAX_FDS, &max_fds))
    return NULL;
  if (len == 0) return vn_throw_range(env, "buf must not be empty (a 0-byte read is indistinguishable from EOF)");

  struct iovec iov = {.iov_base = data, .iov_len = len};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  vn_cmsg_buf ctrl;
  if (max_fds > 0) {
    msg.msg_control = ctrl.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)max_fds);
  }
  ssize_t n;
  do n = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return vn_null(env);
  if (n < 0) return vn_throw_errno(env, errno, "recvmsg", NULL);

  int fds[VN_MAX_FDS];
  size_t nfds = 0;
  bool overflow = false; /* cannot happen (the control buffer bounds it), but never drop an fd unclosed */
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < k; i++) {
      int f;
      memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
      if (nfds < VN_MAX_FDS) {
        fds[nfds++] = f;
      } else {
        close(f);
        overflow = true;
      }
    }
  }
  /* CMSG_SPACE rounds up, so the kernel may fit more than maxFds: the limit is the caller's, enforce it. */
  bool truncated = overflow || (msg.msg_flags & MSG_CTRUNC) != 0 || nfds > (size_t)max_fds;
  if (truncated) {
    close_all(fds, nfds);
    nfds = 0;
  }

  napi_value result, jbytes, jfds, jtrunc;
  bool ok = napi_create_object(env, &result) == napi_ok && napi_create_int64(env, n, &jbytes) == napi_ok &&
            napi_create_array_with_length(env, nfds, &jfds) == napi_ok &&
            napi_get_boolean(env, truncated, &jtrunc) == napi_ok;
  for (size_t i = 0; ok && i < nfds; i++) {
    napi_value e;
    ok = napi_create_int32(env, fds[i], &e) == napi_ok && napi_set_element(env, jfds, (uint32_t)i, e) == napi_ok;
  }
  ok = ok && napi_set_named_property(env, result, "bytes", jbytes) == napi_ok &&
       napi_set_named_property(env, result, "fds", jfds) == napi_ok &&
       napi_set_named_property(env, result, "truncated", jtrunc) == napi_ok;
  if (!ok) {
    close_all(fds, nfds); /* JS never saw them: they are ours to close */
    return vn_throw_status(env, napi_generic_failure, "recvmsg result");
  }
  return result;
}
