/* madvise() over part of a mapping made by mmap() (memory.c): prefaulting guest RAM, mostly. Registered
 * by addon.c. */
#ifndef VFIO_NATIVE_MADVISE_H
#define VFIO_NATIVE_MADVISE_H

#include <node_api.h>

/* madvise(ab: ArrayBuffer from mmap, offset, length, advice: number): undefined */
napi_value vn_madvise(napi_env env, napi_callback_info info);

#endif
