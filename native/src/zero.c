/*
 * Which guest pages are all zero: QEMU's buffer_is_zero() (util/bufferiszero.c), which the RAM saver's
 * save_zero_page() calls on every page before sending it. A page is read 64 bytes at a time (four SSE2
 * loads OR-ed together, or eight 64-bit words where SSE2 is absent) and the scan stops at the first
 * non-zero block: a data page is usually rejected in its first block, a zero page costs one pass at
 * memory bandwidth. zeroPages() checks up to 32 pages per call (one dirty-log word), so the N-API call
 * is paid once per 128 KiB rather than once per page.
 *
 * holePages() answers the same question for pages that were never written, without reading them: a
 * memfd (shmem) has no shared zero page, so reading a hole allocates a page; lseek(SEEK_DATA/SEEK_HOLE)
 * finds the holes instead (a swapped-out page counts as data, so nothing non-zero is taken for a hole).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "vfio_native.h"
#include "zero.h"

#define ZERO_PAGE_SIZE 4096u

/* A 64-bit word that may alias any byte buffer (the loads below read bytes through it). */
typedef uint64_t __attribute__((may_alias, aligned(1))) vn_word;

bool vn_all_zero(const uint8_t* p, size_t n) {
  /* Bytes up to a 16-byte boundary, so the block loop below makes aligned loads. */
  while (n > 0 && ((uintptr_t)p & 15u) != 0) {
    if (*p != 0) return false;
    p++;
    n--;
  }
#ifdef __SSE2__
  const __m128i zero = _mm_setzero_si128();
  while (n >= 64) {
    const __m128i* v = (const __m128i*)(const void*)p;
    __m128i acc = _mm_or_si128(_mm_or_si128(_mm_load_si128(v), _mm_load_si128(v + 1)),
                               _mm_or_si128(_mm_load_si128(v + 2), _mm_load_si128(v + 3)));
    if (_mm_movemask_epi8(_mm_cmpeq_epi8(acc, zero)) != 0xffff) return false;
    p += 64;
    n -= 64;
  }
#else
  while (n >= 64) {
    const vn_word* w = (const vn_word*)(const void*)p;
    if ((w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7]) != 0) return false;
    p += 64;
    n -= 64;
  }
#endif
  while (n >= 8) {
    if (*(const vn_word*)(const void*)p != 0) return false;
    p += 8;
    n -= 8;
  }
  while (n > 0) {
    if (*p != 0) return false;
    p++;
    n--;
  }
  return true;
}

napi_value vn_is_zero(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!vn_args(env, info, 1, argv, NULL)) return NULL;
  uint8_t* data;
  size_t len;
  if (!vn_get_bytes(env, argv[0], "data", &data, &len)) return NULL;
  napi_value out;
  VN_CALL(env, napi_get_boolean(env, vn_all_zero(data, len), &out));
  return out;
}

napi_value vn_zero_pages(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!vn_args(env, info, 2, argv, NULL)) return NULL;
  uint8_t* data;
  size_t len;
  int64_t mask;
  if (!vn_get_bytes(env, argv[0], "data", &data, &len) ||
      !vn_get_int(env, argv[1], "mask", INT32_MIN, UINT32_MAX, &mask))
    return NULL;
  uint32_t want = (uint32_t)mask;
  /* The highest page asked for must lie wholly inside data. */
  if (want != 0) {
    unsigned top = 31u - (unsigned)__builtin_clz(want);
    if ((size_t)(top + 1) * ZERO_PAGE_SIZE > len)
      return vn_throw_range(env, "page %u of the mask is outside the %zu-byte buffer", top, len);
  }
  uint32_t zero = 0;
  while (want != 0) {
    unsigned k = (unsigned)__builtin_ctz(want);
    want &= want - 1;
    if (vn_all_zero(data + (size_t)k * ZERO_PAGE_SIZE, ZERO_PAGE_SIZE)) zero |= 1u << k;
  }
  napi_value out;
  VN_CALL(env, napi_create_uint32(env, zero, &out));
  return out;
}

/* The first page index >= k whose bit is set in want, or 32 when there is none. */
static unsigned next_wanted(uint32_t want, unsigned k) {
  if (k >= 32) return 32;
  uint32_t rest = want >> k;
  return rest == 0 ? 32 : k + (unsigned)__builtin_ctz(rest);
}

/* lseek(SEEK_DATA) from pos, clamped to end (no more data: end). 0, or -1 (errno set) when lseek failed,
 * or 1 when its answer cannot be trusted: a file whose lseek answers without looking (a device's, say)
 * may say "here" for anything before pos, so no hole of it is trusted and every page is left to the scan. */
static int seek_data(int fd, off_t pos, off_t end, off_t* data) {
  off_t d = lseek(fd, pos, SEEK_DATA);
  if (d < 0) {
    if (errno != ENXIO) return -1;
    d = end;
  }
  if (d < pos) return 1;
  *data = d > end ? end : d;
  return 0;
}

int64_t vn_hole_mask(int fd, uint64_t offset, uint32_t want, double* extent) {
  if (want == 0) return 0;
  unsigned top = 31u - (unsigned)__builtin_clz(want);
  off_t end = (off_t)(offset + (uint64_t)(top + 1) * ZERO_PAGE_SIZE);
  /* Only the wanted pages are asked about: the walk starts at the first and jumps over the pages between
   * them, rather than walking every data run of the word (a later pass's dirty word has a page or two). */
  off_t pos = (off_t)(offset + (uint64_t)next_wanted(want, 0) * ZERO_PAGE_SIZE);
  off_t data;
  int r = seek_data(fd, pos, end, &data);
  uint32_t holes = 0;
  bool probe = true;
  while (r == 0) {
    /* [pos, data) is a hole: the pages wholly inside it. */
    uint64_t first = ((uint64_t)pos - offset + ZERO_PAGE_SIZE - 1) / ZERO_PAGE_SIZE;
    uint64_t last = ((uint64_t)data - offset) / ZERO_PAGE_SIZE; /* exclusive; < 32 while data < end */
    for (uint64_t k = first; k < last; k++) holes |= 1u << k;
    if (data >= end) break;
    /* The page at data holds data; nothing more to ask when no wanted page follows it. */
    unsigned k = next_wanted(want, (unsigned)last + 1);
    if (k >= 32) break;
    if (k == last + 1) {
      /* The next wanted page follows this one. Where data pages stand alone among holes (a sparse
       * guest's), asking for data from the next page names the next data page: one call finds the hole
       * after this one. Where they come in runs, SEEK_HOLE finds a run's end in one call. Each way is
       * kept while it pays: a probe that lands on data switches to SEEK_HOLE, a run of one page back. */
      off_t next = data + (off_t)ZERO_PAGE_SIZE;
      if (probe) {
        off_t more;
        r = seek_data(fd, next, end, &more);
        if (r != 0) break;
        if (more > next) {
          pos = next;
          data = more;
          continue;
        }
        probe = false;
      }
      /* SEEK_HOLE walks the run, and the caller keeps its end, so a guest full of data costs one walk
       * per run rather than one per call. */
      off_t hole = lseek(fd, data, SEEK_HOLE);
      if (hole < 0) return -1;
      if (hole <= data) break; /* cannot happen; never loop forever on a confused answer */
      if (hole == next) probe = true;
      extent[0] = (double)data;
      extent[1] = (double)hole;
      uint64_t after = ((uint64_t)hole - offset + ZERO_PAGE_SIZE - 1) / ZERO_PAGE_SIZE;
      k = after >= 32 ? 32 : next_wanted(want, (unsigned)after);
      if (k >= 32) break;
    }
    pos = (off_t)(offset + (uint64_t)k * ZERO_PAGE_SIZE);
    r = seek_data(fd, pos, end, &data);
  }
  if (r < 0) return -1;
  if (r > 0) return 0;
  return holes & want;
}

napi_value vn_hole_pages(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!vn_args(env, info, 4, argv, NULL)) return NULL;
  int fd;
  uint64_t offset;
  int64_t mask;
  if (!vn_get_fd(env, argv[0], "fd", &fd) || !vn_get_u64(env, argv[1], "offset", INT64_MAX / 2, &offset) ||
      !vn_get_int(env, argv[2], "mask", INT32_MIN, UINT32_MAX, &mask))
    return NULL;
  size_t length = 0;
  void* out_ptr = NULL;
  if (!vn_get_typed(env, argv[3], napi_float64_array, "Float64Array", "extent", &out_ptr, &length)) return NULL;
  if (length < 2) return vn_throw_range(env, "extent has %zu elements, fewer than 2", length);
  if (offset % ZERO_PAGE_SIZE != 0)
    return vn_throw_range(env, "offset %llu is not a multiple of 4096", (unsigned long long)offset);
  int64_t holes = vn_hole_mask(fd, offset, (uint32_t)mask, (double*)out_ptr);
  if (holes < 0) return vn_throw_errno(env, errno, "lseek", "(SEEK_DATA/SEEK_HOLE)");
  napi_value out;
  VN_CALL(env, napi_create_uint32(env, (uint32_t)holes, &out));
  return out;
}
