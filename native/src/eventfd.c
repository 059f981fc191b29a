/* eventfd: the doorbell vfio-user uses for IRQs (SET_IRQS) and that device code can poll. */
#include <errno.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "vfio_native.h"

napi_value vn_eventfd(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int64_t initval;
  bool nonblock;
  if (!vn_args(env, info, 2, argv, NULL) || !vn_get_int(env, argv[0], "initval", 0, UINT32_MAX, &initval) ||
      !vn_get_bool(env, argv[1], "nonblock", &nonblock))
    return NULL;
  int fd = eventfd((unsigned int)initval, EFD_CLOEXEC | (nonblock ? EFD_NONBLOCK : 0));
  if (fd < 0) return vn_throw_errno(env, errno, "eventfd", NULL);
  return vn_int(env, fd);
}

/* eventfdWrite(fd, value): adds value to the counter. EAGAIN (counter would overflow) is thrown. */
napi_value vn_eventfd_write(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  uint64_t value;
  /* The kernel rejects 2^64-1 with EINVAL; let it say so rather than duplicating the rule here. */
  if (!vn_args(env, info, 2, argv, NULL) || !vn_get_fd(env, argv[0], "fd", &fd) ||
      !vn_get_u64(env, argv[1], "value", UINT64_MAX, &value))
    return NULL;
  ssize_t n;
  do n = write(fd, &value, sizeof value);
  while (n < 0 && errno == EINTR);
  if (n < 0) return vn_throw_errno(env, errno, "write(eventfd)", NULL);
  if (n != sizeof value) return vn_throw_errno(env, EIO, "write(eventfd)", "(short write)");
  return NULL;
}

/* eventfdRead(fd): the counter as a bigint (and resets it), or null when it is zero (EAGAIN). */
napi_value vn_eventfd_read(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!vn_args(env, info, 1, argv, NULL) || !vn_get_fd(env, argv[0], "fd", &fd)) return NULL;
  uint64_t value;
  ssize_t n;
  do n = read(fd, &value, sizeof value);
  while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return vn_null(env);
  if (n < 0) return vn_throw_errno(env, errno, "read(eventfd)", NULL);
  if (n != sizeof value) return vn_throw_errno(env, EIO, "read(eventfd)", "(short read)");
  napi_value r;
  VN_CALL(env, napi_create_bigint_uint64(env, value, &r));
  return r;
}
