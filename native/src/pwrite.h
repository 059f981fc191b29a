/* Pages laid out as a stream's records, landed in a file (pwritev) or in memory (pwrite.c). Registered by addon.c. */
#ifndef VFIO_NATIVE_PWRITE_H
#define VFIO_NATIVE_PWRITE_H

#include <node_api.h>

/* pwriteSpaced(fd, offset, src: Uint8Array, piece, gap): number (bytes written: every piece) */
napi_value vn_pwrite_spaced(napi_env env, napi_callback_info info);
/* copyUnspaced(dst: Uint8Array, src: Uint8Array, piece, gap): number (bytes copied: every piece, to dst's start) */
napi_value vn_copy_unspaced(napi_env env, napi_callback_info info);

#endif
