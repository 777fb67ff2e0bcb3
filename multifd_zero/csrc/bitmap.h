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
#if defined(_MSC_VER)
    return (int)((((volatile const uint64_t *)map)[bit >> 6] >> (bit & 63)) & 1);
#else
    return (int)((__atomic_load_n(&map[bit >> 6], __ATOMIC_RELAXED) >> (bit & 63)) & 1);
#endif
}

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

#endif /* MFZ_BITMAP_H */
