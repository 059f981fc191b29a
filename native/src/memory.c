/* memfd, mmap into an ArrayBuffer (shared with other threads by token), munmap that detaches, and the
 * plain fd helpers (close, dup, size). */
#include <errno.h>
#include <malloc.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vfio_native.h"

/*
 * One mapping (vn_mapping) and the ArrayBuffers over it (vn_view). The creating thread's ArrayBuffer
 * comes from mmap(); other threads of the process get their own ArrayBuffer over the same pages with
 * mmapShare() here and mmapAttach() there (QEMU's threads share the address space; a second mmap of the
 * memfd per thread would fault every page in again, and unmap them all afterwards).
 *
 * The mapping is unmapped when the last holder lets go: each view holds it until munmap() or its backing
 * store is freed, whichever comes first, and so does a share until it is attached. Holders may be on
 * different threads, so that count is atomic.
 *
 * A view has two owners that can die in either order, both on its own JS thread: the ArrayBuffer's
 * backing store (its finalizer runs once V8 frees the store: after GC, after detach, or at env teardown)
 * and the napi_wrap on the ArrayBuffer object (how munmap() finds the view). The view is freed when both
 * are gone.
 */
/* "vnma": a stray token (never shared, or attached already and since freed) is refused, best effort. */
#define VN_MAPPING_MAGIC 0x766e6d61u

typedef struct vn_mapping {
  uint32_t magic;
  void* addr;
  size_t len;
  int holders; /* atomic */
} vn_mapping;

typedef struct vn_view {
  vn_mapping* m;
  bool released; /* this view let go of the mapping */
  int owners;    /* store + wrap */
} vn_view;

static void mapping_put(vn_mapping* m) {
  if (__atomic_sub_fetch(&m->holders, 1, __ATOMIC_ACQ_REL) == 0) {
    munmap(m->addr, m->len);
    m->magic = 0;
    free(m);
  }
}

static void view_release_mapping(vn_view* v) {
  if (v->released) return;
  v->released = true;
  mapping_put(v->m);
}

static void view_drop_owner(vn_view* v) {
  if (--v->owners == 0) free(v);
}

static void view_store_freed(napi_env env, void* data, void* hint) {
  (void)env;
  (void)data;
  vn_view* v = hint;
  view_release_mapping(v);
  view_drop_owner(v);
}

static void view_wrap_freed(napi_env env, void* data, void* hint) {
  (void)env;
  (void)hint;
  view_drop_owner(data);
}

/* An ArrayBuffer over m's pages that holds one of m's holders (already counted by the caller). */
static napi_value view_new(napi_env env, vn_mapping* m) {
  vn_view* v = calloc(1, sizeof *v);
  if (v == NULL) {
    mapping_put(m);
    return vn_throw_errno(env, ENOMEM, "mmap", NULL);
  }
  v->m = m;
  napi_value ab;
  napi_status st = napi_create_external_arraybuffer(env, m->addr, m->len, view_store_freed, v, &ab);
  if (st != napi_ok) {
    /* Too large for this Node, say. The finalizer was not registered: let go here. */
    mapping_put(m);
    free(v);
    return vn_throw_status(env, st, "napi_create_external_arraybuffer");
  }
  v->owners = 1; /* the backing store */
  st = napi_wrap(env, ab, v, view_wrap_freed, NULL, NULL);
  if (st != napi_ok) {
    /* Leave the view to the backing store finalizer; JS never sees this ArrayBuffer. */
    napi_detach_arraybuffer(env, ab);
    return vn_throw_status(env, st, "napi_wrap");
  }
  v->owners = 2;
  return ab;
}

/* The view behind an ArrayBuffer from mmap() or mmapAttach(), or NULL (a TypeError is pending). */
static vn_view* view_of(napi_env env, napi_value ab, const char* fn, bool* detached) {
  bool is_ab = false;
  *detached = false;
  if (napi_is_arraybuffer(env, ab, &is_ab) != napi_ok || !is_ab) {
    vn_throw_type(env, "%s expects an ArrayBuffer returned by mmap", fn);
    return NULL;
  }
  if (napi_is_detached_arraybuffer(env, ab, detached) != napi_ok) return NULL;
  if (*detached) return NULL;
  void* ptr = NULL;
  if (napi_unwrap(env, ab, &ptr) != napi_ok || ptr == NULL) {
    vn_throw_type(env, "%s expects an ArrayBuffer returned by mmap", fn);
    return NULL;
  }
  return ptr;
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

/* Transparent huge pages are 2 MiB on x86-64 (and the default elsewhere Linux has them). */
#define VN_HUGE_ALIGN ((size_t)2 << 20)

/*
 * mmap() at an address on a 2 MiB boundary: the kernel maps a huge page with one page-table entry only
 * where the address (and, for a file, the file offset) is a multiple of 2 MiB, and mmap() alone places a
 * mapping on any page. Room is reserved, the mapping made over its aligned part, the rest given back.
 * MAP_FAILED with errno set, as mmap().
 */
static void* map_huge_aligned(size_t len, int prot, int flags, int fd, off_t offset) {
  if (len > SIZE_MAX - VN_HUGE_ALIGN) {
    errno = ENOMEM;
    return MAP_FAILED;
  }
  size_t span = len + VN_HUGE_ALIGN;
  char* raw = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) return MAP_FAILED;
  char* addr = (char*)(((uintptr_t)raw + VN_HUGE_ALIGN - 1) & ~(uintptr_t)(VN_HUGE_ALIGN - 1));
  if (mmap(addr, len, prot, flags | MAP_FIXED, fd, offset) == MAP_FAILED) {
    int err = errno;
    munmap(raw, span);
    errno = err;
    return MAP_FAILED;
  }
  size_t tail = (size_t)((raw + span) - (addr + len));
  if (addr > raw) munmap(raw, (size_t)(addr - raw));
  if (tail > 0) munmap(addr + len, tail);
  return addr;
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
  /* 2 MiB-aligned where the file's huge pages could be mapped whole (guest RAM after MADV_COLLAPSE). */
  bool huge = length >= VN_HUGE_ALIGN && offset % VN_HUGE_ALIGN == 0;
  void* addr = huge ? map_huge_aligned((size_t)length, prot, MAP_SHARED, fd, (off_t)offset)
                    : mmap(NULL, (size_t)length, prot, MAP_SHARED, fd, (off_t)offset);
  if (addr == MAP_FAILED) {
    int err = errno;
    free(m);
    return vn_throw_errno(env, err, "mmap", NULL);
  }
  m->magic = VN_MAPPING_MAGIC;
  m->addr = addr;
  m->len = (size_t)length;
  m->holders = 1; /* the view made next */
  return view_new(env, m);
}

/*
 * mmapAnon(length): private anonymous memory as an ArrayBuffer, like mmap() (held the same way, freed by
 * munmap() or collection), aligned on 2 MiB and advised MADV_HUGEPAGE. For buffers a migration fills
 * once per use and reuses (staging rings, gather buffers): with transparent huge pages a 16 MiB buffer
 * is 8 faults on first touch instead of 4096 (measured here: under 1 ms against about 45 ms), and its
 * copies miss the TLB less. The advice is only advice: where THP is off (or "never"), the pages are
 * ordinary ones and nothing fails.
 */
napi_value vn_mmap_anon(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!vn_args(env, info, 1, argv, NULL)) return NULL;
  uint64_t length;
  if (!vn_get_u64(env, argv[0], "length", SIZE_MAX - VN_HUGE_ALIGN, &length)) return NULL;
  if (length == 0) return vn_throw_errno(env, EINVAL, "mmapAnon", "(length 0)");

  vn_mapping* m = calloc(1, sizeof *m);
  if (m == NULL) return vn_throw_errno(env, ENOMEM, "mmapAnon", NULL);
  size_t len = (size_t)length;
  char* addr = map_huge_aligned(len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (addr == MAP_FAILED) {
    int err = errno;
    free(m);
    return vn_throw_errno(env, err, "mmap", "(anonymous)");
  }
  (void)madvise(addr, len, MADV_HUGEPAGE);
  m->magic = VN_MAPPING_MAGIC;
  m->addr = addr;
  m->len = len;
  m->holders = 1; /* the view made next */
  return view_new(env, m);
}

/*
 * mmapShare(ab): a token (bigint) for mmapAttach() on another thread of this process, holding the
 * mapping until then. Each token is to be attached exactly once: one never attached keeps the pages
 * mapped until the process ends.
 */
napi_value vn_mmap_share(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!vn_args(env, info, 1, argv, NULL)) return NULL;
  bool detached;
  vn_view* v = view_of(env, argv[0], "mmapShare", &detached);
  if (v == NULL) return detached ? vn_throw_errno(env, EBADF, "mmapShare", "(unmapped)") : NULL;
  if (v->released) return vn_throw_errno(env, EBADF, "mmapShare", "(unmapped)");
  __atomic_add_fetch(&v->m->holders, 1, __ATOMIC_ACQ_REL);
  napi_value out;
  VN_CALL(env, napi_create_bigint_uint64(env, (uint64_t)(uintptr_t)v->m, &out));
  return out;
}

/* The mapping a mmapShare token names, or NULL (a TypeError is pending). */
static vn_mapping* mapping_of_token(napi_env env, napi_value v, const char* fn) {
  uint64_t token;
  bool lossless;
  if (napi_get_value_bigint_uint64(env, v, &token, &lossless) != napi_ok || !lossless || token == 0) {
    vn_throw_type(env, "%s expects a token from mmapShare", fn);
    return NULL;
  }
  vn_mapping* m = (vn_mapping*)(uintptr_t)token;
  if (m->magic != VN_MAPPING_MAGIC) {
    vn_throw_type(env, "%s: not a live mmapShare token", fn);
    return NULL;
  }
  return m;
}

/* mmapAttach(token): an ArrayBuffer over the shared pages, holding them until munmap() or GC. */
napi_value vn_mmap_attach(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!vn_args(env, info, 1, argv, NULL)) return NULL;
  vn_mapping* m = mapping_of_token(env, argv[0], "mmapAttach");
  return m == NULL ? NULL : view_new(env, m); /* adopts the share's hold */
}

bool vn_mapping_adopt(napi_env env, napi_value token, const char* fn, void** hold, uint8_t** addr, size_t* len) {
  vn_mapping* m = mapping_of_token(env, token, fn);
  if (m == NULL) return false;
  *hold = m;
  *addr = m->addr;
  *len = m->len;
  return true;
}

void vn_mapping_release(void* hold) {
  mapping_put(hold);
}

/*
 * munmap(ab): detach first, so no view can reach the pages through ab, and let go of the mapping at once
 * (not at GC): unmapped now unless another thread's view still holds it. An already detached ArrayBuffer
 * (a second munmap, or one transferred elsewhere) is a no-op: its backing store finalizer lets go
 * whenever its current owner does.
 */
napi_value vn_munmap(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!vn_args(env, info, 1, argv, NULL)) return NULL;
  bool detached;
  vn_view* v = view_of(env, argv[0], "munmap", &detached);
  if (v == NULL) return NULL;
  VN_CALL(env, napi_detach_arraybuffer(env, argv[0]));
  VN_CALL(env, napi_remove_wrap(env, argv[0], NULL));
  view_release_mapping(v);
  view_drop_owner(v); /* the wrap's share; the backing store finalizer drops the other */
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
