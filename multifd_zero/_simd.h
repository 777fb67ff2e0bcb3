/*
 * Zero checks and receivedmap atomics for multifd_zero's kernels.
 *
 * The module is compiled for the platform baseline; the wider x86-64 paths
 * are compiled per function with target attributes and chosen at run time
 * (mfz_select), so one wheel runs on any x86-64 CPU.
 *
 * Every path reads only inside [buf, buf + len): the first and last block are
 * read with unaligned loads, the blocks between them with aligned loads.
 */
#ifndef MULTIFD_ZERO_SIMD_H
#define MULTIFD_ZERO_SIMD_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__)
#define MFZ_X86_DISPATCH 1
#include <immintrin.h>
#else
#define MFZ_X86_DISPATCH 0
#endif

#if defined(_MSC_VER)
#include <intrin.h>
#endif

/* ------------------------------------------------------------------ loads */

static inline uint64_t mfz_load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint32_t mfz_load32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline const uint8_t *mfz_align_down(const uint8_t *p, uintptr_t a)
{
    return (const uint8_t *)((uintptr_t)p & ~(a - 1));
}

/* ------------------------------------------------- the portable word path */

/* Any length >= 4: head and tail as unaligned words, aligned words between. */
static int mfz_small_is_zero(const uint8_t *buf, size_t len)
{
    const uint8_t *end = buf + len;
    if (len <= 8) {
        return (mfz_load32(buf) | mfz_load32(end - 4)) == 0;
    }
    uint64_t acc = mfz_load64(buf) | mfz_load64(end - 8);
    const uint8_t *p = mfz_align_down(buf + 8, 8);
    const uint8_t *e = mfz_align_down(end, 8);
    for (; p < e; p += 8) {
        acc |= mfz_load64(p);
    }
    return acc == 0;
}

/* len >= 256. Blocks of 64 bytes; the accumulator is tested once per block. */
static int mfz_big_portable(const uint8_t *buf, size_t len)
{
    const uint8_t *end = buf + len;
    uint64_t a = 0, b = 0;
    for (int k = 0; k < 64; k += 16) {
        a |= mfz_load64(buf + k) | mfz_load64(end - 64 + k);
        b |= mfz_load64(buf + k + 8) | mfz_load64(end - 56 + k);
    }
    const uint8_t *p = mfz_align_down(buf + 64, 64);
    const uint8_t *e = mfz_align_down(end, 64);
    for (; p < e; p += 64) {
        if (a | b) {
            return 0;
        }
        a = mfz_load64(p) | mfz_load64(p + 16) | mfz_load64(p + 32) | mfz_load64(p + 48);
        b = mfz_load64(p + 8) | mfz_load64(p + 24) | mfz_load64(p + 40) | mfz_load64(p + 56);
    }
    return (a | b) == 0;
}

/* ------------------------------------------------------ x86-64 SIMD paths */

#if MFZ_X86_DISPATCH || (defined(_MSC_VER) && defined(_M_X64))
/* SSE2 is the x86-64 baseline: no target attribute needed. 128-byte blocks. */
static int mfz_big_sse2(const uint8_t *buf, size_t len)
{
    const uint8_t *end = buf + len;
    __m128i a = _mm_setzero_si128(), b = _mm_setzero_si128();
    for (int k = 0; k < 128; k += 32) {
        a = _mm_or_si128(a, _mm_loadu_si128((const __m128i *)(buf + k)));
        b = _mm_or_si128(b, _mm_loadu_si128((const __m128i *)(buf + k + 16)));
        a = _mm_or_si128(a, _mm_loadu_si128((const __m128i *)(end - 128 + k)));
        b = _mm_or_si128(b, _mm_loadu_si128((const __m128i *)(end - 112 + k)));
    }
    const __m128i *p = (const __m128i *)mfz_align_down(buf + 128, 128);
    const __m128i *e = (const __m128i *)mfz_align_down(end, 128);
    const __m128i zero = _mm_setzero_si128();
    for (; p < e; p += 8) {
        if (_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_or_si128(a, b), zero)) != 0xFFFF) {
            return 0;
        }
        a = _mm_or_si128(_mm_or_si128(p[0], p[2]), _mm_or_si128(p[4], p[6]));
        b = _mm_or_si128(_mm_or_si128(p[1], p[3]), _mm_or_si128(p[5], p[7]));
    }
    return _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_or_si128(a, b), zero)) == 0xFFFF;
}
#define MFZ_HAVE_SSE2 1
#else
#define MFZ_HAVE_SSE2 0
#endif

#if MFZ_X86_DISPATCH
/* 256-byte blocks of eight 32-byte vectors, two OR chains. */
__attribute__((target("avx2"))) static int mfz_big_avx2(const uint8_t *buf, size_t len)
{
    const uint8_t *end = buf + len;
    __m256i a = _mm256_setzero_si256(), b = _mm256_setzero_si256();
    for (int k = 0; k < 256; k += 64) {
        a = _mm256_or_si256(a, _mm256_loadu_si256((const __m256i *)(buf + k)));
        b = _mm256_or_si256(b, _mm256_loadu_si256((const __m256i *)(buf + k + 32)));
        a = _mm256_or_si256(a, _mm256_loadu_si256((const __m256i *)(end - 256 + k)));
        b = _mm256_or_si256(b, _mm256_loadu_si256((const __m256i *)(end - 224 + k)));
    }
    const __m256i *p = (const __m256i *)mfz_align_down(buf + 256, 256);
    const __m256i *e = (const __m256i *)mfz_align_down(end, 256);
    for (; p < e; p += 8) {
        __m256i t = _mm256_or_si256(a, b);
        if (!_mm256_testz_si256(t, t)) {
            return 0;
        }
        a = _mm256_or_si256(_mm256_or_si256(p[0], p[2]), _mm256_or_si256(p[4], p[6]));
        b = _mm256_or_si256(_mm256_or_si256(p[1], p[3]), _mm256_or_si256(p[5], p[7]));
    }
    __m256i t = _mm256_or_si256(a, b);
    return _mm256_testz_si256(t, t);
}

/* 256-byte blocks of four 64-byte vectors, two OR chains. */
__attribute__((target("avx512f"))) static int mfz_big_avx512(const uint8_t *buf, size_t len)
{
    const uint8_t *end = buf + len;
    __m512i a = _mm512_setzero_si512(), b = _mm512_setzero_si512();
    for (int k = 0; k < 256; k += 128) {
        a = _mm512_or_si512(a, _mm512_loadu_si512((const void *)(buf + k)));
        b = _mm512_or_si512(b, _mm512_loadu_si512((const void *)(buf + k + 64)));
        a = _mm512_or_si512(a, _mm512_loadu_si512((const void *)(end - 256 + k)));
        b = _mm512_or_si512(b, _mm512_loadu_si512((const void *)(end - 192 + k)));
    }
    const uint8_t *p = mfz_align_down(buf + 256, 256);
    const uint8_t *e = mfz_align_down(end, 256);
    for (; p < e; p += 256) {
        if (_mm512_test_epi64_mask(_mm512_or_si512(a, b), _mm512_or_si512(a, b))) {
            return 0;
        }
        a = _mm512_or_si512(_mm512_load_si512((const void *)p),
                            _mm512_load_si512((const void *)(p + 128)));
        b = _mm512_or_si512(_mm512_load_si512((const void *)(p + 64)),
                            _mm512_load_si512((const void *)(p + 192)));
    }
    return _mm512_test_epi64_mask(_mm512_or_si512(a, b), _mm512_or_si512(a, b)) == 0;
}
#endif

/* --------------------------------------------------------- run-time choice */

typedef int (*mfz_big_fn)(const uint8_t *, size_t);

enum { MFZ_PORTABLE = 0, MFZ_SSE2 = 1, MFZ_AVX2 = 2, MFZ_AVX512 = 3, MFZ_NPATHS = 4 };

static const char *const mfz_path_names[MFZ_NPATHS] = {"portable", "sse2", "avx2", "avx512"};

static mfz_big_fn mfz_big = mfz_big_portable;
static int mfz_current = MFZ_PORTABLE;

static int mfz_path_supported(int path)
{
    switch (path) {
    case MFZ_PORTABLE:
        return 1;
    case MFZ_SSE2:
        return MFZ_HAVE_SSE2;
#if MFZ_X86_DISPATCH
    case MFZ_AVX2:
        return __builtin_cpu_supports("avx2");
    case MFZ_AVX512:
        return __builtin_cpu_supports("avx512f");
#endif
    default:
        return 0;
    }
}

/* Returns 0 on success, -1 when the path is unknown or this CPU lacks it. */
static int mfz_select(int path)
{
    if (path < 0 || path >= MFZ_NPATHS || !mfz_path_supported(path)) {
        return -1;
    }
    switch (path) {
#if MFZ_HAVE_SSE2
    case MFZ_SSE2:
        mfz_big = mfz_big_sse2;
        break;
#endif
#if MFZ_X86_DISPATCH
    case MFZ_AVX2:
        mfz_big = mfz_big_avx2;
        break;
    case MFZ_AVX512:
        mfz_big = mfz_big_avx512;
        break;
#endif
    default:
        mfz_big = mfz_big_portable;
        break;
    }
    mfz_current = path;
    return 0;
}

static int mfz_best_path(void)
{
#if MFZ_X86_DISPATCH
    __builtin_cpu_init();
#endif
    for (int path = MFZ_NPATHS - 1; path > 0; path--) {
        if (mfz_path_supported(path)) {
            return path;
        }
    }
    return MFZ_PORTABLE;
}

/* ------------------------------------------------------------- zero checks */

/*
 * QEMU's buffer_is_zero: three sampled bytes first (first, last, middle), so
 * a typical non-zero page is rejected without reading the rest of it.
 */
static inline int mfz_is_zero(const uint8_t *buf, size_t len)
{
    if (len == 0) {
        return 1;
    }
    if (buf[0] || buf[len - 1] || buf[len / 2]) {
        return 0;
    }
    if (len <= 3) {
        return 1;
    }
    if (len >= 256) {
        return mfz_big(buf, len);
    }
    return mfz_small_is_zero(buf, len);
}

/* ------------------------------------------------------ receivedmap bits */

static inline int mfz_bit_test(const uint64_t *map, uint64_t bit)
{
#if defined(_MSC_VER)
    return (int)((((volatile const uint64_t *)map)[bit >> 6] >> (bit & 63)) & 1);
#else
    return (int)((__atomic_load_n(&map[bit >> 6], __ATOMIC_RELAXED) >> (bit & 63)) & 1);
#endif
}

/* Atomic: channels on other threads set neighbouring bits of the same word. */
static inline int mfz_bit_set(uint64_t *map, uint64_t bit)
{
    uint64_t mask = (uint64_t)1 << (bit & 63);
#if defined(_MSC_VER)
    return (_InterlockedOr64((volatile __int64 *)&map[bit >> 6], (__int64)mask) & mask) != 0;
#else
    return (__atomic_fetch_or(&map[bit >> 6], mask, __ATOMIC_SEQ_CST) & mask) != 0;
#endif
}

static inline int mfz_bit_clear(uint64_t *map, uint64_t bit)
{
    uint64_t mask = (uint64_t)1 << (bit & 63);
#if defined(_MSC_VER)
    return (_InterlockedAnd64((volatile __int64 *)&map[bit >> 6], (__int64)~mask) & mask) != 0;
#else
    return (__atomic_fetch_and(&map[bit >> 6], ~mask, __ATOMIC_SEQ_CST) & mask) != 0;
#endif
}

static inline uint64_t mfz_popcount64(uint64_t v)
{
#if defined(__GNUC__)
    return (uint64_t)__builtin_popcountll(v);
#else
    v = v - ((v >> 1) & 0x5555555555555555ULL);
    v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
    v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (v * 0x0101010101010101ULL) >> 56;
#endif
}

#endif /* MULTIFD_ZERO_SIMD_H */
