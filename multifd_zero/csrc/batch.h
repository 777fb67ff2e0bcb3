/*
 * The batch loop of QEMU's multifd_send_zero_page_detect
 * (migration/multifd-zero-page.c): one zero check per page of a batch.
 *
 * out[i] = 1 when page i is all zero, else 0. Page i starts at base + offs[i],
 * or at base + i * ps when offs is NULL; ps >= 1024. Each SIMD path gets its
 * own batch function, with the loop below inlined into it and the path's
 * check inlined into the loop: a call through a pointer per page would cost
 * more than a cached page's check.
 */
#ifndef MFZ_BATCH_H
#define MFZ_BATCH_H

#include "zero_check.h"

typedef void (*mfz_pages_fn)(const uint8_t *base, const uint64_t *offs, size_t n, size_t ps,
                             uint8_t *out);

/*
 * The hardware prefetchers stop at each 4 KiB boundary and the next page of
 * a batch need not follow this one, so the first line of the next page is
 * asked for while this one is read. Only that line: a second one costs more
 * in L2 than it saves out of cache.
 */
static MFZ_ALWAYS_INLINE void mfz_page_loop(mfz_big_fn check, const uint8_t *base,
                                            const uint64_t *offs, int indexed, size_t n,
                                            size_t ps, uint8_t *out)
{
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = base + (indexed ? offs[i] : i * ps);
        if (i + 1 < n) {
            MFZ_PREFETCH(base + (indexed ? offs[i + 1] : (i + 1) * ps));
        }
        out[i] = (uint8_t)(mfz_sampled_zero(p, ps) && check(p, ps));
    }
}

/*
 * Four copies of the loop: with offsets or without, and 4 KiB pages apart
 * from the rest, since a constant length lets the compiler drop the length
 * arithmetic from every page's check.
 */
static MFZ_ALWAYS_INLINE void mfz_pages_with(mfz_big_fn check, const uint8_t *base,
                                             const uint64_t *offs, size_t n, size_t ps,
                                             uint8_t *out)
{
    if (offs == NULL && ps == 4096) {
        mfz_page_loop(check, base, NULL, 0, n, 4096, out);
    } else if (offs == NULL) {
        mfz_page_loop(check, base, NULL, 0, n, ps, out);
    } else if (ps == 4096) {
        mfz_page_loop(check, base, offs, 1, n, 4096, out);
    } else {
        mfz_page_loop(check, base, offs, 1, n, ps, out);
    }
}

static void mfz_pages_portable(const uint8_t *base, const uint64_t *offs, size_t n, size_t ps,
                               uint8_t *out)
{
    mfz_pages_with(mfz_big_portable, base, offs, n, ps, out);
}

#if MFZ_HAVE_SSE2
static void mfz_pages_sse2(const uint8_t *base, const uint64_t *offs, size_t n, size_t ps,
                           uint8_t *out)
{
    mfz_pages_with(mfz_big_sse2, base, offs, n, ps, out);
}
#endif

/*
 * No aligned-only variant for 64-byte aligned hosts: skipping the edge
 * vectors there is no faster in L2 and slower out of cache (the early load
 * of the page's last line helps the prefetchers).
 */
#if MFZ_X86_DISPATCH
MFZ_TARGET("avx2") static void mfz_pages_avx2(const uint8_t *base, const uint64_t *offs,
                                              size_t n, size_t ps, uint8_t *out)
{
    mfz_pages_with(mfz_big_avx2, base, offs, n, ps, out);
}

MFZ_TARGET("avx512f") static void mfz_pages_avx512(const uint8_t *base, const uint64_t *offs,
                                                   size_t n, size_t ps, uint8_t *out)
{
    mfz_pages_with(mfz_big_avx512, base, offs, n, ps, out);
}
#endif

#endif /* MFZ_BATCH_H */
