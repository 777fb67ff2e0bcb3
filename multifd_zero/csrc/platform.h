/*
 * What every kernel header needs: fixed-width loads, pointer alignment, the
 * prefetch hint, forced inlining and the x86-64 run-time dispatch switches.
 *
 * The module is compiled for the platform baseline; the wider x86-64 paths
 * are compiled per function with target attributes and chosen at run time
 * (dispatch.h), so one wheel runs on any x86-64 CPU. Elsewhere (aarch64) the
 * portable path is the only one.
 *
 * GCC or Clang is required: the receivedmap's bits and the active path use
 * their __atomic builtins. The wheels are built for Linux only (the release
 * workflow and the "Releasing" page of the docs say why), so there is no
 * MSVC path to keep untested.
 */
#ifndef MFZ_PLATFORM_H
#define MFZ_PLATFORM_H

#if !defined(__GNUC__)
#error "multifd_zero's kernels need GCC or Clang (__atomic builtins, target attributes)"
#endif

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#define MFZ_X86_DISPATCH 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define MFZ_X86_DISPATCH 0
#endif

/* SSE2 is the x86-64 baseline: its paths need no target attribute. */
#if MFZ_X86_DISPATCH
#define MFZ_HAVE_SSE2 1
#else
#define MFZ_HAVE_SSE2 0
#endif

/*
 * A compiler barrier: loads written after it are not moved before it. The
 * page checks put one between the 128-byte steps of a page, because gcc
 * otherwise reassociates the OR tree and loads the lines of each 512 bytes out
 * of order, which out of cache stops the hardware prefetcher's stream (2.5x
 * slower on AVX2, measured).
 */
#define MFZ_IN_ORDER() __asm__ __volatile__("" ::: "memory")

#define MFZ_ALWAYS_INLINE inline __attribute__((always_inline))
#define MFZ_PREFETCH(p) __builtin_prefetch((p), 0, 3)

#if MFZ_X86_DISPATCH
#define MFZ_TARGET(isa) __attribute__((target(isa)))
#endif

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

static inline const uint8_t *mfz_align_up(const uint8_t *p, uintptr_t a)
{
    return mfz_align_down(p + a - 1, a);
}

/*
 * The line of a page that the batch loop tests first: the page's number modulo
 * the lines in a page (shift is log2 of the page size, lines its line count
 * less one). Testing line 0 of every page would put all of a batch's first
 * loads in one cache set, since pages share their low address bits: in L2 that
 * took 2.8 ns a page for a batch of normal pages, against 0.8 with the line
 * spread over the page (measured on an AMD EPYC, Zen 4).
 */
static inline const uint8_t *mfz_sample_line(const uint8_t *p, unsigned shift, uintptr_t lines)
{
    return p + ((((uintptr_t)p >> shift) & lines) << 6);
}

#endif /* MFZ_PLATFORM_H */
