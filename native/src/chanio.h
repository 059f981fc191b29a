/* Blocking socket I/O for channel threads (chanio.c). Registered by addon.c. */
#ifndef VFIO_NATIVE_CHANIO_H
#define VFIO_NATIVE_CHANIO_H

#include <node_api.h>

/* writevAll(fd, parts: Uint8Array[], abortFd, stallMs): number */
napi_value vn_writev_all(napi_env env, napi_callback_info info);
/* readvAll(fd, parts: Uint8Array[], abortFd, stallMs, progress: Int32Array | null): number */
napi_value vn_readv_all(napi_env env, napi_callback_info info);
/* connectTcp(fd, address, port, abortFd, timeoutMs): void */
napi_value vn_connect_tcp(napi_env env, napi_callback_info info);
/* shutdown(fd, how): void */
napi_value vn_shutdown(napi_env env, napi_callback_info info);
/* discardUntilEof(fd, abortFd, ms): boolean */
napi_value vn_discard_until_eof(napi_env env, napi_callback_info info);

#endif
