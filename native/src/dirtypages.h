/* Dirty pages taken for multifd a batch at a time (dirtypages.c). Registered by addon.c. */
#ifndef VFIO_NATIVE_DIRTYPAGES_H
#define VFIO_NATIVE_DIRTYPAGES_H

#include <node_api.h>

/* takeDirtyPages(log, from, words, pages, mem, memFirst, fd, extent, normal, zero, queued, capacity,
 * maxPages): number (words consumed; -1 - consumed when lseek failed and holes were not looked for) */
napi_value vn_take_dirty_pages(napi_env env, napi_callback_info info);

#endif
