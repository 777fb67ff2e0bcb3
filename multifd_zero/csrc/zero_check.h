/*
 * Whole-buffer zero checks, one per SIMD path, after QEMU's
 * util/bufferiszero.c.
 *
 * Every path reads only inside [buf, buf + len): the first and last block are
 * read with unaligned loads, the blocks between them with aligned loads.
 */
#ifndef MFZ_ZERO_CHECK_H
#define MFZ_ZERO_CHECK_H

#include "platform.h"

/* A whole-buffer check for len >= 256; 1 when every byte is zero. */
typedef int (*mfz_big_fn)(const uint8_t *buf, size_t len);

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

/*
 * The scheme of every path below (len >= 256): one unaligned vector at each
 * end covers the ragged edges; the aligned vectors between them are ORed in
 * steps of 512 bytes with one test per step (early exit), then the rest one
 * vector at a time. No byte is loaded from memory twice except in the two
 * edge vectors' cache lines.
 */
static inline int mfz_big_portable(const uint8_t *buf, size_t len)
{
    const uint8_t *end = buf + len;
    if ((mfz_load64(buf) | mfz_load64(end - 8)) != 0) {
        return 0;
    }
    const uint8_t *p = mfz_align_up(buf, 8);
    const uint8_t *e = mfz_align_down(end, 8);
    for (; e - p >= 64; p += 64) {
        uint64_t a = mfz_load64(p) | mfz_load64(p + 16) | mfz_load64(p + 32) | mfz_load64(p + 48);
        uint64_t b = mfz_load64(p + 8) | mfz_load64(p + 24) | mfz_load64(p + 40) | mfz_load64(p + 56);
        if (a | b) {
            return 0;
        }
    }
    uint64_t r = 0;
    for (; p < e; p += 8) {
        r |= mfz_load64(p);
    }
    return r == 0;
}

#if MFZ_HAVE_SSE2
static inline int mfz_sse2_nonzero(__m128i v)
{
    return _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_setzero_si128())) != 0xFFFF;
}

static inline int mfz_big_sse2(const uint8_t *buf, size_t len)
{
    const uint8_t *end = buf + len;
    if (mfz_sse2_nonzero(_mm_or_si128(_mm_loadu_si128((const __m128i *)buf),
                                      _mm_loadu_si128((const __m128i *)(end - 16))))) {
        return 0;
    }
    const __m128i *p = (const __m128i *)mfz_align_up(buf, 16);
    const __m128i *e = (const __m128i *)mfz_align_down(end, 16);
    for (; e - p >= 16; p += 16) {
        __m128i a = _mm_or_si128(_mm_or_si128(p[0], p[2]), _mm_or_si128(p[4], p[6]));
        __m128i b = _mm_or_si128(_mm_or_si128(p[1], p[3]), _mm_or_si128(p[5], p[7]));
        __m128i c = _mm_or_si128(_mm_or_si128(p[8], p[10]), _mm_or_si128(p[12], p[14]));
        __m128i d = _mm_or_si128(_mm_or_si128(p[9], p[11]), _mm_or_si128(p[13], p[15]));
        if (mfz_sse2_nonzero(_mm_or_si128(_mm_or_si128(a, b), _mm_or_si128(c, d)))) {
            return 0;
        }
    }
    __m128i r = _mm_setzero_si128();
    for (; p < e; p++) {
        r = _mm_or_si128(r, *p);
    }
    return !mfz_sse2_nonzero(r);
}
#endif

#if MFZ_X86_DISPATCH
/*
 * No software prefetch inside a buffer: the hardware prefetchers keep up
 * within a contiguous buffer, and explicit prefetches only cost load slots
 * in L2. (The batch loops do prefetch the head of the next page, which the
 * hardware cannot guess.)
 */
MFZ_TARGET("avx2") static inline int mfz_big_avx2(const uint8_t *buf, size_t len)
{
    const uint8_t *end = buf + len;
    __m256i t = _mm256_or_si256(_mm256_loadu_si256((const __m256i *)buf),
                                _mm256_loadu_si256((const __m256i *)(end - 32)));
    if (!_mm256_testz_si256(t, t)) {
        return 0;
    }
    const __m256i *p = (const __m256i *)mfz_align_up(buf, 32);
    const __m256i *e = (const __m256i *)mfz_align_down(end, 32);
    for (; e - p >= 16; p += 16) {
        __m256i a = _mm256_or_si256(_mm256_or_si256(p[0], p[4]), _mm256_or_si256(p[8], p[12]));
        __m256i b = _mm256_or_si256(_mm256_or_si256(p[1], p[5]), _mm256_or_si256(p[9], p[13]));
        __m256i c = _mm256_or_si256(_mm256_or_si256(p[2], p[6]), _mm256_or_si256(p[10], p[14]));
        __m256i d = _mm256_or_si256(_mm256_or_si256(p[3], p[7]), _mm256_or_si256(p[11], p[15]));
        t = _mm256_or_si256(_mm256_or_si256(a, b), _mm256_or_si256(c, d));
        if (!_mm256_testz_si256(t, t)) {
            return 0;
        }
    }
    t = _mm256_setzero_si256();
    for (; p < e; p++) {
        t = _mm256_or_si256(t, *p);
    }
    return _mm256_testz_si256(t, t);
}

/*
 * The edge vectors are folded into the first step instead of being tested on
 * their own: one branch fewer per page, and the three sampled bytes have
 * already rejected most pages whose edges are not zero.
 */
MFZ_TARGET("avx512f") static inline int mfz_big_avx512(const uint8_t *buf, size_t len)
{
    const uint8_t *end = buf + len;
    __m512i t = _mm512_or_si512(_mm512_loadu_si512((const void *)buf),
                                _mm512_loadu_si512((const void *)(end - 64)));
    const uint8_t *p = mfz_align_up(buf, 64);
    const uint8_t *e = mfz_align_down(end, 64);
    /* 0xfe is a | b | c: one ternary-logic instruction ORs three vectors. */
    for (; e - p >= 512; p += 512) {
        __m512i a = _mm512_ternarylogic_epi64(t, _mm512_load_si512((const void *)p),
                                              _mm512_load_si512((const void *)(p + 64)), 0xfe);
        __m512i b = _mm512_ternarylogic_epi64(_mm512_load_si512((const void *)(p + 128)),
                                              _mm512_load_si512((const void *)(p + 192)),
                                              _mm512_load_si512((const void *)(p + 256)), 0xfe);
        __m512i c = _mm512_ternarylogic_epi64(_mm512_load_si512((const void *)(p + 320)),
                                              _mm512_load_si512((const void *)(p + 384)),
                                              _mm512_load_si512((const void *)(p + 448)), 0xfe);
        t = _mm512_ternarylogic_epi64(a, b, c, 0xfe);
        if (_mm512_test_epi64_mask(t, t)) {
            return 0;
        }
    }
    for (; p < e; p += 64) {
        t = _mm512_or_si512(t, _mm512_load_si512((const void *)p));
    }
    return _mm512_test_epi64_mask(t, t) == 0;
}
#endif

/*
 * QEMU's three sampled bytes of a page: first, last and middle, each read
 * only if the one before was zero. Out of cache a typical normal page then
 * costs one line, not three.
 */
static inline int mfz_sampled_zero(const uint8_t *p, size_t len)
{
    return !(p[0] || p[len - 1] || p[len / 2]);
}

/*
 * QEMU's buffer_is_zero on a given path: the sampled bytes first, so a
 * typical non-zero page is rejected without reading the rest of it.
 */
static inline int mfz_is_zero_with(mfz_big_fn big, const uint8_t *buf, size_t len)
{
    if (len == 0) {
        return 1;
    }
    if (!mfz_sampled_zero(buf, len)) {
        return 0;
    }
    if (len <= 3) {
        return 1;
    }
    if (len >= 256) {
        return big(buf, len);
    }
    return mfz_small_is_zero(buf, len);
}

#endif /* MFZ_ZERO_CHECK_H */
