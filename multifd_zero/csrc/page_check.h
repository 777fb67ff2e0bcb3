/*
 * The zero checks of the batch loop (batch.h), one set per SIMD path.
 *
 * A page of a batch is at least 1 KiB and a multiple of 128 bytes, so these
 * need no ragged edges: every load is an unaligned vector load, in address
 * order, which is the order the hardware prefetchers follow. Two checks:
 *
 *   mfz_tail_<path>(p, len)  1 when len bytes from p are zero; len is a
 *                            multiple of 128. Steps of 512 bytes with one test
 *                            each, then steps of 128.
 *   mfz_group_<path>(q, ps)  reads MFZ_GROUP pages side by side, 128 bytes of
 *                            each per step, and returns how many bytes from the
 *                            start of every page were found zero: ps when all
 *                            the pages are zero, else the start of the first
 *                            step that was not (a multiple of 128).
 *
 * Reading pages side by side keeps one prefetch stream per page running: out
 * of cache, a page read on its own waits for its stream to start, and the
 * streams stop at every 4 KiB boundary.
 */
#ifndef MFZ_PAGE_CHECK_H
#define MFZ_PAGE_CHECK_H

#include "platform.h"

#define MFZ_GROUP 8

typedef int (*mfz_tail_fn)(const uint8_t *p, size_t len);
typedef size_t (*mfz_group_fn)(const uint8_t *const *q, size_t ps);

static MFZ_ALWAYS_INLINE uint64_t mfz_or128_portable(const uint8_t *p)
{
    uint64_t a = mfz_load64(p) | mfz_load64(p + 8) | mfz_load64(p + 16) | mfz_load64(p + 24);
    uint64_t b = mfz_load64(p + 32) | mfz_load64(p + 40) | mfz_load64(p + 48) | mfz_load64(p + 56);
    uint64_t c = mfz_load64(p + 64) | mfz_load64(p + 72) | mfz_load64(p + 80) | mfz_load64(p + 88);
    uint64_t d = mfz_load64(p + 96) | mfz_load64(p + 104) | mfz_load64(p + 112) | mfz_load64(p + 120);
    return (a | b) | (c | d);
}

static MFZ_ALWAYS_INLINE int mfz_tail_portable(const uint8_t *p, size_t len)
{
    size_t k = 0;
    for (; k + 512 <= len; k += 512) {
        uint64_t t = mfz_or128_portable(p + k);
        MFZ_IN_ORDER();
        t |= mfz_or128_portable(p + k + 128);
        MFZ_IN_ORDER();
        t |= mfz_or128_portable(p + k + 256);
        MFZ_IN_ORDER();
        t |= mfz_or128_portable(p + k + 384);
        if (t != 0) {
            return 0;
        }
    }
    for (; k < len; k += 128) {
        if (mfz_or128_portable(p + k) != 0) {
            return 0;
        }
    }
    return 1;
}

static MFZ_ALWAYS_INLINE size_t mfz_group_portable(const uint8_t *const *q, size_t ps)
{
    for (size_t k = 0; k < ps; k += 128) {
        uint64_t acc = 0;
        for (int m = 0; m < MFZ_GROUP; m++) {
            acc |= mfz_or128_portable(q[m] + k);
        }
        if (acc != 0) {
            return k;
        }
    }
    return ps;
}

#if MFZ_HAVE_SSE2
static MFZ_ALWAYS_INLINE __m128i mfz_or128_sse2(const uint8_t *p)
{
    const __m128i *v = (const __m128i *)p;
    __m128i a = _mm_or_si128(_mm_loadu_si128(v), _mm_loadu_si128(v + 1));
    __m128i b = _mm_or_si128(_mm_loadu_si128(v + 2), _mm_loadu_si128(v + 3));
    __m128i c = _mm_or_si128(_mm_loadu_si128(v + 4), _mm_loadu_si128(v + 5));
    __m128i d = _mm_or_si128(_mm_loadu_si128(v + 6), _mm_loadu_si128(v + 7));
    return _mm_or_si128(_mm_or_si128(a, b), _mm_or_si128(c, d));
}

static MFZ_ALWAYS_INLINE int mfz_zero128_sse2(__m128i v)
{
    return _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_setzero_si128())) == 0xFFFF;
}

static MFZ_ALWAYS_INLINE int mfz_tail_sse2(const uint8_t *p, size_t len)
{
    size_t k = 0;
    for (; k + 512 <= len; k += 512) {
        __m128i t = mfz_or128_sse2(p + k);
        MFZ_IN_ORDER();
        t = _mm_or_si128(t, mfz_or128_sse2(p + k + 128));
        MFZ_IN_ORDER();
        t = _mm_or_si128(t, mfz_or128_sse2(p + k + 256));
        MFZ_IN_ORDER();
        t = _mm_or_si128(t, mfz_or128_sse2(p + k + 384));
        if (!mfz_zero128_sse2(t)) {
            return 0;
        }
    }
    for (; k < len; k += 128) {
        if (!mfz_zero128_sse2(mfz_or128_sse2(p + k))) {
            return 0;
        }
    }
    return 1;
}

static MFZ_ALWAYS_INLINE size_t mfz_group_sse2(const uint8_t *const *q, size_t ps)
{
    for (size_t k = 0; k < ps; k += 128) {
        __m128i acc = _mm_setzero_si128();
        for (int m = 0; m < MFZ_GROUP; m++) {
            acc = _mm_or_si128(acc, mfz_or128_sse2(q[m] + k));
        }
        if (!mfz_zero128_sse2(acc)) {
            return k;
        }
    }
    return ps;
}
#endif

#if MFZ_X86_DISPATCH
MFZ_TARGET("avx2") static MFZ_ALWAYS_INLINE __m256i mfz_or128_avx2(const uint8_t *p)
{
    const __m256i *v = (const __m256i *)p;
    return _mm256_or_si256(_mm256_or_si256(_mm256_loadu_si256(v), _mm256_loadu_si256(v + 1)),
                           _mm256_or_si256(_mm256_loadu_si256(v + 2), _mm256_loadu_si256(v + 3)));
}

MFZ_TARGET("avx2") static MFZ_ALWAYS_INLINE int mfz_tail_avx2(const uint8_t *p, size_t len)
{
    size_t k = 0;
    for (; k + 512 <= len; k += 512) {
        __m256i t = mfz_or128_avx2(p + k);
        MFZ_IN_ORDER();
        t = _mm256_or_si256(t, mfz_or128_avx2(p + k + 128));
        MFZ_IN_ORDER();
        t = _mm256_or_si256(t, mfz_or128_avx2(p + k + 256));
        MFZ_IN_ORDER();
        t = _mm256_or_si256(t, mfz_or128_avx2(p + k + 384));
        if (!_mm256_testz_si256(t, t)) {
            return 0;
        }
    }
    for (; k < len; k += 128) {
        __m256i t = mfz_or128_avx2(p + k);
        if (!_mm256_testz_si256(t, t)) {
            return 0;
        }
    }
    return 1;
}

MFZ_TARGET("avx2") static MFZ_ALWAYS_INLINE size_t mfz_group_avx2(const uint8_t *const *q,
                                                                   size_t ps)
{
    for (size_t k = 0; k < ps; k += 128) {
        __m256i acc = _mm256_setzero_si256();
        for (int m = 0; m < MFZ_GROUP; m++) {
            acc = _mm256_or_si256(acc, mfz_or128_avx2(q[m] + k));
        }
        if (!_mm256_testz_si256(acc, acc)) {
            return k;
        }
    }
    return ps;
}

MFZ_TARGET("avx512f") static MFZ_ALWAYS_INLINE __m512i mfz_or128_avx512(const uint8_t *p)
{
    return _mm512_or_si512(_mm512_loadu_si512((const void *)p),
                           _mm512_loadu_si512((const void *)(p + 64)));
}

MFZ_TARGET("avx512f") static MFZ_ALWAYS_INLINE int mfz_tail_avx512(const uint8_t *p, size_t len)
{
    size_t k = 0;
    for (; k + 512 <= len; k += 512) {
        __m512i t = mfz_or128_avx512(p + k);
        MFZ_IN_ORDER();
        t = _mm512_or_si512(t, mfz_or128_avx512(p + k + 128));
        MFZ_IN_ORDER();
        t = _mm512_or_si512(t, mfz_or128_avx512(p + k + 256));
        MFZ_IN_ORDER();
        t = _mm512_or_si512(t, mfz_or128_avx512(p + k + 384));
        if (_mm512_test_epi64_mask(t, t)) {
            return 0;
        }
    }
    for (; k < len; k += 128) {
        __m512i t = mfz_or128_avx512(p + k);
        if (_mm512_test_epi64_mask(t, t)) {
            return 0;
        }
    }
    return 1;
}

MFZ_TARGET("avx512f") static MFZ_ALWAYS_INLINE size_t mfz_group_avx512(const uint8_t *const *q,
                                                                       size_t ps)
{
    for (size_t k = 0; k < ps; k += 128) {
        __m512i acc = _mm512_setzero_si512();
        for (int m = 0; m < MFZ_GROUP; m++) {
            acc = _mm512_or_si512(acc, mfz_or128_avx512(q[m] + k));
        }
        if (_mm512_test_epi64_mask(acc, acc)) {
            return k;
        }
    }
    return ps;
}
#endif

#endif /* MFZ_PAGE_CHECK_H */
