# cython: language_level=3
"""Declarations of the C kernels in csrc/, for the .pyx modules that call them."""

from libc.stdint cimport int64_t, uint8_t, uint64_t


cdef extern from "csrc/dispatch.h" nogil:
    ctypedef int (*mfz_big_fn)(const uint8_t *buf, size_t length) noexcept nogil
    ctypedef void (*mfz_pages_fn)(
        const uint8_t *base, const uint64_t *offs, size_t n, size_t ps, uint8_t *out
    ) noexcept nogil
    ctypedef void (*mfz_zero_fn)(uint8_t *p, size_t length) noexcept nogil

    ctypedef struct mfz_path:
        const char *name
        mfz_big_fn big
        mfz_pages_fn pages
        mfz_zero_fn zero_page

    enum:
        MFZ_NPATHS

    const mfz_path mfz_paths[]
    const mfz_path *mfz_path_now()
    int mfz_path_index(const mfz_path *path)
    int mfz_path_supported(int path)
    int mfz_select(int path)
    int mfz_best_path()
    int mfz_is_zero(const mfz_path *path, const uint8_t *buf, size_t length)

    int mfz_offsets_ok(const uint64_t *offs, size_t n, uint64_t align_mask, uint64_t limit)
    size_t mfz_count_nonzero(const uint8_t *flags, size_t n)

    int mfz_bit_test(const uint64_t *bitmap, uint64_t bit)
    int mfz_bit_set(uint64_t *bitmap, uint64_t bit)
    int mfz_bit_clear(uint64_t *bitmap, uint64_t bit)
    uint64_t mfz_popcount64(uint64_t v)

    void mfz_store_fence()



cdef extern from "csrc/partition.h" nogil:
    size_t mfz_replay(uint64_t *offs, uint8_t *zero, size_t n)


cdef extern from "csrc/file_guard.h" nogil:
    int mfz_guarded_pages(
        const mfz_path *path, const uint8_t *buf, size_t length, size_t ps, uint8_t *out
    )
    int mfz_punch_hole(int fd, int64_t offset, int64_t length)
    int mfz_write_data_runs(
        int fd, const uint8_t *buf, size_t length, size_t ps, const uint8_t *zero,
        int64_t file_offset, uint64_t *written
    )
    int mfz_punch_zero_runs(
        int fd, size_t length, size_t ps, const uint8_t *zero, int64_t file_offset,
        uint64_t *punched
    )
