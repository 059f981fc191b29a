/* Zero-page detection for the RAM saver (zero.c). Registered by addon.c. */
#ifndef VFIO_NATIVE_ZERO_H
#define VFIO_NATIVE_ZERO_H

#include <node_api.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Whether n bytes at p are all zero (64-byte blocks, stopping at the first non-zero one). */
bool vn_all_zero(const uint8_t* p, size_t n);

/* Bit k set for each page k (4096 bytes at offset + k*4096) asked for in want and wholly inside a hole
 * of fd; only the wanted pages are asked about. extent[0..1] gets the last run of data whose end was
 * looked for, [start, end) (end where SEEK_HOLE found the next hole), or stays as it was. Returns -1 with
 * errno set when lseek fails for another reason than "no more data". */
int64_t vn_hole_mask(int fd, uint64_t offset, uint32_t want, double* extent);

/* isZero(data: Uint8Array): boolean */
napi_value vn_is_zero(napi_env env, napi_callback_info info);
/* zeroPages(data: Uint8Array, mask: number): number (the mask's pages that are all zero) */
napi_value vn_zero_pages(napi_env env, napi_callback_info info);

/* holePages(fd, offset, mask, extent: Float64Array): number (the mask's pages in holes of fd) */
napi_value vn_hole_pages(napi_env env, napi_callback_info info);

#endif
