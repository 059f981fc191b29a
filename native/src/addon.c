/* Module init: context-aware (NAPI_MODULE_INIT), so the addon loads in worker threads; all state is
 * per env, in napi instance data. */
#include <stdlib.h>

#include "chanmode.h"
#include "chanthread.h"
#include "crc32c.h"
#include "dirtypages.h"
#include "madvise.h"
#include "pwrite.h"
#include "vfio_native.h"
#include "zero.h"

static void instance_free(napi_env env, void* data, void* hint) {
  (void)env;
  (void)hint;
  free(data);
}

static void instance_cleanup(napi_async_cleanup_hook_handle handle, void* arg) {
  (void)handle; /* the same handle is kept in the instance */
  vn_poller_teardown(arg);
}

/* node_api.h defines these through NAPI_MODULE_INIT without prototypes; -Wmissing-prototypes wants them. */
NAPI_MODULE_EXPORT int32_t NODE_API_MODULE_GET_API_VERSION(void);
NAPI_MODULE_EXPORT napi_value NAPI_MODULE_INITIALIZER(napi_env env, napi_value exports);

#define VN_FN(name, fn) {name, NULL, fn, NULL, NULL, NULL, napi_enumerable, NULL}

NAPI_MODULE_INIT() {
  vn_instance* inst = calloc(1, sizeof *inst);
  if (inst == NULL) {
    napi_throw_error(env, "ENOMEM", "vfio_native: out of memory");
    return NULL;
  }
  inst->env = env;
  if (napi_get_uv_event_loop(env, &inst->loop) != napi_ok) {
    free(inst);
    return vn_throw_status(env, napi_generic_failure, "napi_get_uv_event_loop");
  }
  if (napi_set_instance_data(env, inst, instance_free, NULL) != napi_ok) {
    free(inst);
    return vn_throw_status(env, napi_generic_failure, "napi_set_instance_data");
  }
  /* From here the env owns inst (instance_free runs when the env goes). */
  VN_CALL(env, napi_add_async_cleanup_hook(env, instance_cleanup, inst, &inst->cleanup));
  vn_crc32c_init();

  napi_property_descriptor fns[] = {
      VN_FN("memfdCreate", vn_memfd_create),
      VN_FN("mmap", vn_mmap),
      VN_FN("mmapAnon", vn_mmap_anon),
      VN_FN("munmap", vn_munmap),
      VN_FN("mmapShare", vn_mmap_share),
      VN_FN("mmapAttach", vn_mmap_attach),
      VN_FN("madvise", vn_madvise),
      VN_FN("close", vn_close),
      VN_FN("dup", vn_dup),
      VN_FN("fdSize", vn_fd_size),
      VN_FN("mallocTrimThreshold", vn_malloc_trim_threshold),
      VN_FN("eventfd", vn_eventfd),
      VN_FN("eventfdWrite", vn_eventfd_write),
      VN_FN("eventfdRead", vn_eventfd_read),
      VN_FN("socketpair", vn_socketpair),
      VN_FN("listenUnix", vn_listen_unix),
      VN_FN("accept", vn_accept),
      VN_FN("listenTcp", vn_listen_tcp),
      VN_FN("localPort", vn_local_port),
      VN_FN("connectUnix", vn_connect_unix),
      VN_FN("setSendBuffer", vn_set_send_buffer),
      VN_FN("sendmsg", vn_sendmsg),
      VN_FN("recvmsg", vn_recvmsg),
      VN_FN("crc32c", vn_crc32c),
      VN_FN("crc32cCopy", vn_crc32c_copy_js),
      VN_FN("crc32cCopySpaced", vn_crc32c_copy_spaced_js),
      VN_FN("crc32cImplementation", vn_crc32c_implementation),
      VN_FN("isZero", vn_is_zero),
      VN_FN("zeroPages", vn_zero_pages),
      VN_FN("holePages", vn_hole_pages),
      VN_FN("takeDirtyPages", vn_take_dirty_pages),
      VN_FN("pwriteSpaced", vn_pwrite_spaced),
      VN_FN("copyUnspaced", vn_copy_unspaced),
      VN_FN("tcpSocket", vn_tcp_socket),
      VN_FN("setNotsentLowat", vn_set_notsent_lowat),
      VN_FN("ioChooserRun", vn_io_chooser_run),
  };
  VN_CALL(env, napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns));
  if (!vn_poller_define(env, exports)) return NULL;
  if (!vn_chan_thread_define(env, exports)) return NULL;
  return exports;
}
