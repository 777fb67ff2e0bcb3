/*
 * Writing zero pages on the receiver.
 *
 * The receiver zeroes pages that are not going to be read soon, and out of
 * cache a plain memset first reads every line it writes. Streaming stores
 * skip that read. They are weakly ordered: the caller runs mfz_store_fence
 * before it sets a receivedmap bit after them, and before it returns; one
 * fence per page instead would halve the zeroing rate out of cache.
 */
#ifndef MFZ_ZERO_STORE_H
#define MFZ_ZERO_STORE_H

#include "platform.h"

typedef void (*mfz_zero_fn)(uint8_t *p, size_t len);

/* Writes the 64 zero bytes of the aligned line at a. */
typedef void (*mfz_line_fn)(uint8_t *a);

static void mfz_zero_plain(uint8_t *p, size_t len)
{
    memset(p, 0, len);
}

/* Orders the zeroing stores before the stores that follow (receivedmap bits). */
static inline void mfz_store_fence(void)
{
#if MFZ_HAVE_SSE2
    _mm_sfence();
#else
    __atomic_thread_fence(__ATOMIC_RELEASE);
#endif
}

/*
 * Pages shorter than 1 KiB of whole lines take memset. The partial lines at
 * the edges may be shared with the neighbouring pages: plain stores there.
 */
static MFZ_ALWAYS_INLINE void mfz_zero_stream_with(mfz_line_fn store_line, uint8_t *p,
                                                   size_t len)
{
    uint8_t *end = p + len;
    uint8_t *a = (uint8_t *)mfz_align_up(p, 64);
    uint8_t *e = (uint8_t *)mfz_align_down(end, 64);
    if (e - a < 1024) {
        memset(p, 0, len);
        return;
    }
    memset(p, 0, (size_t)(a - p));
    for (; a < e; a += 64) {
        store_line(a);
    }
    memset(e, 0, (size_t)(end - e));
}

#if MFZ_HAVE_SSE2
static MFZ_ALWAYS_INLINE void mfz_stream_line_sse2(uint8_t *a)
{
    const __m128i z = _mm_setzero_si128();
    _mm_stream_si128((__m128i *)a, z);
    _mm_stream_si128((__m128i *)(a + 16), z);
    _mm_stream_si128((__m128i *)(a + 32), z);
    _mm_stream_si128((__m128i *)(a + 48), z);
}

static void mfz_zero_stream_sse2(uint8_t *p, size_t len)
{
    mfz_zero_stream_with(mfz_stream_line_sse2, p, len);
}
#endif

#if MFZ_X86_DISPATCH
MFZ_TARGET("avx2") static MFZ_ALWAYS_INLINE void mfz_stream_line_avx2(uint8_t *a)
{
    const __m256i z = _mm256_setzero_si256();
    _mm256_stream_si256((__m256i *)a, z);
    _mm256_stream_si256((__m256i *)(a + 32), z);
}

/*
 * Wider streaming stores fill a line in fewer writes; 64-byte ones gain
 * nothing over these (docs/design.rst), so the AVX-512 path uses
 * these too.
 */
MFZ_TARGET("avx2") static void mfz_zero_stream_avx2(uint8_t *p, size_t len)
{
    mfz_zero_stream_with(mfz_stream_line_avx2, p, len);
}
#endif

#endif /* MFZ_ZERO_STORE_H */
