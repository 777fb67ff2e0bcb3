/* Checks over a batch's offsets and its per-page results. */
#ifndef MFZ_OFFSETS_H
#define MFZ_OFFSETS_H

#include "platform.h"

/*
 * 1 when every offset is a multiple of align_mask + 1 and at most limit. One
 * pass without branches: a good batch, the common case, costs a fraction of
 * a nanosecond per offset; the caller looks for the culprit only on failure.
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

#endif /* MFZ_OFFSETS_H */
