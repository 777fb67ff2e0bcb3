/*
 * QEMU's order of a batch's offsets after zero-page detection.
 *
 * multifd_send_zero_page_detect (migration/multifd-zero-page.c) walks the
 * offsets with i from the front and j from the back: a normal page at i
 * advances i; a zero page at i is swapped with offset j (swap_page_offset,
 * which does nothing when i == j) and j retreats. Normal pages end on the
 * left, zero pages on the right, in an order that depends on the swaps.
 *
 * The batch loop (batch.h) tests every page first, in its own order;
 * mfz_replay then replays QEMU's pass from those results, carrying each
 * result with its offset, so that the final order is QEMU's element for
 * element and every page is still read once.
 */
#ifndef MFZ_PARTITION_H
#define MFZ_PARTITION_H

#include "offsets.h"

/*
 * Reorder offs[0, n) as QEMU's pass would, given zero[k] = 1 when page k is
 * all zero (zero is reordered with it). Returns QEMU's normal_num.
 */
static size_t mfz_replay(uint64_t *offs, uint8_t *zero, size_t n)
{
    size_t zeros = mfz_count_nonzero(zero, n);
    if (zeros == 0) {
        return n;
    }
    if (zeros == n) {
        /* Every page zero: offset 0 is swapped with each offset j from the
         * back in turn, so the order rotates left by one. */
        uint64_t first = offs[0];
        memmove(offs, offs + 1, (n - 1) * sizeof *offs);
        offs[n - 1] = first;
        return 0;
    }
    /* Signed: j passes below 0 when the last zero page is at the front. */
    ptrdiff_t i = 0, j = (ptrdiff_t)n - 1;
    while (i <= j) {
        if (!zero[i]) {
            i++;
            continue;
        }
        if (i != j) {
            uint64_t off = offs[i];
            offs[i] = offs[j];
            offs[j] = off;
            uint8_t z = zero[i];
            zero[i] = zero[j];
            zero[j] = z;
        }
        j--;
    }
    return (size_t)i;
}

#endif /* MFZ_PARTITION_H */
