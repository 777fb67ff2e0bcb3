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

#include "page_check.h"

typedef void (*mfz_pages_fn)(const uint8_t *base, const uint64_t *offs, size_t n, size_t ps,
                             uint8_t *out);

/*
 * The loop, for batches in cache and out of it (the figures are on the
 * performance page of the docs):
 *
 * - One sampled byte decides most normal pages, as the first of QEMU's three
 *   sampled bytes does; its line is asked for MFZ_AHEAD pages ahead so that it
 *   is in cache when its turn comes. The byte is the first of one line of the
 *   page, a different line for neighbouring pages (mfz_sample_line), so that
 *   a batch's samples do not all fall in one cache set. QEMU's other samples,
 *   the last and middle bytes, are not read: out of cache, reading them before
 *   the rest of the page breaks the prefetch stream of every zero page.
 * - Pages whose sampled byte is zero wait in a group; a full group is read
 *   side by side (page_check.h), one prefetch stream per page. Where the group
 *   finds a non-zero step, each page is checked on its own from that step on:
 *   everything before it is known to be zero.
 * - A group of adjacent pages is read one page after another instead, and
 *   the adjacent pages that follow it up to MFZ_RUN at a time as one region
 *   ("stream" below): over contiguous zero memory one long stream is faster
 *   than eight short ones, and faster than page after page. Where a run is
 *   not all zero, its pages are checked one by one (now in cache) and the
 *   loop goes back to sampling.
 *
 * The result of each page is exact and independent of the order in which
 * pages are read; QEMU's order of the offsets is restored by the caller.
 */
#define MFZ_AHEAD 8
#define MFZ_RUN 16

static MFZ_ALWAYS_INLINE void mfz_page_loop(mfz_tail_fn tail, mfz_group_fn group,
                                            const uint8_t *base, const uint64_t *offs,
                                            int indexed, size_t n, size_t ps, uint8_t *out)
{
#define MFZ_PAGE(k) (base + (indexed ? offs[k] : (k) * ps))
    unsigned shift = 0;
    while (((size_t)1 << shift) < ps) {
        shift++;
    }
    const uintptr_t lines = ps / 64 - 1;
#define MFZ_SAMPLE(p) mfz_sample_line((p), shift, lines)
    const uint8_t *q[MFZ_GROUP];
    size_t at[MFZ_GROUP];
    int waiting = 0, stream = 0;
    const uint8_t *last = NULL;
    for (size_t k = 0; k < n && k < MFZ_AHEAD; k++) {
        MFZ_PREFETCH(MFZ_SAMPLE(MFZ_PAGE(k)));
    }
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = MFZ_PAGE(i);
        if (stream) {
            if (p == last + ps) {
                size_t run = 1;
                while (run < MFZ_RUN && i + run < n && MFZ_PAGE(i + run) == p + run * ps) {
                    run++;
                }
                if (tail(p, run * ps)) {
                    memset(out + i, 1, run);
                } else {
                    for (size_t k = 0; k < run; k++) {
                        out[i + k] = (uint8_t)tail(p + k * ps, ps);
                    }
                    stream = 0;
                }
                last = p + (run - 1) * ps;
                i += run - 1;
                continue;
            }
            stream = 0;
        } else if (i + MFZ_AHEAD < n) {
            MFZ_PREFETCH(MFZ_SAMPLE(MFZ_PAGE(i + MFZ_AHEAD)));
        }
        if (*MFZ_SAMPLE(p) != 0) {
            out[i] = 0;
            continue;
        }
        q[waiting] = p;
        at[waiting] = i;
        if (++waiting < MFZ_GROUP) {
            continue;
        }
        waiting = 0;
        int adjacent = 1;
        for (int m = 1; m < MFZ_GROUP; m++) {
            adjacent &= q[m] == q[m - 1] + ps;
        }
        if (adjacent) {
            for (int m = 0; m < MFZ_GROUP; m++) {
                out[at[m]] = (uint8_t)tail(q[m], ps);
            }
            stream = 1;
            last = q[MFZ_GROUP - 1];
            continue;
        }
        size_t zero = group(q, ps);
        for (int m = 0; m < MFZ_GROUP; m++) {
            out[at[m]] = (uint8_t)(zero == ps || tail(q[m] + zero, ps - zero));
        }
    }
    for (int m = 0; m < waiting; m++) {
        out[at[m]] = (uint8_t)tail(q[m], ps);
    }
#undef MFZ_SAMPLE
#undef MFZ_PAGE
}

/*
 * Four copies of the loop: with offsets or without, and 4 KiB pages apart
 * from the rest, since a constant length lets the compiler drop the length
 * arithmetic from every page's check.
 */
static MFZ_ALWAYS_INLINE void mfz_pages_with(mfz_tail_fn tail, mfz_group_fn group,
                                             const uint8_t *base, const uint64_t *offs,
                                             size_t n, size_t ps, uint8_t *out)
{
    if (offs == NULL && ps == 4096) {
        mfz_page_loop(tail, group, base, NULL, 0, n, 4096, out);
    } else if (offs == NULL) {
        mfz_page_loop(tail, group, base, NULL, 0, n, ps, out);
    } else if (ps == 4096) {
        mfz_page_loop(tail, group, base, offs, 1, n, 4096, out);
    } else {
        mfz_page_loop(tail, group, base, offs, 1, n, ps, out);
    }
}

static void mfz_pages_portable(const uint8_t *base, const uint64_t *offs, size_t n, size_t ps,
                               uint8_t *out)
{
    mfz_pages_with(mfz_tail_portable, mfz_group_portable, base, offs, n, ps, out);
}

#if MFZ_HAVE_SSE2
static void mfz_pages_sse2(const uint8_t *base, const uint64_t *offs, size_t n, size_t ps,
                           uint8_t *out)
{
    mfz_pages_with(mfz_tail_sse2, mfz_group_sse2, base, offs, n, ps, out);
}
#endif

#if MFZ_X86_DISPATCH
MFZ_TARGET("avx2") static void mfz_pages_avx2(const uint8_t *base, const uint64_t *offs,
                                              size_t n, size_t ps, uint8_t *out)
{
    mfz_pages_with(mfz_tail_avx2, mfz_group_avx2, base, offs, n, ps, out);
}

MFZ_TARGET("avx512f") static void mfz_pages_avx512(const uint8_t *base, const uint64_t *offs,
                                                   size_t n, size_t ps, uint8_t *out)
{
    mfz_pages_with(mfz_tail_avx512, mfz_group_avx512, base, offs, n, ps, out);
}
#endif

#endif /* MFZ_BATCH_H */
