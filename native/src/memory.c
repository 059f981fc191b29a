/* memfd, mmap into an ArrayBuffer, munmap that detaches, and the plain fd helpers (close, dup, size). */
#include <errno.h>
#include <malloc.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vfio_native.h"

/*
 * One mapping, shared by two owners that can die in either order: the ArrayBuffer's backing store
 * (its finalizer runs once V8 frees the store: after GC, after detach, or at env teardown) and the
 * napi_wrap on the ArrayBuffer object (how munmap() finds the mapping). Only the backing-store
 * finalizer or munmap() unmaps; the struct is freed when both owners are gone. All on the JS thread.
 */
typedef struct vn_mapping {
  void* addr; /* NULL once unmapped */
  size_t len;
  int owners;
} vn_mapping;

static void mapping_release(vn_mapping* m) {
  if (--m->owners == 0) free(m);
}

static void mapping_store_freed(napi_env env, void* data, void* hint) {
  (void)env;
  (void)data;
  vn_mapping* m = hint;
  if (m->addr != NULL) {
    munmap(m->addr, m->len);
    m->addr = NULL;
  }
  mapping_release(m);
}

static void mapping_wrap_freed(napi_env env, void* data, void* hint) {
  (void)env;
  (void)hint;
  mapping_release(data);
}

/* memfdCreate(name, size): MFD_CLOEXEC memfd truncated to size (sparse: no memory until touched). */
napi_value vn_memfd_create(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!vn_args(env, info, 2, argv, NULL)) return NULL;
  char name[250]; /* the kernel caps memfd names at 249 bytes */
  size_t n = 0;
  uint64_t size;
  if (napi_get_value_string_utf8(env, argv[0], name, sizeof name, &n) != napi_ok)
    return vn_throw_type(env, "name must be a string");
  if (!vn_get_u64(env, argv[1], "size", INT64_MAX, &size)) return NULL;
  int fd = memfd_create(name, MFD_CLOEXEC);
  if (fd < 0) return vn_throw_errno(env, errno, "memfd_create", name);
  if (ftruncate(fd, (off_t)size) != 0) {
    int err = errno;
    close(fd);
    return vn_throw_errno(env, err, "ftruncate", NULL);
  }
  return vn_int(env, fd);
}

/*
 * mmap(fd, offset, length, writable): a MAP_SHARED mapping as an external ArrayBuffer. Lengths are
 * converted through uint64 (number up to 2^53-1 or bigint), so mappings above 2 GiB are fine up to
 * Node's own ArrayBuffer limit (buffer.constants.MAX_LENGTH, 4 GiB on Node 20).
 */
napi_value vn_mmap(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!vn_args(env, info, 4, argv, NULL)) return NULL;
  int fd;
  uint64_t offset, length;
  bool writable;
  if (!vn_get_fd(env, argv[0], "fd", &fd) || !vn_get_u64(env, argv[1], "offset", INT64_MAX, &offset) ||
      !vn_get_u64(env, argv[2], "length", SIZE_MAX, &length) || !vn_get_bool(env, argv[3], "writable", &writable))
    return NULL;
  if (length == 0) return vn_throw_errno(env, EINVAL, "mmap", "(length 0)");

  vn_mapping* m = calloc(1, sizeof *m);
  if (m == NULL) return vn_throw_errno(env, ENOMEM, "mmap", NULL);
  int prot = PROT_READ | (writable ? PROT_WRITE : 0);
  void* addr = mmap(NULL, (size_t)length, prot, MAP_SHARED, fd, (off_t)offset);
  if (addr == MAP_FAILED) {
    int err = errno;
    free(m);
    return vn_throw_errno(env, err, "mmap", NULL);
  }
  m->addr = addr;
  m->len = (size_t)length;

  napi_value ab;
  napi_status st = napi_create_external_arraybuffer(env, addr, (size_t)length, mapping_store_freed, m, &ab);
  if (st != napi_ok) {
    /* Too large for this Node, say. The finalizer was not registered: clean up here. */
    munmap(addr, (size_t)length);
    free(m);
    return vn_throw_status(env, st, "napi_create_external_arraybuffer");
  }
  m->owners = 1; /* the backing store */
  st = napi_wrap(env, ab, m, mapping_wrap_freed, NULL, NULL);
  if (st != napi_ok) {
    /* Leave the mapping to the backing store finalizer; JS never sees this ArrayBuffer. */
    napi_detach_arraybuffer(env, ab);
    return vn_throw_status(env, st, "napi_wrap");
  }
  m->owners = 2;
  return ab;
}

/*
 * munmap(ab): detach first, so no view can reach the pages, then unmap at once (not at GC). An already
 * detached ArrayBuffer (a second munmap, or one transferred elsewhere) is a no-op: its backing store
 * finalizer unmaps whenever its current owner lets go.
 */
napi_value vn_munmap(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!vn_args(env, info, 1, argv, NULL)) return NULL;
  bool is_ab = false, detached = false;
  VN_CALL(env, napi_is_arraybuffer(env, argv[0], &is_ab));
  if (!is_ab) return vn_throw_type(env, "munmap expects an ArrayBuffer returned by mmap");
  VN_CALL(env, napi_is_detached_arraybuffer(env, argv[0], &detached));
  if (detached) return NULL;
  void* ptr = NULL;
  if (napi_unwrap(env, argv[0], &ptr) != napi_ok || ptr == NULL)
    return vn_throw_type(env, "munmap expects an ArrayBuffer returned by mmap");
  vn_mapping* m = ptr;
  VN_CALL(env, napi_detach_arraybuffer(env, argv[0]));
  VN_CALL(env, napi_remove_wrap(env, argv[0], NULL));
  if (m->addr != NULL) {
    int rc = munmap(m->addr, m->len);
    int err = errno;
    m->addr = NULL;
    if (rc != 0) {
      mapping_release(m);
      return vn_throw_errno(env, err, "munmap", NULL);
    }
  }
  mapping_release(m); /* the wrap's share; the backing store finalizer drops the other */
  return NULL;
}

napi_value vn_close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!vn_args(env, info, 1, argv, NULL) || !vn_get_fd(env, argv[0], "fd", &fd)) return NULL;
  /* Linux releases the fd even when close reports EINTR; retrying could close someone else's fd. */
  if (close(fd) != 0 && errno != EINTR) return vn_throw_errno(env, errno, "close", NULL);
  return NULL;
}

/* dup(fd): a close-on-exec duplicate, for callers that must own an fd beyond another's close. */
napi_value vn_dup(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!vn_args(env, info, 1, argv, NULL) || !vn_get_fd(env, argv[0], "fd", &fd)) return NULL;
  int r = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (r < 0) return vn_throw_errno(env, errno, "fcntl(F_DUPFD_CLOEXEC)", NULL);
  return vn_int(env, r);
}

napi_value vn_fd_size(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!vn_args(env, info, 1, argv, NULL) || !vn_get_fd(env, argv[0], "fd", &fd)) return NULL;
  struct stat st;
  if (fstat(fd, &st) != 0) return vn_throw_errno(env, errno, "fstat", NULL);
  return vn_int(env, (int64_t)st.st_size);
}

/*
 * mallocTrimThreshold(bytes): mallopt(M_TRIM_THRESHOLD). Node reads each socket chunk into a freshly
 * malloc'd 64 KiB buffer; when the GC frees a burst of them, glibc hands the top of the heap back to the
 * kernel (default threshold 128 KiB) and the next reads fault it in again, zeroed page by page. A
 * migration destination spent a quarter of its CPU there. Setting it also fixes the mmap threshold
 * (glibc stops adapting it), which is what a process moving gigabytes through fixed-size buffers wants.
 */
napi_value vn_malloc_trim_threshold(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int64_t bytes;
  if (!vn_args(env, info, 1, argv, NULL) || !vn_get_int(env, argv[0], "bytes", 0, INT32_MAX, &bytes)) return NULL;
  if (mallopt(M_TRIM_THRESHOLD, (int)bytes) != 1) return vn_throw_errno(env, EINVAL, "mallopt(M_TRIM_THRESHOLD)", NULL);
  return vn_null(env);
}
