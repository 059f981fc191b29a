/*
 * madvise(ab, offset, length, advice) on [offset, offset+length) of a mapping returned by mmap(). Only
 * mmap()'s ArrayBuffers are accepted: advice such as MADV_DONTNEED on memory V8 allocated would corrupt
 * it. The range must lie inside the mapping and start on a page boundary (the mapping itself does); the
 * advice is passed through unchecked, so the kernel says what it does not know (EINVAL). Runs on the
 * calling thread: MADV_POPULATE_WRITE over a large range takes as long as faulting it in, so call it
 * from a worker thread to keep an event loop free.
 */
#include <errno.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#include "madvise.h"
#include "vfio_native.h"

napi_value vn_madvise(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!vn_args(env, info, 4, argv, NULL)) return NULL;
  bool is_ab = false, detached = false;
  VN_CALL(env, napi_is_arraybuffer(env, argv[0], &is_ab));
  if (!is_ab) return vn_throw_type(env, "madvise expects an ArrayBuffer returned by mmap");
  VN_CALL(env, napi_is_detached_arraybuffer(env, argv[0], &detached));
  if (detached) return vn_throw_errno(env, EINVAL, "madvise", "(the mapping was unmapped)");
  void* wrapped = NULL;
  if (napi_unwrap(env, argv[0], &wrapped) != napi_ok || wrapped == NULL)
    return vn_throw_type(env, "madvise expects an ArrayBuffer returned by mmap");
  void* data = NULL;
  size_t len = 0;
  VN_CALL(env, napi_get_arraybuffer_info(env, argv[0], &data, &len));

  uint64_t offset, length;
  int64_t advice;
  if (!vn_get_u64(env, argv[1], "offset", len, &offset) || !vn_get_u64(env, argv[2], "length", len, &length) ||
      !vn_get_int(env, argv[3], "advice", 0, INT32_MAX, &advice))
    return NULL;
  if (offset + length > len)
    return vn_throw_range(env, "range %llu+%llu is outside the %zu-byte mapping", (unsigned long long)offset,
                          (unsigned long long)length, len);
  long page = sysconf(_SC_PAGESIZE);
  uintptr_t start = (uintptr_t)data + (uintptr_t)offset;
  if (page > 0 && start % (uintptr_t)page != 0)
    return vn_throw_range(env, "offset %llu is not on a page boundary", (unsigned long long)offset);
  if (length == 0) return NULL;
  int rc;
  do {
    rc = madvise((void*)start, (size_t)length, (int)advice);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) return vn_throw_errno(env, errno, "madvise", NULL);
  return NULL;
}
