/* Errors and argument conversion shared by every exported function. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "vfio_native.h"

/* 2^53 - 1: the largest integer a JS number holds exactly. */
#define VN_MAX_SAFE_INTEGER 9007199254740991LL

bool vn_errno_error(napi_env env, int err, const char* syscall, const char* detail, napi_value* out) {
  /* strerrorname_np/strerrordesc_np (glibc 2.32+) are thread-safe, unlike strerror: workers call this. */
  char codebuf[16];
  const char* code = strerrorname_np(err);
  if (code == NULL) {
    snprintf(codebuf, sizeof codebuf, "E%d", err);
    code = codebuf;
  }
  const char* desc = strerrordesc_np(err);
  char msg[512];
  if (detail != NULL)
    snprintf(msg, sizeof msg, "%s %s: %s (%s)", syscall, detail, desc ? desc : "unknown error", code);
  else
    snprintf(msg, sizeof msg, "%s: %s (%s)", syscall, desc ? desc : "unknown error", code);

  napi_value jcode, jmsg, jerrno, jsyscall;
  if (napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &jcode) != napi_ok ||
      napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &jmsg) != napi_ok ||
      napi_create_error(env, jcode, jmsg, out) != napi_ok || napi_create_int32(env, err, &jerrno) != napi_ok ||
      napi_set_named_property(env, *out, "errno", jerrno) != napi_ok ||
      napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &jsyscall) != napi_ok ||
      napi_set_named_property(env, *out, "syscall", jsyscall) != napi_ok) {
    napi_throw_error(env, code, msg); /* best effort when building the rich error failed */
    return false;
  }
  return true;
}

napi_value vn_throw_errno(napi_env env, int err, const char* syscall, const char* detail) {
  napi_value e;
  if (vn_errno_error(env, err, syscall, detail, &e)) napi_throw(env, e);
  return NULL;
}

napi_value vn_throw_type(napi_env env, const char* fmt, ...) {
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
  return NULL;
}

napi_value vn_throw_range(napi_env env, const char* fmt, ...) {
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg);
  return NULL;
}

napi_value vn_throw_status(napi_env env, napi_status status, const char* what) {
  bool pending = false;
  /* A JS exception (from a getter, say) is already the better error: keep it. */
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) return NULL;
  const napi_extended_error_info* info = NULL;
  napi_get_last_error_info(env, &info);
  char msg[256];
  snprintf(msg, sizeof msg, "vfio_native: %s failed: %s (napi status %d)", what,
           info && info->error_message ? info->error_message : "unknown", (int)status);
  napi_throw_error(env, "ERR_NAPI", msg);
  return NULL;
}

bool vn_args(napi_env env, napi_callback_info info, size_t want, napi_value* argv, napi_value* self) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, self, NULL) != napi_ok) {
    vn_throw_status(env, napi_generic_failure, "napi_get_cb_info");
    return false;
  }
  if (argc < want) {
    vn_throw_type(env, "expected %zu arguments, got %zu", want, argc);
    return false;
  }
  return true;
}

bool vn_get_int(napi_env env, napi_value v, const char* name, int64_t min, int64_t max, int64_t* out) {
  napi_valuetype t;
  double d;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number) {
    vn_throw_type(env, "%s must be a number", name);
    return false;
  }
  if (napi_get_value_double(env, v, &d) != napi_ok) {
    vn_throw_type(env, "%s must be a number", name);
    return false;
  }
  /* Compare as doubles first (NaN fails both), then require an exact integer. */
  if (!(d >= (double)min && d <= (double)max) || (double)(int64_t)d != d) {
    vn_throw_range(env, "%s must be an integer in [%lld, %lld], got %g", name, (long long)min, (long long)max, d);
    return false;
  }
  *out = (int64_t)d;
  return true;
}

bool vn_get_fd(napi_env env, napi_value v, const char* name, int* out) {
  int64_t fd;
  if (!vn_get_int(env, v, name, 0, INT32_MAX, &fd)) return false;
  *out = (int)fd;
  return true;
}

bool vn_get_u64(napi_env env, napi_value v, const char* name, uint64_t max, uint64_t* out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok) {
    vn_throw_type(env, "%s must be a number or bigint", name);
    return false;
  }
  if (t == napi_bigint) {
    uint64_t u;
    bool lossless = false;
    if (napi_get_value_bigint_uint64(env, v, &u, &lossless) != napi_ok || !lossless || u > max) {
      vn_throw_range(env, "%s must be a bigint in [0, %llu]", name, (unsigned long long)max);
      return false;
    }
    *out = u;
    return true;
  }
  int64_t i;
  uint64_t cap = max < (uint64_t)VN_MAX_SAFE_INTEGER ? max : (uint64_t)VN_MAX_SAFE_INTEGER;
  if (!vn_get_int(env, v, name, 0, (int64_t)cap, &i)) return false;
  *out = (uint64_t)i;
  return true;
}

bool vn_get_bool(napi_env env, napi_value v, const char* name, bool* out) {
  if (napi_get_value_bool(env, v, out) != napi_ok) {
    vn_throw_type(env, "%s must be a boolean", name);
    return false;
  }
  return true;
}

bool vn_get_typed(napi_env env, napi_value v, napi_typedarray_type want, const char* kind, const char* name,
                  void** data, size_t* len) {
  bool is_ta = false;
  napi_typedarray_type type;
  if (napi_is_typedarray(env, v, &is_ta) != napi_ok || !is_ta ||
      napi_get_typedarray_info(env, v, &type, len, data, NULL, NULL) != napi_ok || type != want) {
    vn_throw_type(env, "%s must be a%s %s", name, kind[0] == 'I' ? "n" : "", kind);
    return false;
  }
  return true;
}

bool vn_get_bytes(napi_env env, napi_value v, const char* name, uint8_t** data, size_t* len) {
  return vn_get_typed(env, v, napi_uint8_array, "Uint8Array", name, (void**)data, len);
}

bool vn_get_sockaddr(napi_env env, napi_value v, struct sockaddr_un* addr, socklen_t* len) {
  size_t n = 0;
  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  /* Measure first: napi truncates silently (and at a character boundary), never into a wrong path. */
  if (napi_get_value_string_utf8(env, v, NULL, 0, &n) != napi_ok) {
    vn_throw_type(env, "path must be a string");
    return false;
  }
  if (n >= sizeof addr->sun_path) {
    vn_throw_errno(env, ENAMETOOLONG, "sockaddr", "(path longer than 107 bytes)");
    return false;
  }
  char path[sizeof addr->sun_path];
  size_t got = 0;
  if (napi_get_value_string_utf8(env, v, path, sizeof path, &got) != napi_ok || got != n) {
    vn_throw_type(env, "path must be a string");
    return false;
  }
  if (n == 0 || strlen(path) != n) {
    vn_throw_errno(env, EINVAL, "sockaddr", "(empty path or embedded NUL)");
    return false;
  }
  memcpy(addr->sun_path, path, n + 1);
  *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
  return true;
}

napi_value vn_int(napi_env env, int64_t v) {
  napi_value r;
  VN_CALL(env, napi_create_int64(env, v, &r));
  return r;
}

napi_value vn_setsockopt_int(napi_env env, int fd, int level, int name, int value) {
  int got = 0;
  socklen_t len = sizeof got;
  if (setsockopt(fd, level, name, &value, sizeof value) != 0) return vn_throw_errno(env, errno, "setsockopt", NULL);
  if (getsockopt(fd, level, name, &got, &len) != 0) return vn_throw_errno(env, errno, "getsockopt", NULL);
  return vn_int(env, got);
}

napi_value vn_null(napi_env env) {
  napi_value r;
  VN_CALL(env, napi_get_null(env, &r));
  return r;
}
