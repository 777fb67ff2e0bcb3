/*
 * The receivedmap's bits: one per page, least significant bit first. Channels
 * on other threads set neighbouring bits of the same word, so every change is
 * an atomic read-modify-write.
 */
#ifndef MFZ_BITMAP_H
#define MFZ_BITMAP_H

#include "platform.h"

static inline int mfz_bit_test(const uint64_t *map, uint64_t bit)
{
    return (int)((__atomic_load_n(&map[bit >> 6], __ATOMIC_RELAXED) >> (bit & 63)) & 1);
}

static inline int mfz_bit_set(uint64_t *map, uint64_t bit)
{
    uint64_t mask = (uint64_t)1 << (bit & 63);
    return (__atomic_fetch_or(&map[bit >> 6], mask, __ATOMIC_SEQ_CST) & mask) != 0;
}

static inline int mfz_bit_clear(uint64_t *map, uint64_t bit)
{
    uint64_t mask = (uint64_t)1 << (bit & 63);
    return (__atomic_fetch_and(&map[bit >> 6], ~mask, __ATOMIC_SEQ_CST) & mask) != 0;
}

static inline uint64_t mfz_popcount64(uint64_t v)
{
    return (uint64_t)__builtin_popcountll(v);
}

#endif /* MFZ_BITMAP_H */
