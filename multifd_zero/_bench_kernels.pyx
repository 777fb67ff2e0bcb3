# cython: language_level=3
"""Benchmark-only loops: the read and write limits that ``multifd-zero bench`` reports.

They are no part of the library's API and are kept out of ``_kernels`` so that
the kernels module holds only what the library runs.
"""

from cpython.buffer cimport (
    PyBUF_STRIDES,
    PyBuffer_IsContiguous,
    PyBuffer_Release,
    PyObject_CheckBuffer,
    PyObject_GetBuffer,
)
from libc.stdint cimport uint8_t, uint64_t


from multifd_zero._csrc cimport (
    MFZ_NPATHS,
    mfz_path,
    mfz_paths,
    mfz_store_fence,
)

from multifd_zero import _kernels


cdef int _get_bytes(object obj, Py_buffer *view, bint writable) except -1:
    """Acquire ``obj`` as C-contiguous bytes; the caller releases ``view``."""
    if not PyObject_CheckBuffer(obj):
        raise TypeError(f"buf must support the buffer protocol, not {type(obj).__name__}")
    PyObject_GetBuffer(obj, view, PyBUF_STRIDES)
    if not PyBuffer_IsContiguous(view, b'C') or (writable and view.readonly):
        PyBuffer_Release(view)
        raise ValueError(
            "buf is read-only, but this call writes into it" if writable and view.readonly
            else "buf must be C-contiguous"
        )
    return 0


cdef const mfz_path *_active_path() except NULL:
    """The path ``_kernels`` has active: this module has its own copy of the table."""
    name = _kernels.get_simd().encode()
    for p in range(MFZ_NPATHS):
        if mfz_paths[p].name == name:
            return &mfz_paths[p]
    raise RuntimeError(f"_kernels reports an unknown SIMD path {name!r}")


def _read_all(buf):
    """OR every byte of ``buf`` with no early exit: the benchmark's read limit.

    Parameters
    ----------
    buf : buffer
        C-contiguous, any length and alignment; read-only is fine.

    Returns
    -------
    int
        The OR of all the buffer's bytes, gathered in 64-bit words (0 if all zero).
    """
    cdef Py_buffer view
    cdef uint64_t r
    _get_bytes(buf, &view, False)
    with nogil:
        r = mfz_read_all(<const uint8_t *>view.buf, view.len)
    PyBuffer_Release(&view)
    return r


def _zero_all(buf):
    """Zero all of ``buf`` with the receiver's stores on the active path: the write limit.

    Parameters
    ----------
    buf : buffer
        C-contiguous and writable.
    """
    cdef Py_buffer view
    cdef const mfz_path *path = _active_path()
    _get_bytes(buf, &view, True)
    with nogil:
        path.zero_page(<uint8_t *>view.buf, view.len)
        mfz_store_fence()
    PyBuffer_Release(&view)


def _touch_heads(host, offsets, out):
    """Load the first byte of each page at ``offsets``: the floor of a batch loop.

    No argument is checked beyond what keeps the loop inside ``host``: it is a
    benchmark baseline, not an API.

    Parameters
    ----------
    host : buffer
        C-contiguous; read-only is fine.
    offsets : buffer
        C-contiguous ``uint64`` byte offsets, each less than ``len(host)``.
    out : buffer
        Writable, at least one byte per offset; byte ``i`` becomes 1 when the
        first byte of page ``i`` is zero.
    """
    cdef Py_buffer hv, ov, dv
    cdef Py_ssize_t n, i
    cdef const uint64_t *offs
    _get_bytes(host, &hv, False)
    try:
        _get_bytes(offsets, &ov, False)
        try:
            _get_bytes(out, &dv, True)
            try:
                n = ov.len // 8
                offs = <const uint64_t *>ov.buf
                if dv.len < n:
                    raise ValueError(f"out holds {dv.len} bytes, but there are {n} offsets")
                for i in range(n):
                    if offs[i] >= <uint64_t>hv.len:
                        raise ValueError(f"offsets[{i}] = {offs[i]} is outside host")
                with nogil:
                    mfz_touch_heads(<const uint8_t *>hv.buf, offs, n, <uint8_t *>dv.buf)
            finally:
                PyBuffer_Release(&dv)
        finally:
            PyBuffer_Release(&ov)
    finally:
        PyBuffer_Release(&hv)


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec *tp)
    enum:
        CLOCK_MONOTONIC


cdef inline double _now_ns() noexcept nogil:
    cdef timespec t
    clock_gettime(CLOCK_MONOTONIC, &t)
    return <double>t.tv_sec * 1e9 + <double>t.tv_nsec


def _busy(ns):
    """Spin for ``ns`` nanoseconds with the GIL released, doing nothing else.

    The benchmark's ceiling for threads: a call as long as a kernel's, with no
    work and no checks, shows what releasing and taking back the GIL alone
    leaves of two threads' speed-up.
    """
    cdef double end
    cdef double length = float(ns)
    with nogil:
        end = _now_ns() + length
        while _now_ns() < end:
            pass


def _read_known(host, offsets, page_size):
    """Read the pages at ``offsets`` eight side by side, nothing else: the zero pages'
    floor, when ``offsets`` lists exactly the zero pages of a region.

    Parameters
    ----------
    host : buffer
        C-contiguous; read-only is fine.
    offsets : buffer
        C-contiguous ``uint64`` byte offsets; each page must lie inside ``host``.
    page_size : int
        A multiple of 128.

    Returns
    -------
    int
        Bytes found zero from the start of each group (a checksum of the work).
    """
    cdef Py_buffer hv, ov
    cdef Py_ssize_t n, i
    cdef size_t ps = page_size, seen
    cdef const uint64_t *offs
    if ps < 128 or ps % 128:
        raise ValueError(f"page_size must be a multiple of 128, got {page_size}")
    _get_bytes(host, &hv, False)
    try:
        _get_bytes(offsets, &ov, False)
        try:
            n = ov.len // 8
            offs = <const uint64_t *>ov.buf
            for i in range(n):
                if offs[i] > <uint64_t>hv.len or <uint64_t>hv.len - offs[i] < ps:
                    raise ValueError(f"offsets[{i}] = {offs[i]}: the page leaves host")
            with nogil:
                seen = mfz_read_known(<const uint8_t *>hv.buf, offs, n, ps)
        finally:
            PyBuffer_Release(&ov)
    finally:
        PyBuffer_Release(&hv)
    return seen
