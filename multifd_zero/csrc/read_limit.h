/*
 * Benchmark only: the read limit, an OR of every byte with no early exit.
 * What reading the memory costs at best, next to which the batch loops are
 * measured (multifd_zero._bench_kernels, benchmarks/bench_floor.c).
 */
#ifndef MFZ_READ_LIMIT_H
#define MFZ_READ_LIMIT_H

#include "page_check.h"

static uint64_t mfz_read_all_portable(const uint8_t *buf, size_t len)
{
    uint64_t a = 0, b = 0;
    size_t i = 0;
    for (; i + 16 <= len; i += 16) {
        a |= mfz_load64(buf + i);
        b |= mfz_load64(buf + i + 8);
    }
    for (; i < len; i++) {
        a |= buf[i];
    }
    return a | b;
}

#if MFZ_X86_DISPATCH
/* Eight lines ORed per step: the fastest whole-buffer loop found. */
MFZ_TARGET("avx512f") static uint64_t mfz_read_all_avx512(const uint8_t *buf, size_t len)
{
    __m512i acc = _mm512_setzero_si512();
    size_t head = (size_t)(mfz_align_up(buf, 64) - buf);
    if (head > len) {
        head = len;
    }
    uint64_t edge = mfz_read_all_portable(buf, head);
    const uint8_t *p = buf + head;
    const uint8_t *e = p + ((len - head) & ~(size_t)511);
    for (; p < e; p += 512) {
        __m512i a = _mm512_ternarylogic_epi64(_mm512_load_si512((const void *)p),
                                              _mm512_load_si512((const void *)(p + 64)),
                                              _mm512_load_si512((const void *)(p + 128)), 0xfe);
        __m512i b = _mm512_ternarylogic_epi64(_mm512_load_si512((const void *)(p + 192)),
                                              _mm512_load_si512((const void *)(p + 256)),
                                              _mm512_load_si512((const void *)(p + 320)), 0xfe);
        __m512i c = _mm512_or_si512(_mm512_load_si512((const void *)(p + 384)),
                                    _mm512_load_si512((const void *)(p + 448)));
        acc = _mm512_or_si512(acc, _mm512_ternarylogic_epi64(a, b, c, 0xfe));
    }
    return (uint64_t)_mm512_reduce_or_epi64(acc) | edge |
           mfz_read_all_portable(p, (size_t)(buf + len - p));
}
#endif

static uint64_t mfz_read_all(const uint8_t *buf, size_t len)
{
#if MFZ_X86_DISPATCH
    if (__builtin_cpu_supports("avx512f")) {
        return mfz_read_all_avx512(buf, len);
    }
#endif
    return mfz_read_all_portable(buf, len);
}

/*
 * Benchmark only: the least a batch loop can do, one load per page (of the
 * line the batch loop samples, batch.h) and one result per page, with no check
 * behind it: what an all-normal batch costs at best.
 */
static void mfz_touch_heads(const uint8_t *base, const uint64_t *offs, size_t n, uint8_t *out)
{
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = base + offs[i];
        out[i] = *mfz_sample_line(p, 12, 63) == 0;
    }
}

/*
 * Benchmark only: the zero pages of a region read with the answer known in
 * advance, MFZ_GROUP side by side, nothing else read. Every exact check has
 * to read at least these bytes; reading them in groups is the fastest way
 * measured (design page). ps is a multiple of 128; offs lists only zero pages.
 */
#if MFZ_X86_DISPATCH
MFZ_TARGET("avx512f") static size_t mfz_read_known_avx512(const uint8_t *base,
                                                          const uint64_t *offs, size_t n,
                                                          size_t ps)
{
    size_t seen = 0;
    const uint8_t *q[MFZ_GROUP];
    for (size_t i = 0; i + MFZ_GROUP <= n; i += MFZ_GROUP) {
        for (int m = 0; m < MFZ_GROUP; m++) {
            q[m] = base + offs[i + (size_t)m];
        }
        seen += mfz_group_avx512(q, ps);
    }
    return seen;
}
#endif

static size_t mfz_read_known(const uint8_t *base, const uint64_t *offs, size_t n, size_t ps)
{
#if MFZ_X86_DISPATCH
    if (__builtin_cpu_supports("avx512f")) {
        return mfz_read_known_avx512(base, offs, n, ps);
    }
#endif
    size_t seen = 0;
    const uint8_t *q[MFZ_GROUP];
    for (size_t i = 0; i + MFZ_GROUP <= n; i += MFZ_GROUP) {
        for (int m = 0; m < MFZ_GROUP; m++) {
            q[m] = base + offs[i + (size_t)m];
        }
        seen += mfz_group_portable(q, ps);
    }
    return seen;
}

#endif /* MFZ_READ_LIMIT_H */
