/*
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78; init and final XOR 0xFFFFFFFF), the checksum of
 * every section of the migration stream, so it runs over every byte of guest RAM in flight.
 *
 * Three implementations, chosen once by vn_crc32c_init():
 *  - x86-64 with AVX-512 (F, VL) and VPCLMULQDQ: folding by carry-less multiplication (crc_fold below),
 *    for inputs of 1 KiB and more; shorter ones and the last bytes through the CRC32 instruction.
 *  - x86-64 with SSE4.2: the CRC32 instruction, 8 bytes at a time. Its latency is 3 cycles and its
 *    throughput 1 per cycle, so long inputs run as three independent streams over adjacent blocks whose
 *    CRCs are then combined (shifting a CRC over n zero bytes is a linear map, applied with tables).
 *  - anywhere else: slicing-by-8 tables (byte at a time on a big-endian host).
 * VFIO_NATIVE_CRC32C=table or =sse4.2 in the environment (read once, at the first init) forces that one,
 * so tests can check every implementation on a machine that has the fastest.
 *
 * The chaining convention matches src/stream/crc32c.ts: crc32c(b, crc32c(a)) == crc32c(a ++ b).
 */
#include "crc32c.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "vfio_native.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define VN_CRC_X86 1
#else
#define VN_CRC_X86 0
#endif

#define POLY 0x82f63b78u

static uint32_t table[8][256];
static pthread_once_t once = PTHREAD_ONCE_INIT;
static uint32_t (*impl)(uint32_t crc, const uint8_t* p, size_t n);
static uint32_t (*impl_copy)(uint32_t crc, const uint8_t* p, size_t n, uint8_t* q);
static const char* impl_name = "table";

/* Raw CRC (no pre/post inversion) over n bytes, table-driven. */
static uint32_t crc_sw(uint32_t crc, const uint8_t* p, size_t n) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  while (n > 0 && ((uintptr_t)p & 7) != 0) {
    crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    n--;
  }
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    w ^= crc;
    crc = table[7][w & 0xff] ^ table[6][(w >> 8) & 0xff] ^ table[5][(w >> 16) & 0xff] ^
          table[4][(w >> 24) & 0xff] ^ table[3][(w >> 32) & 0xff] ^ table[2][(w >> 40) & 0xff] ^
          table[1][(w >> 48) & 0xff] ^ table[0][w >> 56];
    p += 8;
    n -= 8;
  }
#endif
  while (n > 0) {
    crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    n--;
  }
  return crc;
}

/* Without the instruction, the table loop's cost dwarfs a second pass: copy, then checksum the copy. */
static uint32_t crc_sw_copy(uint32_t crc, const uint8_t* p, size_t n, uint8_t* q) {
  memcpy(q, p, n);
  return crc_sw(crc, q, n);
}

#if VN_CRC_X86
/* Block sizes of the three-stream loops; the combine tables shift a CRC over exactly that many zeros. */
#define LONG_BLOCK 8192
#define SHORT_BLOCK 256
static uint32_t shift_long[4][256];
static uint32_t shift_short[4][256];

/* GF(2) 32x32 matrix (as 32 column vectors) times vector. */
static uint32_t gf2_times(const uint32_t* mat, uint32_t vec) {
  uint32_t sum = 0;
  while (vec) {
    if (vec & 1) sum ^= *mat;
    vec >>= 1;
    mat++;
  }
  return sum;
}

static void gf2_square(uint32_t* square, const uint32_t* mat) {
  for (int n = 0; n < 32; n++) square[n] = gf2_times(mat, mat[n]);
}

/* The operator that appends len zero bytes to a raw CRC (len a power of two), as 32 columns in op:
 * start from one zero bit and square (double) it until it covers 8 * len bits. */
static void zeros_op(uint32_t op[32], size_t len) {
  uint32_t a[32], b[32];
  a[0] = POLY; /* bit 0 shifted out feeds the polynomial back in */
  for (int n = 1; n < 32; n++) a[n] = 1u << (n - 1);
  uint32_t* cur = a;
  uint32_t* next = b;
  for (size_t bits = len * 8; bits > 1; bits >>= 1) {
    gf2_square(next, cur);
    uint32_t* t = cur;
    cur = next;
    next = t;
  }
  memcpy(op, cur, sizeof a);
}

/* Tables applying op a byte at a time, for the combine step. */
static void zeros_table(uint32_t zeros[4][256], size_t len) {
  uint32_t op[32];
  zeros_op(op, len);
  for (uint32_t n = 0; n < 256; n++) {
    zeros[0][n] = gf2_times(op, n);
    zeros[1][n] = gf2_times(op, n << 8);
    zeros[2][n] = gf2_times(op, n << 16);
    zeros[3][n] = gf2_times(op, n << 24);
  }
}

static uint32_t shift(const uint32_t zeros[4][256], uint32_t crc) {
  return zeros[0][crc & 0xff] ^ zeros[1][(crc >> 8) & 0xff] ^ zeros[2][(crc >> 16) & 0xff] ^ zeros[3][crc >> 24];
}

/* The hardware loop, optionally storing every word it reads at q as well (copy != 0): a copy and its
 * checksum in one pass over the bytes, where memcpy then CRC would read them twice. Inlined into the two
 * callers below, so the plain CRC carries no store and no test for it. */
__attribute__((target("sse4.2"), always_inline)) static inline uint32_t crc_hw_body(uint32_t crc0,
                                                                                   const uint8_t* p, size_t n,
                                                                                   uint8_t* q, int copy) {
  while (n > 0 && ((uintptr_t)p & 7) != 0) {
    if (copy) *q++ = *p;
    crc0 = _mm_crc32_u8(crc0, *p++);
    n--;
  }
  uint64_t c0 = crc0;
  /* Three streams over three adjacent blocks; the first carries the running CRC, the others start at 0
   * and are shifted into it over the bytes that follow them. */
  static const size_t blocks[2] = {LONG_BLOCK, SHORT_BLOCK};
  for (int b = 0; b < 2; b++) {
    const size_t len = blocks[b];
    const uint32_t(*zeros)[256] = b == 0 ? shift_long : shift_short;
    while (n >= 3 * len) {
      uint64_t c1 = 0, c2 = 0;
      const uint8_t* end = p + len;
      do {
        uint64_t w0, w1, w2;
        memcpy(&w0, p, 8);
        memcpy(&w1, p + len, 8);
        memcpy(&w2, p + 2 * len, 8);
        if (copy) {
          memcpy(q, &w0, 8);
          memcpy(q + len, &w1, 8);
          memcpy(q + 2 * len, &w2, 8);
          q += 8;
        }
        c0 = _mm_crc32_u64(c0, w0);
        c1 = _mm_crc32_u64(c1, w1);
        c2 = _mm_crc32_u64(c2, w2);
        p += 8;
      } while (p < end);
      c0 = shift(zeros, (uint32_t)c0) ^ c1;
      c0 = shift(zeros, (uint32_t)c0) ^ c2;
      p += 2 * len;
      if (copy) q += 2 * len;
      n -= 3 * len;
    }
  }
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    if (copy) {
      memcpy(q, &w, 8);
      q += 8;
    }
    c0 = _mm_crc32_u64(c0, w);
    p += 8;
    n -= 8;
  }
  crc0 = (uint32_t)c0;
  while (n > 0) {
    if (copy) *q++ = *p;
    crc0 = _mm_crc32_u8(crc0, *p++);
    n--;
  }
  return crc0;
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const uint8_t* p, size_t n) {
  return crc_hw_body(crc, p, n, NULL, 0);
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw_copy(uint32_t crc, const uint8_t* p, size_t n, uint8_t* q) {
  return crc_hw_body(crc, p, n, q, 1);
}

/*
 * Folding with carry-less multiplication (Intel, "Fast CRC Computation for Generic Polynomials Using
 * PCLMULQDQ Instruction", 2009; the method of Linux's crc-pclmul and zlib-ng's crc32_fold), on 512-bit
 * registers: 256 bytes per iteration in four registers of four 128-bit lanes each. A lane X (reflected:
 * its first 8 bytes are the high half Xh of the polynomial) is carried D bits forward as
 * Xh * x^(D+64) + Xl * x^D mod P, two carry-less products XORed into the lane D bits later. The CRC32
 * instruction is 3-way latency-bound at about 8 bytes a cycle; this is bound by the loads, so the copy
 * and the checksum run at about memory speed. What is left when the lanes have been folded into one
 * (16 bytes) and the tail under 16 bytes go through the CRC32 instruction, which also does the final
 * reduction: the raw CRC of 16 bytes from a zero register is exactly their polynomial times x^32 mod P.
 *
 * FOLD(D), in _mm_set_epi64x order (high qword first): x^(D-1) mod P, which multiplies a lane's high
 * qword (Xl), then x^(D+63) mod P, which multiplies its low qword (Xh); each bit-reversed into 64 bits
 * (the carry-less product of two reflected operands carries one extra factor of x, hence the -1).
 * Computed by reducing x^n modulo P over GF(2), and checked against the tables by
 * test/stream/crc32c.test.ts at every length around the fold's boundaries.
 */
#define FOLD_2048 0x1426a81500000000ull, 0xe9a5d8be00000000ull
#define FOLD_512 0x75bba45b00000000ull, 0x1c19243b00000000ull
#define FOLD_384 0x6051243f00000000ull, 0xa46ef4aa00000000ull
#define FOLD_256 0xa2158b3400000000ull, 0x33ccbbbc00000000ull
#define FOLD_128 0x3171d43000000000ull, 0x3743f7bd00000000ull
/* Shorter inputs go to the CRC32 instruction loop: the folding set-up and reduction cost more there. */
#define FOLD_MIN 1024

#define VN_FOLD_TARGET "sse4.2,pclmul,avx512f,avx512vl,vpclmulqdq"

/* Each 128-bit lane of x carried D bits forward (k holds FOLD(D) in every lane), XORed with y. */
__attribute__((target(VN_FOLD_TARGET), always_inline)) static inline __m512i fold512(__m512i x, __m512i k,
                                                                                     __m512i y) {
  return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x, k, 0x00), _mm512_clmulepi64_epi128(x, k, 0x11), y,
                                   0x96);
}

__attribute__((target(VN_FOLD_TARGET), always_inline)) static inline __m128i fold128(__m128i x, __m128i k,
                                                                                     __m128i y) {
  return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11)), y);
}

/* The next 256 bytes at p into v[0..3], and stored at q as well when copying. */
__attribute__((target(VN_FOLD_TARGET), always_inline)) static inline void load256(const uint8_t* p, uint8_t* q,
                                                                                  int copy, __m512i v[4]) {
  for (int i = 0; i < 4; i++) {
    v[i] = _mm512_loadu_si512(p + 64 * i);
    if (copy) _mm512_storeu_si512(q + 64 * i, v[i]);
  }
}

__attribute__((target(VN_FOLD_TARGET), always_inline)) static inline uint32_t crc_fold_body(uint32_t crc,
                                                                                        const uint8_t* p, size_t n,
                                                                                        uint8_t* q, int copy) {
  if (n < FOLD_MIN) return crc_hw_body(crc, p, n, q, copy);
  __m512i x[4], y[4];
  load256(p, q, copy, x);
  if (copy) q += 256;
  /* The running CRC goes into the first 4 bytes, as the byte-wise algorithm XORs it into what it reads. */
  x[0] = _mm512_xor_si512(x[0], _mm512_zextsi128_si512(_mm_cvtsi32_si128((int)crc)));
  p += 256;
  n -= 256;
  const __m512i k2048 = _mm512_broadcast_i32x4(_mm_set_epi64x(FOLD_2048));
  while (n >= 256) {
    load256(p, q, copy, y);
    if (copy) q += 256;
    for (int i = 0; i < 4; i++) x[i] = fold512(x[i], k2048, y[i]);
    p += 256;
    n -= 256;
  }
  /* Four registers into one (each 64 bytes ahead of the next), then its four lanes into one. */
  const __m512i k512 = _mm512_broadcast_i32x4(_mm_set_epi64x(FOLD_512));
  for (int i = 1; i < 4; i++) x[i] = fold512(x[i - 1], k512, x[i]);
  const __m512i k_lanes = _mm512_inserti64x4(
      _mm512_castsi256_si512(_mm256_set_epi64x(FOLD_256, FOLD_384)), _mm256_set_epi64x(0, 0, FOLD_128), 1);
  /* Lane 3 is not carried (its constants are 0): it is XORed in as it is. */
  __m512i lanes = _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x[3], k_lanes, 0x00),
                                            _mm512_clmulepi64_epi128(x[3], k_lanes, 0x11),
                                            _mm512_maskz_mov_epi64(0xc0, x[3]), 0x96);
  __m256i half = _mm256_xor_si256(_mm512_castsi512_si256(lanes), _mm512_extracti64x4_epi64(lanes, 1));
  __m128i acc = _mm_xor_si128(_mm256_castsi256_si128(half), _mm256_extracti128_si256(half, 1));
  const __m128i k128 = _mm_set_epi64x(FOLD_128);
  while (n >= 16) {
    __m128i next = _mm_loadu_si128((const __m128i*)p);
    if (copy) {
      _mm_storeu_si128((__m128i*)q, next);
      q += 16;
    }
    acc = fold128(acc, k128, next);
    p += 16;
    n -= 16;
  }
  uint64_t c = _mm_crc32_u64(0, (uint64_t)_mm_cvtsi128_si64(acc));
  c = _mm_crc32_u64(c, (uint64_t)_mm_extract_epi64(acc, 1));
  return crc_hw_body((uint32_t)c, p, n, q, copy);
}

__attribute__((target(VN_FOLD_TARGET))) static uint32_t crc_fold(uint32_t crc, const uint8_t* p, size_t n) {
  return crc_fold_body(crc, p, n, NULL, 0);
}

__attribute__((target(VN_FOLD_TARGET))) static uint32_t crc_fold_copy(uint32_t crc, const uint8_t* p, size_t n,
                                                                       uint8_t* q) {
  return crc_fold_body(crc, p, n, q, 1);
}
#endif

static void init_once(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
    table[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; i++)
    for (int t = 1; t < 8; t++) table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff];
  impl = crc_sw;
  impl_copy = crc_sw_copy;
#if VN_CRC_X86
  const char* force = getenv("VFIO_NATIVE_CRC32C");
  __builtin_cpu_init();
  if (__builtin_cpu_supports("sse4.2") && !(force != NULL && strcmp(force, "table") == 0)) {
    zeros_table(shift_long, LONG_BLOCK);
    zeros_table(shift_short, SHORT_BLOCK);
    impl = crc_hw;
    impl_copy = crc_hw_copy;
    impl_name = "sse4.2";
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("vpclmulqdq") && __builtin_cpu_supports("pclmul") &&
        !(force != NULL && strcmp(force, "sse4.2") == 0)) {
      impl = crc_fold;
      impl_copy = crc_fold_copy;
      impl_name = "vpclmulqdq";
    }
  }
#endif
}

void vn_crc32c_init(void) {
  pthread_once(&once, init_once);
}

uint32_t vn_crc32c_update(uint32_t crc, const uint8_t* data, size_t len) {
  vn_crc32c_init();
  return ~impl(~crc, data, len);
}

napi_value vn_crc32c(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  size_t argc = 2;
  VN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1) return vn_throw_type(env, "crc32c(data, seed?) needs data");
  uint8_t* data;
  size_t len;
  if (!vn_get_bytes(env, argv[0], "data", &data, &len)) return NULL;
  int64_t seed = 0;
  if (argc >= 2) {
    napi_valuetype t;
    VN_CALL(env, napi_typeof(env, argv[1], &t));
    if (t != napi_undefined && !vn_get_int(env, argv[1], "seed", 0, UINT32_MAX, &seed)) return NULL;
  }
  uint32_t crc = vn_crc32c_update((uint32_t)seed, data, len);
  napi_value out;
  VN_CALL(env, napi_create_uint32(env, crc, &out));
  return out;
}

uint32_t vn_crc32c_copy(uint32_t crc, const uint8_t* src, size_t len, uint8_t* dst) {
  vn_crc32c_init();
  return ~impl_copy(~crc, src, len, dst);
}

/* The body of crc32cCopy and crc32cCopySpaced: src goes to dst in pieces of `piece` bytes, piece k at
 * at + k * (piece + gap); the gap before each later piece holds the caller's bytes (a record header, say),
 * checksummed where they lie. The CRC covers dst[from, end of the last piece). */
static napi_value copy_spaced(napi_env env, napi_callback_info info, bool spaced) {
  const char* fn = spaced ? "crc32cCopySpaced" : "crc32cCopy";
  napi_value argv[7];
  size_t want = spaced ? 7 : 5, argc = want;
  VN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < want)
    return vn_throw_type(env, spaced ? "crc32cCopySpaced(dst, from, at, src, seed, piece, gap) needs seven arguments"
                                     : "crc32cCopy(dst, from, at, src, seed) needs five arguments");
  uint8_t *dst, *src;
  size_t dst_len, src_len;
  int64_t from, at, seed, piece = 0, gap = 0;
  if (!vn_get_bytes(env, argv[0], "dst", &dst, &dst_len)) return NULL;
  if (!vn_get_int(env, argv[1], "from", 0, (int64_t)dst_len, &from)) return NULL;
  if (!vn_get_int(env, argv[2], "at", from, (int64_t)dst_len, &at)) return NULL;
  if (!vn_get_bytes(env, argv[3], "src", &src, &src_len)) return NULL;
  if (!vn_get_int(env, argv[4], "seed", 0, UINT32_MAX, &seed)) return NULL;
  if (spaced) {
    if (!vn_get_int(env, argv[5], "piece", 1, INT32_MAX, &piece)) return NULL;
    if (!vn_get_int(env, argv[6], "gap", 0, INT32_MAX, &gap)) return NULL;
  }
  if (piece == 0 || (size_t)piece > src_len) piece = src_len > 0 ? (int64_t)src_len : 1;
  size_t pieces = src_len == 0 ? 0 : (src_len + (size_t)piece - 1) / (size_t)piece;
  /* Where the copy ends: every piece and the gaps between them (sizes bounded by the checks above). */
  size_t span = pieces == 0 ? 0 : src_len + (pieces - 1) * (size_t)gap;
  if (span > dst_len - (size_t)at) return vn_throw_range(env, "%s: src does not fit in dst at `at`", fn);
  if (src + src_len > dst + at && dst + at + span > src)
    return vn_throw_range(env, "%s: src overlaps where it is copied to", fn);
  uint32_t crc = vn_crc32c_update((uint32_t)seed, dst + from, (size_t)(at - from));
  uint8_t* d = dst + at;
  for (size_t off = 0; off < src_len; off += (size_t)piece) {
    size_t n = src_len - off < (size_t)piece ? src_len - off : (size_t)piece;
    if (off > 0) {
      crc = vn_crc32c_update(crc, d, (size_t)gap);
      d += gap;
    }
    crc = vn_crc32c_copy(crc, src + off, n, d);
    d += n;
  }
  napi_value out;
  VN_CALL(env, napi_create_uint32(env, crc, &out));
  return out;
}

napi_value vn_crc32c_copy_js(napi_env env, napi_callback_info info) {
  return copy_spaced(env, info, false);
}

napi_value vn_crc32c_copy_spaced_js(napi_env env, napi_callback_info info) {
  return copy_spaced(env, info, true);
}

napi_value vn_crc32c_implementation(napi_env env, napi_callback_info info) {
  (void)info;
  vn_crc32c_init();
  napi_value out;
  VN_CALL(env, napi_create_string_utf8(env, impl_name, NAPI_AUTO_LENGTH, &out));
  return out;
}
