/*
 * Taking dirty pages for multifd in batches: the loop QEMU's RAM saver runs per page
 * (ram_find_and_save_block, then save_zero_page's buffer_is_zero and multifd_queue_page), here over a
 * run of dirty-log words in one call. Each word (32 pages) is taken with an atomic exchange, as the
 * JavaScript side does (src/vmm/guest/dirty-bitmap.ts), its pages sorted into zero pages (holes of the
 * memfd found with lseek, the rest by the block scan of zero.c) and pages with data, and their byte
 * offsets appended to the batch's two lists. One call per batch rather than one per word plus a JS loop
 * per page: the source's main thread then runs almost no JavaScript per page, and V8 has little of the
 * migration's code to compile while it runs.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>

#include "dirtypages.h"
#include "vfio_native.h"
#include "zero.h"

#define DP_PAGE 4096u
#define DP_WORD_PAGES 32u

/* The bits of a word's pages that lie wholly in holes of fd, or -1 (errno set) if lseek failed. extent
 * is the data run last met ([start, end) in bytes): pages inside it are data without asking. */
static int64_t word_holes(int fd, uint64_t first_page, uint32_t bits, double* extent) {
  uint64_t at = first_page * DP_PAGE;
  unsigned top = 31u - (unsigned)__builtin_clz(bits);
  uint64_t end = (first_page + top + 1) * DP_PAGE;
  if ((double)at >= extent[0] && (double)end <= extent[1]) return 0;
  return vn_hole_mask(fd, at, bits, extent);
}

napi_value vn_take_dirty_pages(napi_env env, napi_callback_info info) {
  napi_value argv[13];
  if (!vn_args(env, info, 13, argv, NULL)) return NULL;
  void *log_p, *extent_p, *normal_p, *zero_p, *queued_p;
  size_t log_len, extent_len, normal_len, zero_len, queued_len, mem_len;
  uint8_t* mem;
  int64_t from, words, pages, mem_first, fd, capacity, max_pages;
  if (!vn_get_typed(env, argv[0], napi_int32_array, "Int32Array", "log", &log_p, &log_len) ||
      !vn_get_int(env, argv[1], "from", 0, INT32_MAX, &from) ||
      !vn_get_int(env, argv[2], "words", 0, INT32_MAX, &words) ||
      !vn_get_int(env, argv[3], "pages", 0, INT64_MAX / DP_PAGE, &pages) ||
      !vn_get_bytes(env, argv[4], "mem", &mem, &mem_len) ||
      !vn_get_int(env, argv[5], "memFirst", 0, INT64_MAX / DP_PAGE, &mem_first) ||
      !vn_get_int(env, argv[6], "fd", -1, INT32_MAX, &fd) ||
      !vn_get_typed(env, argv[7], napi_float64_array, "Float64Array", "extent", &extent_p, &extent_len) ||
      !vn_get_typed(env, argv[8], napi_float64_array, "Float64Array", "normal", &normal_p, &normal_len) ||
      !vn_get_typed(env, argv[9], napi_float64_array, "Float64Array", "zero", &zero_p, &zero_len) ||
      !vn_get_typed(env, argv[10], napi_uint32_array, "Uint32Array", "queued", &queued_p, &queued_len) ||
      !vn_get_int(env, argv[11], "capacity", 0, UINT32_MAX, &capacity) ||
      !vn_get_int(env, argv[12], "maxPages", 0, INT64_MAX, &max_pages))
    return NULL;
  int32_t* log = log_p;
  double* extent = extent_p;
  double* normal = normal_p;
  double* zero = zero_p;
  uint32_t* queued = queued_p;
  if (extent_len < 2) return vn_throw_range(env, "extent has %zu elements, fewer than 2", extent_len);
  if (queued_len < 2) return vn_throw_range(env, "queued has %zu elements, fewer than 2", queued_len);
  if ((size_t)(from + words) > log_len)
    return vn_throw_range(env, "words %lld+%lld are outside the %zu-word log", (long long)from, (long long)words,
                          log_len);
  if ((uint64_t)pages > (uint64_t)log_len * DP_WORD_PAGES)
    return vn_throw_range(env, "%lld pages do not fit a %zu-word log", (long long)pages, log_len);
  if ((size_t)capacity > normal_len || (size_t)capacity > zero_len)
    return vn_throw_range(env, "capacity %lld exceeds the lists (%zu and %zu)", (long long)capacity, normal_len,
                          zero_len);
  if ((uint64_t)queued[0] + queued[1] > (uint64_t)capacity)
    return vn_throw_range(env, "%u + %u pages queued exceed the capacity %lld", queued[0], queued[1],
                          (long long)capacity);
  /* Every page the words name (short of the end of RAM) must be in mem: the scan reads them there. */
  uint64_t lo = (uint64_t)from * DP_WORD_PAGES;
  uint64_t hi = (uint64_t)(from + words) * DP_WORD_PAGES;
  if (hi > (uint64_t)pages) hi = (uint64_t)pages;
  if (words > 0 && lo < hi && (lo < (uint64_t)mem_first || hi > (uint64_t)mem_first + mem_len / DP_PAGE))
    return vn_throw_range(env, "pages %llu..%llu are outside the %zu bytes mapped from page %lld",
                          (unsigned long long)lo, (unsigned long long)hi - 1, mem_len, (long long)mem_first);

  uint32_t nc = queued[0], zc = queued[1];
  uint64_t taken = 0;
  bool holes_failed = false;
  int64_t w = from;
  for (; w < from + words; w++) {
    /* Room for a whole word, so no word is split between batches. */
    if (taken >= (uint64_t)max_pages || (uint64_t)capacity - nc - zc < DP_WORD_PAGES) break;
    /* A plain read first: most words of a later pass are clean, and an exchange costs a locked write.
     * A bit set after this read stays in the log for the next pass. */
    if (__atomic_load_n(&log[w], __ATOMIC_RELAXED) == 0) continue;
    uint32_t bits = (uint32_t)__atomic_exchange_n(&log[w], 0, __ATOMIC_SEQ_CST);
    uint64_t first = (uint64_t)w * DP_WORD_PAGES;
    /* Bits past the end of RAM (a last partial word) name no page. */
    if (first + DP_WORD_PAGES > (uint64_t)pages) bits &= (uint32_t)((1ull << ((uint64_t)pages - first)) - 1);
    if (bits == 0) continue;
    uint32_t zeros = 0;
    if (fd >= 0 && !holes_failed) {
      int64_t h = word_holes((int)fd, first, bits, extent);
      /* The pages are taken already: scan them all rather than lose them; the caller stops asking. */
      if (h < 0) holes_failed = true;
      else zeros = (uint32_t)h;
    }
    const uint8_t* base = mem + (first - (uint64_t)mem_first) * DP_PAGE;
    for (uint32_t rest = bits & ~zeros; rest != 0; rest &= rest - 1) {
      unsigned k = (unsigned)__builtin_ctz(rest);
      if (vn_all_zero(base + (size_t)k * DP_PAGE, DP_PAGE)) zeros |= 1u << k;
    }
    for (uint32_t b = bits; b != 0; b &= b - 1) {
      unsigned k = (unsigned)__builtin_ctz(b);
      double offset = (double)((first + k) * DP_PAGE);
      if (zeros & (1u << k)) zero[zc++] = offset;
      else normal[nc++] = offset;
    }
    taken += (uint64_t)__builtin_popcount(bits);
  }
  queued[0] = nc;
  queued[1] = zc;
  int64_t consumed = w - from;
  return vn_int(env, holes_failed ? -1 - consumed : consumed);
}
