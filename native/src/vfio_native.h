/*
 * vfio_native: the few syscalls Node lacks for vfio-user (SCM_RIGHTS, memfd, mmap, eventfd) plus a
 * uv_poll wrapper to drive nonblocking fds from the event loop. Every function is a thin, checked
 * wrapper: argument validation, one syscall (EINTR retried where that is safe), errno thrown as a JS
 * Error with `code` (errno name), `errno` (number) and `syscall`.
 */
#ifndef VFIO_NATIVE_H
#define VFIO_NATIVE_H

#include <node_api.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <uv.h>

/* The kernel's SCM_MAX_FD: the most fds one SCM_RIGHTS message can carry. */
#define VN_MAX_FDS 253
/* Most buffers one sendmsg takes (the addon's, far below IOV_MAX). */
#define VN_MAX_IOV 16

/* Everything this addon keeps per napi_env (main thread and each worker get their own). */
typedef struct vn_poller vn_poller;
typedef struct vn_instance {
  napi_env env;
  uv_loop_t* loop;
  vn_poller* pollers; /* every Poller whose uv handle is not yet fully closed */
  napi_async_cleanup_hook_handle cleanup;
  bool tearing_down;
} vn_instance;

/* util.c: errors and argument conversion. Each returns false after throwing. */
napi_value vn_throw_errno(napi_env env, int err, const char* syscall, const char* detail);
/* The Error vn_throw_errno throws, made without throwing it; false (an error thrown instead) if it
 * could not be built. */
bool vn_errno_error(napi_env env, int err, const char* syscall, const char* detail, napi_value* out);
napi_value vn_throw_type(napi_env env, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
napi_value vn_throw_range(napi_env env, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
napi_value vn_throw_status(napi_env env, napi_status status, const char* what);
bool vn_args(napi_env env, napi_callback_info info, size_t want, napi_value* argv, napi_value* self);
bool vn_get_fd(napi_env env, napi_value v, const char* name, int* out);
bool vn_get_int(napi_env env, napi_value v, const char* name, int64_t min, int64_t max, int64_t* out);
bool vn_get_u64(napi_env env, napi_value v, const char* name, uint64_t max, uint64_t* out);
bool vn_get_bool(napi_env env, napi_value v, const char* name, bool* out);
/* A typed array of type `want` (`kind` names it in the TypeError), its data and element count. */
bool vn_get_typed(napi_env env, napi_value v, napi_typedarray_type want, const char* kind, const char* name,
                  void** data, size_t* len);
bool vn_get_bytes(napi_env env, napi_value v, const char* name, uint8_t** data, size_t* len);
bool vn_get_sockaddr(napi_env env, napi_value v, struct sockaddr_un* addr, socklen_t* len);
/* tcp.c: a numeric IPv4/IPv6 address and port as a sockaddr (EINVAL thrown for anything else). */
bool vn_get_inet(napi_env env, napi_value v, int port, struct sockaddr_storage* ss, socklen_t* alen);
napi_value vn_int(napi_env env, int64_t v);
/* Sets an int socket option and returns the value the kernel reports back (it may adjust it). */
napi_value vn_setsockopt_int(napi_env env, int fd, int level, int name, int value);
napi_value vn_null(napi_env env);

/* Status-checking shorthand for napi calls inside a napi_callback: throw and return NULL. */
#define VN_CALL(env, call)                                                                          \
  do {                                                                                              \
    napi_status vn_status_ = (call);                                                                \
    if (vn_status_ != napi_ok) return vn_throw_status((env), vn_status_, #call);                    \
  } while (0)

/* Exported functions, grouped by file. */
napi_value vn_memfd_create(napi_env env, napi_callback_info info);
napi_value vn_mmap(napi_env env, napi_callback_info info);
napi_value vn_mmap_anon(napi_env env, napi_callback_info info);
napi_value vn_munmap(napi_env env, napi_callback_info info);
napi_value vn_mmap_share(napi_env env, napi_callback_info info);
napi_value vn_mmap_attach(napi_env env, napi_callback_info info);
napi_value vn_close(napi_env env, napi_callback_info info);
napi_value vn_dup(napi_env env, napi_callback_info info);
napi_value vn_fd_size(napi_env env, napi_callback_info info);
napi_value vn_malloc_trim_threshold(napi_env env, napi_callback_info info);
napi_value vn_eventfd(napi_env env, napi_callback_info info);
napi_value vn_eventfd_write(napi_env env, napi_callback_info info);
napi_value vn_eventfd_read(napi_env env, napi_callback_info info);
napi_value vn_socketpair(napi_env env, napi_callback_info info);
napi_value vn_listen_unix(napi_env env, napi_callback_info info);
napi_value vn_accept(napi_env env, napi_callback_info info);
napi_value vn_listen_tcp(napi_env env, napi_callback_info info);
napi_value vn_local_port(napi_env env, napi_callback_info info);
napi_value vn_connect_unix(napi_env env, napi_callback_info info);
napi_value vn_set_send_buffer(napi_env env, napi_callback_info info);
napi_value vn_tcp_socket(napi_env env, napi_callback_info info);
napi_value vn_set_notsent_lowat(napi_env env, napi_callback_info info);
napi_value vn_sendmsg(napi_env env, napi_callback_info info);
napi_value vn_recvmsg(napi_env env, napi_callback_info info);

/* memory.c, for holders in C (chanthread.c): adopts the hold on a mapping a mmapShare token carries (its
 * pages stay mapped until vn_mapping_release, whoever else unmaps them); false with a TypeError pending. */
bool vn_mapping_adopt(napi_env env, napi_value token, const char* fn, void** hold, uint8_t** addr, size_t* len);
void vn_mapping_release(void* hold);

/* poller.c */
bool vn_poller_define(napi_env env, napi_value exports);
void vn_poller_teardown(vn_instance* inst);

#endif
