# cython: language_level=3
"""Declarations of the benchmark-only C loops, for _bench_kernels.pyx alone."""

from libc.stdint cimport uint8_t, uint64_t


cdef extern from "csrc/read_limit.h" nogil:
    uint64_t mfz_read_all(const uint8_t *buf, size_t length)
    size_t mfz_read_known(const uint8_t *base, const uint64_t *offs, size_t n, size_t ps)
    void mfz_touch_heads(const uint8_t *base, const uint64_t *offs, size_t n, uint8_t *out)
