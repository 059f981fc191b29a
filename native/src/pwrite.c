/*
 * Writing guest pages through the memfd rather than through a mapping of it: QEMU's destination writes
 * every incoming page through its mapping (ram_load_precopy memcpy's into host memory), so a page never
 * touched before is first allocated and zeroed by the fault (or by MADV_POPULATE_WRITE), then
 * overwritten. shmem's write path allocates a page a write fills whole without zeroing it (mm/shmem.c:
 * only a SGP_WRITE caller is trusted to fill what it allocates), and maps nothing into this process:
 * one copy per page, where populate-then-copy pays a clear and a copy plus the page-table work.
 *
 * pwriteSpaced() takes pages as the stream lays them out: `piece` bytes, then `gap` bytes of record
 * header, then the next piece; one pwritev(2) per IOV_MAX pieces. copyUnspaced() lands the same layout
 * in memory already mapped (a prefaulted destination's guest RAM): the pieces one after another, one
 * call for a run of page records where a copy per page cost the caller a typed array and a call each.
 */
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/uio.h>

#include "pwrite.h"
#include "vfio_native.h"

/* Pieces per pwritev call (the kernel's UIO_MAXIOV). */
#define VN_PWRITE_IOVS 1024

/* src is n >= 1 pieces with a gap between each two: n * piece + (n - 1) * gap bytes. 0 if not. */
static size_t spaced_pieces(size_t len, int64_t piece, int64_t gap) {
  size_t stride = (size_t)piece + (size_t)gap;
  if (len < (size_t)piece || (len + (size_t)gap) % stride != 0) return 0;
  return (len + (size_t)gap) / stride;
}

napi_value vn_pwrite_spaced(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  size_t argc = 5;
  VN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 5) return vn_throw_type(env, "pwriteSpaced(fd, offset, src, piece, gap) needs five arguments");
  int fd;
  uint64_t offset;
  uint8_t* src;
  size_t len;
  int64_t piece, gap;
  if (!vn_get_fd(env, argv[0], "fd", &fd)) return NULL;
  if (!vn_get_u64(env, argv[1], "offset", (uint64_t)INT64_MAX, &offset)) return NULL;
  if (!vn_get_bytes(env, argv[2], "src", &src, &len)) return NULL;
  if (!vn_get_int(env, argv[3], "piece", 1, INT32_MAX, &piece)) return NULL;
  if (!vn_get_int(env, argv[4], "gap", 0, INT32_MAX, &gap)) return NULL;
  size_t stride = (size_t)piece + (size_t)gap;
  size_t pieces = spaced_pieces(len, piece, gap);
  if (pieces == 0)
    return vn_throw_range(env, "pwriteSpaced: %zu bytes of src are not whole pieces of %lld with gaps of %lld", len,
                          (long long)piece, (long long)gap);
  if (offset + (uint64_t)pieces * (uint64_t)piece > (uint64_t)INT64_MAX)
    return vn_throw_range(env, "pwriteSpaced: offset %llu plus the pieces passes the largest file offset",
                          (unsigned long long)offset);

  struct iovec iov[VN_PWRITE_IOVS];
  size_t done = 0; /* pieces written whole */
  size_t part = 0; /* bytes of piece `done` already written */
  while (done < pieces) {
    int n = 0;
    for (size_t k = done; k < pieces && n < VN_PWRITE_IOVS; k++, n++) {
      size_t skip = k == done ? part : 0;
      iov[n].iov_base = src + k * stride + skip;
      iov[n].iov_len = (size_t)piece - skip;
    }
    ssize_t w = pwritev(fd, iov, n, (off_t)(offset + done * (uint64_t)piece + part));
    if (w < 0) {
      if (errno == EINTR) continue;
      return vn_throw_errno(env, errno, "pwritev", NULL);
    }
    if (w == 0) return vn_throw_errno(env, EIO, "pwritev", "(wrote nothing)");
    /* A short write (a signal, a full file system) goes on from the byte it stopped at. */
    size_t moved = part + (size_t)w;
    done += moved / (size_t)piece;
    part = moved % (size_t)piece;
  }
  return vn_int(env, (int64_t)(pieces * (size_t)piece));
}

napi_value vn_copy_unspaced(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  size_t argc = 4;
  VN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 4) return vn_throw_type(env, "copyUnspaced(dst, src, piece, gap) needs four arguments");
  uint8_t *dst, *src;
  size_t dst_len, len;
  int64_t piece, gap;
  if (!vn_get_bytes(env, argv[0], "dst", &dst, &dst_len)) return NULL;
  if (!vn_get_bytes(env, argv[1], "src", &src, &len)) return NULL;
  if (!vn_get_int(env, argv[2], "piece", 1, INT32_MAX, &piece)) return NULL;
  if (!vn_get_int(env, argv[3], "gap", 0, INT32_MAX, &gap)) return NULL;
  size_t pieces = spaced_pieces(len, piece, gap);
  if (pieces == 0)
    return vn_throw_range(env, "copyUnspaced: %zu bytes of src are not whole pieces of %lld with gaps of %lld", len,
                          (long long)piece, (long long)gap);
  size_t total = pieces * (size_t)piece;
  if (total > dst_len) return vn_throw_range(env, "copyUnspaced: %zu bytes of pieces do not fit in dst", total);
  if (src < dst + total && dst < src + len) return vn_throw_range(env, "copyUnspaced: src overlaps dst");
  size_t stride = (size_t)piece + (size_t)gap;
  for (size_t k = 0; k < pieces; k++) memcpy(dst + k * (size_t)piece, src + k * stride, (size_t)piece);
  return vn_int(env, (int64_t)total);
}
