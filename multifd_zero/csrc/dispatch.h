/*
 * The run-time choice of SIMD path: a table of paths, each a consistent set
 * of kernels, and the active path.
 *
 * The active path is one pointer into a constant table, so a reader sees
 * either the old path or the new one, never a mix of the two. Kernels read
 * it once, with mfz_path_now, at the start of a call and use that path for
 * the whole call: a call running while another thread selects a path
 * finishes on the path it started with.
 */
#ifndef MFZ_DISPATCH_H
#define MFZ_DISPATCH_H

#include "batch.h"
#include "bitmap.h"
#include "offsets.h"
#include "zero_check.h"
#include "zero_store.h"

typedef struct mfz_path {
    const char *name;
    mfz_big_fn big;         /* buffer_is_zero for len >= 256 */
    mfz_pages_fn pages;     /* the batch loop */
    mfz_zero_fn zero_page;  /* the receiver's page zeroing */
} mfz_path;

enum { MFZ_PORTABLE = 0, MFZ_SSE2 = 1, MFZ_AVX2 = 2, MFZ_AVX512 = 3, MFZ_NPATHS = 4 };

/* Slowest first; a path this build lacks repeats the portable kernels. */
static const mfz_path mfz_paths[MFZ_NPATHS] = {
    {"portable", mfz_big_portable, mfz_pages_portable, mfz_zero_plain},
#if MFZ_HAVE_SSE2
    {"sse2", mfz_big_sse2, mfz_pages_sse2, mfz_zero_stream_sse2},
#else
    {"sse2", mfz_big_portable, mfz_pages_portable, mfz_zero_plain},
#endif
#if MFZ_X86_DISPATCH
    {"avx2", mfz_big_avx2, mfz_pages_avx2, mfz_zero_stream_avx2},
    {"avx512", mfz_big_avx512, mfz_pages_avx512, mfz_zero_stream_avx2},
#else
    {"avx2", mfz_big_portable, mfz_pages_portable, mfz_zero_plain},
    {"avx512", mfz_big_portable, mfz_pages_portable, mfz_zero_plain},
#endif
};

static const mfz_path *mfz_active = &mfz_paths[MFZ_PORTABLE];

/* The active path; relaxed is enough, the table it points into never changes. */
static inline const mfz_path *mfz_path_now(void)
{
    return __atomic_load_n(&mfz_active, __ATOMIC_RELAXED);
}

static inline int mfz_path_index(const mfz_path *path)
{
    return (int)(path - mfz_paths);
}

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
    __atomic_store_n(&mfz_active, &mfz_paths[path], __ATOMIC_RELAXED);
    return 0;
}

#if MFZ_X86_DISPATCH
/*
 * AMD family 19h (Zen 3 and Zen 4; only Zen 4 has AVX-512) runs 512-bit
 * operations as two 256-bit halves, and there the AVX2 batch loop reads zero
 * memory out of cache about 9% faster, and no slower anywhere else (the
 * per-path rows of `multifd-zero bench`). Family 1Ah (Zen 5) has full-width
 * AVX-512 and keeps it.
 */
static int mfz_prefers_avx2(void)
{
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) {
        return 0;
    }
    /* "AuthenticAMD" in ebx, edx, ecx. */
    if (ebx != 0x68747541u || edx != 0x69746e65u || ecx != 0x444d4163u) {
        return 0;
    }
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) {
        return 0;
    }
    unsigned int family = (eax >> 8) & 0xfu;
    if (family == 0xfu) {
        family += (eax >> 20) & 0xffu;
    }
    return family == 0x19u;
}
#endif

/* The widest path this CPU runs, but for the CPUs where a narrower one is faster. */
static int mfz_best_path(void)
{
#if MFZ_X86_DISPATCH
    __builtin_cpu_init();
    if (mfz_path_supported(MFZ_AVX2) && mfz_prefers_avx2()) {
        return MFZ_AVX2;
    }
#endif
    for (int path = MFZ_NPATHS - 1; path > 0; path--) {
        if (mfz_path_supported(path)) {
            return path;
        }
    }
    return MFZ_PORTABLE;
}

/* QEMU's buffer_is_zero on the given path. */
static inline int mfz_is_zero(const mfz_path *path, const uint8_t *buf, size_t len)
{
    return mfz_is_zero_with(path->big, buf, len);
}

#endif /* MFZ_DISPATCH_H */
