/*
 * Poller: a uv_poll_t on the env's own loop, so nonblocking fds (sockets, eventfds) are driven by the
 * event loop like Node's own handles.
 *
 * Lifetime. The C struct has two owners that end in either order: the uv handle (ends in on_close,
 * after uv_close) and the JS wrapper (ends in its finalizer). The wrapper is held strongly only while
 * polling is started, so a started Poller cannot be collected out from under its callback, while a
 * stopped one neither keeps the loop alive (uv_poll_stop makes the handle inactive) nor leaks (GC
 * closes it). At env teardown (process exit, worker exit) the async cleanup hook closes every handle
 * and holds teardown until the last close callback has run, because a worker's loop must be empty
 * before it is closed.
 */
#include <errno.h>
#include <stdlib.h>

#include "vfio_native.h"

struct vn_poller {
  uv_poll_t handle;
  vn_instance* inst;
  napi_ref self;     /* the JS wrapper: weak, strong (1) while pinned */
  napi_ref callback; /* strong */
  napi_async_context ctx;
  bool pinned, closing, closed, finalized;
  vn_poller* prev;
  vn_poller* next;
};

static void list_remove(vn_poller* p) {
  if (p->prev != NULL) p->prev->next = p->next;
  else p->inst->pollers = p->next;
  if (p->next != NULL) p->next->prev = p->prev;
  p->prev = p->next = NULL;
}

static void finish_teardown_if_done(vn_instance* inst) {
  if (inst->tearing_down && inst->pollers == NULL && inst->cleanup != NULL) {
    napi_async_cleanup_hook_handle h = inst->cleanup;
    inst->cleanup = NULL;
    napi_remove_async_cleanup_hook(h);
  }
}

static void set_pinned(vn_poller* p, bool pin) {
  if (p->pinned == pin || p->self == NULL) return;
  uint32_t count;
  if (pin) napi_reference_ref(p->inst->env, p->self, &count);
  else napi_reference_unref(p->inst->env, p->self, &count);
  p->pinned = pin;
}

static void on_close(uv_handle_t* h) {
  vn_poller* p = h->data;
  vn_instance* inst = p->inst;
  napi_env env = inst->env;
  list_remove(p);
  napi_handle_scope scope;
  bool scoped = napi_open_handle_scope(env, &scope) == napi_ok;
  if (p->callback != NULL) napi_delete_reference(env, p->callback);
  if (p->ctx != NULL) napi_async_destroy(env, p->ctx);
  if (scoped) napi_close_handle_scope(env, scope);
  p->callback = NULL;
  p->ctx = NULL;
  p->closed = true;
  if (p->finalized) free(p);
  finish_teardown_if_done(inst);
}

static void begin_close(vn_poller* p) {
  if (p->closing) return;
  p->closing = true;
  set_pinned(p, false);
  uv_close((uv_handle_t*)&p->handle, on_close); /* also stops polling, so the fd may be closed right after */
}

static void on_finalize(napi_env env, void* data, void* hint) {
  (void)hint;
  vn_poller* p = data;
  p->finalized = true;
  if (p->self != NULL) napi_delete_reference(env, p->self);
  p->self = NULL;
  if (p->closed) free(p);
  else begin_close(p); /* on_close frees it */
}

static void on_poll(uv_poll_t* h, int status, int events) {
  vn_poller* p = h->data;
  if (p->closing) return;
  napi_env env = p->inst->env;
  int err = status < 0 ? -status : 0;
  if (status == UV_EBADF) {
    /* libuv reports any POLLERR as EBADF; on a socket the pending error (ECONNRESET when the peer
     * closed with our data unread) is the truth, and reading it also clears it. */
    uv_os_fd_t fd;
    int so_err = 0;
    socklen_t len = sizeof so_err;
    if (uv_fileno((uv_handle_t*)h, &fd) == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_err, &len) == 0 &&
        so_err != 0)
      err = so_err;
  }
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value cb, recv = NULL, argv[3];
  if (napi_get_reference_value(env, p->callback, &cb) == napi_ok && cb != NULL &&
      (p->self == NULL || napi_get_reference_value(env, p->self, &recv) == napi_ok) &&
      (recv != NULL || napi_get_undefined(env, &recv) == napi_ok) && napi_create_int32(env, err, &argv[0]) == napi_ok &&
      napi_get_boolean(env, (events & (UV_READABLE | UV_DISCONNECT)) != 0, &argv[1]) == napi_ok &&
      napi_get_boolean(env, (events & UV_WRITABLE) != 0, &argv[2]) == napi_ok) {
    /* make_callback, not call_function: it drains nextTicks and microtasks afterwards, as for any
     * Node callback, and an exception thrown by the callback becomes an uncaughtException. */
    if (napi_make_callback(env, p->ctx, recv, cb, 3, argv, NULL) != napi_ok) {
      bool pending = false;
      napi_value exc;
      if (napi_is_exception_pending(env, &pending) == napi_ok && pending &&
          napi_get_and_clear_last_exception(env, &exc) == napi_ok)
        napi_fatal_exception(env, exc);
    }
  }
  napi_close_handle_scope(env, scope);
}

static vn_poller* unwrap_poller(napi_env env, napi_callback_info info, size_t want, napi_value* argv) {
  napi_value self;
  void* data = NULL;
  if (!vn_args(env, info, want, argv, &self)) return NULL;
  if (napi_unwrap(env, self, &data) != napi_ok || data == NULL) {
    vn_throw_type(env, "not a Poller");
    return NULL;
  }
  return data;
}

static napi_value throw_closed(napi_env env) {
  napi_throw_error(env, "ERR_POLLER_CLOSED", "Poller is closed");
  return NULL;
}

/* new Poller(fd, callback(err, readable, writable)) */
static napi_value poller_new(napi_env env, napi_callback_info info) {
  napi_value argv[2], self, target;
  int fd;
  napi_valuetype t;
  if (!vn_args(env, info, 2, argv, &self)) return NULL;
  VN_CALL(env, napi_get_new_target(env, info, &target));
  if (target == NULL) return vn_throw_type(env, "Poller must be called with new");
  if (!vn_get_fd(env, argv[0], "fd", &fd)) return NULL;
  if (napi_typeof(env, argv[1], &t) != napi_ok || t != napi_function)
    return vn_throw_type(env, "callback must be a function");
  vn_instance* inst = NULL;
  VN_CALL(env, napi_get_instance_data(env, (void**)&inst));
  if (inst == NULL || inst->tearing_down) return throw_closed(env);

  vn_poller* p = calloc(1, sizeof *p);
  if (p == NULL) return vn_throw_errno(env, ENOMEM, "Poller", NULL);
  p->inst = inst;
  int rc = uv_poll_init(inst->loop, &p->handle, fd);
  if (rc != 0) {
    free(p);
    return vn_throw_errno(env, -rc, "uv_poll_init", NULL);
  }
  p->handle.data = p;
  p->next = inst->pollers;
  if (p->next != NULL) p->next->prev = p;
  inst->pollers = p;

  napi_value name;
  napi_status st = napi_create_reference(env, argv[1], 1, &p->callback);
  if (st == napi_ok) st = napi_create_string_utf8(env, "VfioPoller", NAPI_AUTO_LENGTH, &name);
  if (st == napi_ok) st = napi_async_init(env, NULL, name, &p->ctx);
  if (st == napi_ok) st = napi_wrap(env, self, p, on_finalize, NULL, NULL);
  if (st != napi_ok) {
    p->finalized = true; /* no wrapper owns it: on_close frees it */
    begin_close(p);
    return vn_throw_status(env, st, "Poller setup");
  }
  /* After napi_wrap, the wrapper owns p: a failure here leaves it to GC. */
  VN_CALL(env, napi_create_reference(env, self, 0, &p->self));
  return self;
}

static napi_value poller_start(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  bool readable, writable;
  vn_poller* p = unwrap_poller(env, info, 2, argv);
  if (p == NULL || !vn_get_bool(env, argv[0], "readable", &readable) ||
      !vn_get_bool(env, argv[1], "writable", &writable))
    return NULL;
  if (p->closing) return throw_closed(env);
  if (!readable && !writable) {
    uv_poll_stop(&p->handle);
    set_pinned(p, false);
    return NULL;
  }
  /* UV_DISCONNECT (EPOLLRDHUP) reports a peer's hangup as readable, so the reader sees EOF promptly. */
  int events = (readable ? UV_READABLE | UV_DISCONNECT : 0) | (writable ? UV_WRITABLE : 0);
  int rc = uv_poll_start(&p->handle, events, on_poll);
  if (rc != 0) return vn_throw_errno(env, -rc, "uv_poll_start", NULL);
  set_pinned(p, true);
  return NULL;
}

static napi_value poller_stop(napi_env env, napi_callback_info info) {
  vn_poller* p = unwrap_poller(env, info, 0, NULL);
  if (p == NULL) return NULL;
  if (!p->closing) {
    uv_poll_stop(&p->handle);
    set_pinned(p, false);
  }
  return NULL;
}

/* close(): idempotent, and safe inside the callback (the handle is only freed by on_close, later). */
static napi_value poller_close(napi_env env, napi_callback_info info) {
  vn_poller* p = unwrap_poller(env, info, 0, NULL);
  if (p != NULL) begin_close(p);
  return NULL;
}

/* ref()/unref(): like a Node handle's, whether a started Poller keeps the process alive. */
static napi_value poller_ref(napi_env env, napi_callback_info info) {
  vn_poller* p = unwrap_poller(env, info, 0, NULL);
  if (p != NULL && !p->closing) uv_ref((uv_handle_t*)&p->handle);
  return NULL;
}

static napi_value poller_unref(napi_env env, napi_callback_info info) {
  vn_poller* p = unwrap_poller(env, info, 0, NULL);
  if (p != NULL && !p->closing) uv_unref((uv_handle_t*)&p->handle);
  return NULL;
}

bool vn_poller_define(napi_env env, napi_value exports) {
  napi_property_descriptor methods[] = {
      {"start", NULL, poller_start, NULL, NULL, NULL, napi_default_method, NULL},
      {"stop", NULL, poller_stop, NULL, NULL, NULL, napi_default_method, NULL},
      {"close", NULL, poller_close, NULL, NULL, NULL, napi_default_method, NULL},
      {"ref", NULL, poller_ref, NULL, NULL, NULL, napi_default_method, NULL},
      {"unref", NULL, poller_unref, NULL, NULL, NULL, napi_default_method, NULL},
  };
  napi_value cls;
  if (napi_define_class(env, "Poller", NAPI_AUTO_LENGTH, poller_new, NULL, sizeof methods / sizeof methods[0],
                        methods, &cls) != napi_ok ||
      napi_set_named_property(env, exports, "Poller", cls) != napi_ok) {
    vn_throw_status(env, napi_generic_failure, "define Poller");
    return false;
  }
  return true;
}

/* Env teardown: close every handle; the hook is released by the last on_close (or now, if none). */
void vn_poller_teardown(vn_instance* inst) {
  inst->tearing_down = true;
  for (vn_poller* p = inst->pollers; p != NULL; p = p->next) begin_close(p);
  finish_teardown_if_done(inst);
}
