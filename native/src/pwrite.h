/* Pages written into a file through pwritev (pwrite.c). Registered by addon.c. */
#ifndef VFIO_NATIVE_PWRITE_H
#define VFIO_NATIVE_PWRITE_H

#include <node_api.h>

/* pwriteSpaced(fd, offset, src: Uint8Array, piece, gap): number (bytes written: every piece) */
napi_value vn_pwrite_spaced(napi_env env, napi_callback_info info);

#endif
