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

/*
 * The scheme of every path below (len >= 256): one unaligned vector at each
 * end covers the ragged edges; the aligned vectors between them are ORed in
 * steps of 512 bytes with one test per step (early exit), then the rest one
 * vector at a time. No byte is loaded from memory twice except in the two
 * edge vectors' cache lines.
 */
static inline const uint8_t *mfz_align_up(const uint8_t *p, uintptr_t a)
{
    return mfz_align_down(p + a - 1, a);
}

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

#if MFZ_X86_DISPATCH || (defined(_MSC_VER) && defined(_M_X64))
/* SSE2 is the x86-64 baseline: no target attribute needed. */
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
#define MFZ_HAVE_SSE2 1
#else
#define MFZ_HAVE_SSE2 0
#endif

#if MFZ_X86_DISPATCH
/*
 * No software prefetch inside a buffer: measured on Sapphire Rapids, the
 * hardware prefetchers keep up within a contiguous buffer, and explicit
 * prefetches only cost load slots in L2. (The batch loops below do prefetch
 * the head of the next page, which the hardware cannot guess.)
 */
__attribute__((target("avx2"))) static inline int mfz_big_avx2(const uint8_t *buf, size_t len)
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
__attribute__((target("avx512f"))) static inline int mfz_big_avx512(const uint8_t *buf, size_t len)
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

/* ------------------------------------------------------- batches of pages */

/*
 * QEMU's three sampled bytes of a page: first, last and middle, each read
 * only if the one before was zero. Out of cache a typical normal page then
 * costs one line, not three (reading all three took a half-random 1 GiB
 * scan from 23 to 19.5 GB/s).
 */
static inline int mfz_sampled_zero(const uint8_t *p, size_t len)
{
    return !(p[0] || p[len - 1] || p[len / 2]);
}

#if defined(__GNUC__)
#define MFZ_PREFETCH(p) __builtin_prefetch((p), 0, 3)
#else
#define MFZ_PREFETCH(p) ((void)(p))
#endif

/*
 * out[i] = 1 when page i is all zero, else 0. Page i starts at base + offs[i],
 * or at base + i * ps when offs is NULL; ps >= 1024. Each path has its own
 * batch function so that the page check is inlined rather than called through
 * a pointer per page, and 4 KiB pages get loops of their own: with a constant
 * length the loop runs about 1 ns a page faster (measured in L2).
 */
/*
 * The hardware prefetchers stop at each 4 KiB boundary and the next page of
 * a batch need not follow this one, so the first line of the next page is
 * asked for while this one is read. Measured: up to 3% faster out of cache
 * on memory in 4 KiB pages, neutral in huge pages and in L2. A second line
 * cost 0.4 ns a page on half-random batches in L2 and gained nothing.
 */
#define MFZ_PAGE_LOOP(check, start, len, next)                                     \
    for (size_t i = 0; i < n; i++) {                                               \
        const uint8_t *p = base + (start);                                         \
        if (i + 1 < n) {                                                           \
            const uint8_t *q_ = base + (next);                                     \
            MFZ_PREFETCH(q_);                                                      \
        }                                                                          \
        out[i] = (uint8_t)(mfz_sampled_zero(p, (len)) && check(p, (len)));         \
    }

#define MFZ_PAGES_BODY(check)                                                      \
    if (offs == NULL && ps == 4096) {                                              \
        MFZ_PAGE_LOOP(check, i * 4096, 4096, (i + 1) * 4096)                       \
    } else if (offs == NULL) {                                                     \
        MFZ_PAGE_LOOP(check, i * ps, ps, (i + 1) * ps)                             \
    } else if (ps == 4096) {                                                       \
        MFZ_PAGE_LOOP(check, offs[i], 4096, offs[i + 1])                           \
    } else {                                                                       \
        MFZ_PAGE_LOOP(check, offs[i], ps, offs[i + 1])                             \
    }

typedef void (*mfz_pages_fn)(const uint8_t *base, const uint64_t *offs, size_t n, size_t ps,
                             uint8_t *out);

static void mfz_pages_portable(const uint8_t *base, const uint64_t *offs, size_t n, size_t ps,
                               uint8_t *out)
{
    MFZ_PAGES_BODY(mfz_big_portable)
}

#if MFZ_HAVE_SSE2
static void mfz_pages_sse2(const uint8_t *base, const uint64_t *offs, size_t n, size_t ps,
                           uint8_t *out)
{
    MFZ_PAGES_BODY(mfz_big_sse2)
}
#endif

/*
 * No aligned-only variant for 64-byte aligned hosts: measured, skipping the
 * edge vectors there was no faster in L2 and 4% slower out of cache (the
 * early load of the page's last line helps the prefetchers).
 */
#if MFZ_X86_DISPATCH
__attribute__((target("avx2"))) static void mfz_pages_avx2(const uint8_t *base,
                                                           const uint64_t *offs, size_t n,
                                                           size_t ps, uint8_t *out)
{
    MFZ_PAGES_BODY(mfz_big_avx2)
}

__attribute__((target("avx512f"))) static void mfz_pages_avx512(const uint8_t *base,
                                                              const uint64_t *offs, size_t n,
                                                              size_t ps, uint8_t *out)
{
    MFZ_PAGES_BODY(mfz_big_avx512)
}
#endif

/* ------------------------------------------------------ offsets and flags */

/*
 * 1 when every offset is a multiple of align_mask + 1 and at most limit. One
 * pass without branches: the common case, a good batch, costs a fraction of a
 * nanosecond per offset; the caller looks for the culprit only on failure.
 */
static int mfz_offsets_ok(const uint64_t *offs, size_t n, uint64_t align_mask, uint64_t limit)
{
    uint64_t bits = 0;
    int over = 0;
    for (size_t i = 0; i < n; i++) {
        bits |= offs[i];
        over |= offs[i] > limit;
    }
    return (bits & align_mask) == 0 && !over;
}

static size_t mfz_count_nonzero(const uint8_t *flags, size_t n)
{
    size_t count = 0;
    for (size_t i = 0; i < n; i++) {
        count += flags[i] != 0;
    }
    return count;
}

/* ------------------------------------------------------ writing zero pages */

/*
 * The receiver zeroes pages that are not going to be read soon, and out of
 * cache a plain memset first reads every line it writes. Streaming stores
 * skip that read. They are weakly ordered: the caller runs mfz_store_fence
 * before it sets a receivedmap bit after them, and before it returns. One
 * fence per page instead halved the zeroing rate (measured, out of cache).
 */
static void mfz_zero_plain(uint8_t *p, size_t len)
{
    memset(p, 0, len);
}

/* Orders the zeroing stores before the stores that follow (receivedmap bits). */
static inline void mfz_store_fence(void)
{
#if MFZ_X86_DISPATCH || (defined(_MSC_VER) && defined(_M_X64))
    _mm_sfence();
#elif defined(__GNUC__)
    __atomic_thread_fence(__ATOMIC_RELEASE);
#endif
}

/*
 * Pages shorter than 1 KiB of whole lines take memset. The partial lines at
 * the edges may be shared with the neighbouring pages: plain stores there.
 * STORE_LINE(a) writes the 64 zero bytes at the aligned address a.
 */
#define MFZ_ZERO_STREAM_BODY(STORE_LINE)                                           \
    uint8_t *end = p + len;                                                        \
    uint8_t *a = (uint8_t *)mfz_align_up(p, 64);                                   \
    uint8_t *e = (uint8_t *)mfz_align_down(end, 64);                               \
    if (e - a < 1024) {                                                            \
        memset(p, 0, len);                                                         \
        return;                                                                    \
    }                                                                              \
    memset(p, 0, (size_t)(a - p));                                                 \
    for (; a < e; a += 64) {                                                       \
        STORE_LINE(a);                                                             \
    }                                                                              \
    memset(e, 0, (size_t)(end - e));

#if MFZ_HAVE_SSE2
#define MFZ_STREAM_LINE_SSE2(a)                                                    \
    do {                                                                           \
        const __m128i z_ = _mm_setzero_si128();                                    \
        _mm_stream_si128((__m128i *)(a), z_);                                      \
        _mm_stream_si128((__m128i *)((a) + 16), z_);                               \
        _mm_stream_si128((__m128i *)((a) + 32), z_);                               \
        _mm_stream_si128((__m128i *)((a) + 48), z_);                               \
    } while (0)

static void mfz_zero_stream_sse2(uint8_t *p, size_t len)
{
    MFZ_ZERO_STREAM_BODY(MFZ_STREAM_LINE_SSE2)
}
#endif

#if MFZ_X86_DISPATCH
#define MFZ_STREAM_LINE_AVX2(a)                                                    \
    do {                                                                           \
        const __m256i z_ = _mm256_setzero_si256();                                 \
        _mm256_stream_si256((__m256i *)(a), z_);                                   \
        _mm256_stream_si256((__m256i *)((a) + 32), z_);                            \
    } while (0)

/*
 * Wider streaming stores fill a line in fewer writes. Measured out of cache:
 * 12.1 GB/s with 16-byte stores, 17.1 with 32-byte ones, 17.2 with 64-byte
 * ones, so the AVX-512 path uses these too.
 */
__attribute__((target("avx2"))) static void mfz_zero_stream_avx2(uint8_t *p, size_t len)
{
    MFZ_ZERO_STREAM_BODY(MFZ_STREAM_LINE_AVX2)
}
#endif

/* ----------------------------------------------- the streaming-read limit */

/* OR of every byte, no early exit: what reading the memory costs at best. */
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
/* The fastest whole-buffer loop measured here: eight lines ORed per step. */
__attribute__((target("avx512f"))) static uint64_t mfz_read_all_avx512(const uint8_t *buf, size_t len)
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

/* --------------------------------------------------------- run-time choice */

typedef int (*mfz_big_fn)(const uint8_t *, size_t);

enum { MFZ_PORTABLE = 0, MFZ_SSE2 = 1, MFZ_AVX2 = 2, MFZ_AVX512 = 3, MFZ_NPATHS = 4 };

static const char *const mfz_path_names[MFZ_NPATHS] = {"portable", "sse2", "avx2", "avx512"};

static mfz_big_fn mfz_big = mfz_big_portable;
static mfz_pages_fn mfz_pages = mfz_pages_portable;
typedef void (*mfz_zero_fn)(uint8_t *, size_t);
static mfz_zero_fn mfz_zero_page = mfz_zero_plain;
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
    mfz_zero_page = mfz_zero_plain;
    switch (path) {
#if MFZ_HAVE_SSE2
    case MFZ_SSE2:
        mfz_big = mfz_big_sse2;
        mfz_pages = mfz_pages_sse2;
        mfz_zero_page = mfz_zero_stream_sse2;
        break;
#endif
#if MFZ_X86_DISPATCH
    case MFZ_AVX2:
        mfz_big = mfz_big_avx2;
        mfz_pages = mfz_pages_avx2;
        mfz_zero_page = mfz_zero_stream_avx2;
        break;
    case MFZ_AVX512:
        mfz_big = mfz_big_avx512;
        mfz_pages = mfz_pages_avx512;
        mfz_zero_page = mfz_zero_stream_avx2;
        break;
#endif
    default:
        mfz_big = mfz_big_portable;
        mfz_pages = mfz_pages_portable;
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
    if (!mfz_sampled_zero(buf, len)) {
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
