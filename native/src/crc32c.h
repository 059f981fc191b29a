/* CRC-32C (Castagnoli) for the migration stream's section checksums: VPCLMULQDQ folding or the SSE4.2
 * instruction when the CPU has them, a slicing-by-8 table otherwise (crc32c.c says which when). Shared by crc32c.c and addon.c (which registers the export). */
#ifndef VFIO_NATIVE_CRC32C_H
#define VFIO_NATIVE_CRC32C_H

#include <node_api.h>
#include <stddef.h>
#include <stdint.h>

/* Picks the implementation (once per process; safe to call from every env's init). */
void vn_crc32c_init(void);

/* CRC-32C of len bytes continuing from crc (a previous result; 0 to start). */
uint32_t vn_crc32c_update(uint32_t crc, const uint8_t* data, size_t len);

/* Copies len bytes from src to dst (not overlapping) and returns their CRC-32C continuing from crc, in
 * one pass over the bytes where the CPU has the CRC instruction. */
uint32_t vn_crc32c_copy(uint32_t crc, const uint8_t* src, size_t len, uint8_t* dst);

/* crc32c(data: Uint8Array, seed?: number): number */
napi_value vn_crc32c(napi_env env, napi_callback_info info);

/* crc32cCopy(dst, from, at, src, seed): CRC-32C of dst[from, at) then src, continuing from seed, while
 * src is copied to dst[at, at + src.length) */
napi_value vn_crc32c_copy_js(napi_env env, napi_callback_info info);

/* crc32cCopySpaced(dst, from, at, src, seed, piece, gap): as crc32cCopy, but src lands in pieces of `piece`
 * bytes with `gap` bytes of dst (the caller's, checksummed in place) before each piece after the first */
napi_value vn_crc32c_copy_spaced_js(napi_env env, napi_callback_info info);

/* crc32cImplementation(): 'vpclmulqdq' | 'sse4.2' | 'table' */
napi_value vn_crc32c_implementation(napi_env env, napi_callback_info info);

#endif
