# cython: language_level=3
"""Compiled kernels: zero checks, the batch partition and the receiver's page writes.

Every function validates all of its arguments (types, writability, page size,
every offset) while holding the GIL, copies the offsets it will use, and only
then releases the GIL to scan or write. A bad argument therefore raises before
any byte, bit or offset has changed.

Each kernel has the same shape: acquire and check its buffers through one
``_Call`` (see "the buffer driver" below), run the C kernel from csrc/ with
the GIL released, and release everything in one ``finally``.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.buffer cimport (
    PyBUF_FORMAT,
    PyBUF_STRIDES,
    PyBUF_WRITABLE,
    PyBuffer_IsContiguous,
    PyBuffer_Release,
    PyObject_CheckBuffer,
    PyObject_GetBuffer,
)
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from multifd_zero._csrc cimport (
    MFZ_NPATHS,
    mfz_best_path,
    mfz_bit_clear,
    mfz_bit_set,
    mfz_bit_test,
    mfz_guarded_pages,
    mfz_is_zero,
    mfz_offsets_ok,
    mfz_path,
    mfz_path_now,
    mfz_path_supported,
    mfz_paths,
    mfz_popcount64,
    mfz_punch_hole,
    mfz_punch_zero_runs,
    mfz_replay,
    mfz_select,
    mfz_store_fence,
    mfz_write_data_runs,
)

import operator
import os

import numpy as np

MIN_PAGE_SIZE = 1024
MAX_PAGE_SIZE = 2 * 1024 * 1024

# The write modes of the receiver's zero-page kernel.
cdef enum:
    _IF_RECEIVED = 0   # multifd precopy: a page seen before is zeroed, a new one is not touched
    _ALWAYS = 1        # postcopy-ram: every zero page is written (QEMU 10.1)
    _IF_NONZERO = 2    # legacy stream (ram_handle_zero): read first, write only if not zero
    _IF_RECEIVED_OR_NONZERO = 3  # multifd precopy into memory not known to be zero

ZERO_IF_RECEIVED = _IF_RECEIVED
ZERO_ALWAYS = _ALWAYS
ZERO_IF_NONZERO = _IF_NONZERO
ZERO_IF_RECEIVED_OR_NONZERO = _IF_RECEIVED_OR_NONZERO

# Rows of no offsets partition_batches accepts: its answer (8 bytes a row) stays
# small when the input holds nothing.
_MAX_EMPTY_ROWS = 1 << 16


# ----------------------------------------------------------------- validation

cdef object _as_int(object value, str name):
    """``operator.index`` with a clear message; bools are refused."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None


cdef enum:
    # Buffers shorter than this are checked with the GIL held: releasing and
    # taking it back would cost more than the check.
    _NOGIL_BYTES = 65536
    _MIN_PS = 1024
    _MAX_PS = 2 * 1024 * 1024


cdef Py_ssize_t _check_page_size(object page_size) except -1:
    cdef Py_ssize_t ps = 0
    if type(page_size) is not int:
        page_size = _as_int(page_size, "page_size")
    # Compared as a C integer: this runs on every kernel call.
    try:
        ps = page_size
    except OverflowError:
        ps = 0
    if ps < _MIN_PS or ps > _MAX_PS or ps & (ps - 1):
        raise ValueError(
            f"page_size must be a power of two from {MIN_PAGE_SIZE} to {MAX_PAGE_SIZE}, "
            f"got {page_size}"
        )
    return ps


cdef int _page_shift(Py_ssize_t ps) noexcept:
    cdef int shift = 0
    while (<Py_ssize_t>1 << shift) < ps:
        shift += 1
    return shift


# --------------------------------------------------------- the buffer driver

# What a call needs of one buffer: flags for _Call.acquire.
cdef enum:
    _READ = 0       # C-contiguous, any item type, read-only is fine
    _WRITE = 1      # ... and writable
    _U64 = 2        # native uint64 items, 1-D
    _U64_2D = 4     # native uint64 items, 2-D

# Batches up to this many pages (a whole multifd packet of 1 KiB pages) are
# worked on in the call's own arrays: malloc and free cost more than a small
# batch's bookkeeping.
cdef enum:
    _SMALL_BATCH = 512
    _MAX_BUFFERS = 4


cdef struct _Call:
    # The buffers acquired so far, released in reverse order by _end.
    Py_buffer views[_MAX_BUFFERS]
    int held
    # The private copy of the offsets and the per-page flags: the small arrays
    # below, or malloc'd memory that _end frees.
    uint64_t *work
    uint8_t *flags
    uint64_t small_work[_SMALL_BATCH]
    uint8_t small_flags[_SMALL_BATCH]
    # The caller's offsets (see _take_offsets): their count and shape, and
    # where they live: in a buffer the call holds, or in an ndarray read
    # directly (then `direct` is its data pointer, checked again before any
    # write back).
    Py_ssize_t n
    Py_ssize_t rows
    Py_ssize_t cols
    uint64_t *source
    uint64_t *direct


cdef inline void _begin(_Call *c) noexcept:
    c.held = 0
    c.work = NULL
    c.flags = NULL
    c.source = NULL
    c.direct = NULL


cdef void _end(_Call *c) noexcept:
    """Release every buffer and free every array of the call; safe after any failure."""
    while c.held > 0:
        c.held -= 1
        PyBuffer_Release(&c.views[c.held])
    if c.work != c.small_work:
        free(c.work)
    if c.flags != c.small_flags:
        free(c.flags)
    c.work = NULL
    c.flags = NULL


cdef bint _little_endian() noexcept:
    cdef uint64_t one = 1
    return (<uint8_t *>&one)[0] == 1


cdef bint _is_u64_format(const char *fmt) noexcept:
    if fmt == NULL:
        return False
    if fmt[0] == b'@' or fmt[0] == b'=' or fmt[0] == b'<':
        if fmt[0] != b'@' and not _little_endian():
            return False
        fmt += 1
    return (fmt[0] == b'Q' or (fmt[0] == b'L' and sizeof(long) == 8)) and fmt[1] == 0


cdef int _check_view(const Py_buffer *view, int need, str name) except -1:
    """Raise unless ``view`` meets ``need``: TypeError for the item type, ValueError otherwise."""
    cdef int ndim
    if need & (_U64 | _U64_2D):
        if view.itemsize != 8 or not _is_u64_format(view.format):
            fmt = (<bytes>view.format).decode("ascii", "replace") if view.format else "B"
            raise TypeError(f"{name} must hold uint64 items, got format {fmt!r}")
        ndim = 2 if need & _U64_2D else 1
        if view.ndim != ndim:
            raise ValueError(f"{name} must be {ndim}-D, got {view.ndim} dimensions")
        if not PyBuffer_IsContiguous(view, b'C'):
            raise ValueError(f"{name} must be contiguous")
    elif not PyBuffer_IsContiguous(view, b'C'):
        raise ValueError(f"{name} must be C-contiguous")
    if need & _WRITE and view.readonly:
        raise ValueError(f"{name} is read-only, but this call writes into it")
    return 0


cdef Py_buffer *_acquire(_Call *c, object obj, int need, str name) except NULL:
    """Acquire ``obj`` for the call and check it against ``need``.

    The buffer belongs to the call as soon as it is acquired, so ``_end``
    releases it whether the check below passes or raises.
    """
    cdef Py_buffer *view = &c.views[c.held]
    cdef bint u64 = (need & (_U64 | _U64_2D)) != 0
    if not PyObject_CheckBuffer(obj):
        if u64:
            raise TypeError(
                f"{name} must be a 1-D numpy.uint64 array (or another buffer of uint64), "
                f"not {type(obj).__name__}"
            )
        raise TypeError(
            f"{name} must support the buffer protocol (bytes, bytearray, memoryview, "
            f"mmap, numpy array), not {type(obj).__name__}"
        )
    PyObject_GetBuffer(obj, view, PyBUF_STRIDES | PyBUF_FORMAT if u64 else PyBUF_STRIDES)
    c.held += 1
    _check_view(view, need, name)
    return view


cdef int _check_offsets(
    const uint64_t *offs, Py_ssize_t n, Py_ssize_t host_len, Py_ssize_t page_size, str name
) except -1:
    """Raise ValueError at the first offset that is misaligned or whose page leaves the host."""
    cdef Py_ssize_t i
    cdef uint64_t off
    cdef uint64_t limit = <uint64_t>(host_len - page_size) if host_len >= page_size else 0
    if n == 0 or (host_len >= page_size and mfz_offsets_ok(offs, n, page_size - 1, limit)):
        return 0
    # Something is wrong: find the first bad offset for the message.
    for i in range(n):
        off = offs[i]
        if off & <uint64_t>(page_size - 1):
            raise ValueError(
                f"{name}[{i}] = {off} is not a multiple of page_size {page_size}"
            )
        if host_len < page_size or off > limit:
            raise ValueError(
                f"{name}[{i}] = {off} is out of range: the page would end at "
                f"{int(off) + page_size}, past the {host_len} bytes of the block"
            )
    return 0


# numpy's arrays, read without a buffer request: requesting a buffer of an
# ndarray costs about 70 ns, as much as the rest of a one-batch call. Only
# offsets are read this way, and only while the GIL is held (they are copied
# into the call's work array): memory read or written without the GIL is
# always held through the buffer protocol, so that nobody can resize or free
# it meanwhile.
cdef extern from *:
    """
    /* The head of numpy's PyArrayObject_fields (numpy/ndarraytypes.h), the
     * same from numpy 1.7 to 2.x; checked against the buffer protocol at
     * import, and not used if it does not match. */
    typedef struct {
        PyObject_HEAD
        char *data;
        int nd;
        Py_ssize_t *dimensions;
        Py_ssize_t *strides;
        PyObject *base;
        PyObject *descr;
        int flags;
    } mfz_ndarray;
    enum { MFZ_NPY_C_CONTIGUOUS = 0x0001, MFZ_NPY_WRITEABLE = 0x0400 };
    """
    ctypedef struct mfz_ndarray:
        char *data
        int nd
        Py_ssize_t *dimensions
        void *descr
        int flags
    enum:
        MFZ_NPY_C_CONTIGUOUS
        MFZ_NPY_WRITEABLE


cdef object _NDARRAY = np.ndarray
cdef object _U64_DTYPE = np.dtype(np.uint64)
cdef bint _direct_ok = False


cdef inline uint64_t *_direct_u64(object obj, int ndim, bint writable) noexcept:
    """The data of an exact, C-contiguous, native uint64 ndarray of ``ndim``
    dimensions (writable if asked), or NULL for anything else."""
    cdef mfz_ndarray *a
    if not _direct_ok or type(obj) is not _NDARRAY:
        return NULL
    a = <mfz_ndarray *><void *>obj
    if a.descr != <void *>_U64_DTYPE or a.nd != ndim:
        return NULL
    if not (a.flags & MFZ_NPY_C_CONTIGUOUS) or (writable and not (a.flags & MFZ_NPY_WRITEABLE)):
        return NULL
    return <uint64_t *>a.data


cdef bint _probe_direct():
    """Whether _direct_u64 reads this numpy's arrays right, compared with their buffers."""
    global _direct_ok
    cdef Py_buffer view
    cdef mfz_ndarray *a
    _direct_ok = True
    try:
        for arr in (np.arange(6, dtype=np.uint64), np.arange(6, dtype=np.uint64).reshape(2, 3)):
            PyObject_GetBuffer(arr, &view, PyBUF_STRIDES)
            try:
                a = <mfz_ndarray *><void *>arr
                if (
                    _direct_u64(arr, arr.ndim, True) != <uint64_t *>view.buf
                    or a.dimensions[0] != arr.shape[0]
                    or a.dimensions[arr.ndim - 1] != arr.shape[arr.ndim - 1]
                ):
                    _direct_ok = False
            finally:
                PyBuffer_Release(&view)
        if _direct_u64(np.arange(6, dtype=np.uint64)[::2], 1, False) != NULL:
            _direct_ok = False
        ro = np.arange(6, dtype=np.uint64)
        ro.flags.writeable = False
        if _direct_u64(ro, 1, True) != NULL or _direct_u64(ro, 1, False) == NULL:
            _direct_ok = False
    except Exception:
        _direct_ok = False
    return _direct_ok


def _reads_ndarrays_directly():
    """Whether offsets in numpy arrays are read without a buffer request (the import probe)."""
    return _direct_ok


cdef uint64_t *_take_offsets(
    _Call *c, object obj, int need, str name, Py_ssize_t host_len, Py_ssize_t page_size
) except NULL:
    """Copy and check every offset into the call's work array; the copy is what the kernels use.

    ``need`` is ``_U64`` or ``_U64_2D``, with ``_WRITE`` when the call writes
    the offsets back (:func:`_put_offsets`). Working on a private copy means
    another thread that rewrites the caller's array cannot make a kernel read
    or write outside the host buffer. Sets ``c.n``, ``c.rows`` and ``c.cols``.
    """
    cdef int ndim = 2 if need & _U64_2D else 1
    cdef Py_buffer *ov
    cdef mfz_ndarray *a
    cdef uint64_t *src = _direct_u64(obj, ndim, (need & _WRITE) != 0)
    if src != NULL:
        a = <mfz_ndarray *><void *>obj
        c.rows = a.dimensions[0]
        c.cols = a.dimensions[1] if ndim == 2 else 1
        c.direct = src
    else:
        ov = _acquire(c, obj, need, name)
        src = <uint64_t *>ov.buf
        c.rows = ov.shape[0] if ndim == 2 else ov.len // 8
        c.cols = ov.shape[1] if ndim == 2 else 1
    c.source = src
    c.n = c.rows * c.cols
    if c.n <= _SMALL_BATCH:
        c.work = c.small_work
    else:
        c.work = <uint64_t *>malloc(c.n * 8)
        if c.work == NULL:
            raise MemoryError()
    memcpy(c.work, src, c.n * 8)
    _check_offsets(c.work, c.n, host_len, page_size, name)
    return c.work


cdef int _put_offsets(_Call *c, object obj, int ndim, str name) except -1:
    """Write the work array back over the caller's offsets (the GIL held)."""
    cdef mfz_ndarray *a = <mfz_ndarray *><void *>obj
    if c.direct != NULL:
        # Read without a buffer request, the array may have been resized or
        # reshaped by another thread meanwhile: write only into the same memory.
        if (
            _direct_u64(obj, ndim, True) != c.direct
            or a.dimensions[0] != c.rows
            or (ndim == 2 and a.dimensions[1] != c.cols)
        ):
            raise ValueError(f"{name} was resized while the call ran; its new order is lost")
    memcpy(c.source, c.work, c.n * 8)
    return 0


cdef uint8_t *_page_flags(_Call *c, Py_ssize_t n) except NULL:
    """The call's array of one flag per page."""
    if n <= _SMALL_BATCH:
        c.flags = c.small_flags
    else:
        c.flags = <uint8_t *>malloc(n)
        if c.flags == NULL:
            raise MemoryError()
    return c.flags


cdef int _check_bitmap(const Py_buffer *bitmap, Py_ssize_t host_len, Py_ssize_t page_size) except -1:
    cdef Py_ssize_t pages = host_len // page_size
    cdef Py_ssize_t words = (pages + 63) // 64
    if bitmap.len // 8 < words:
        raise ValueError(
            f"receivedmap has {bitmap.len // 8} words, but the host's {pages} pages "
            f"need {words}"
        )
    return 0


cdef object _BOOL = np.dtype(np.bool_)
cdef uint8_t _EMPTY_BYTE = 0


cdef uint8_t *_array_data(object arr) except NULL:
    """The data of a new, contiguous numpy array we just made."""
    cdef Py_buffer view
    cdef uint8_t *data
    PyObject_GetBuffer(arr, &view, PyBUF_WRITABLE)
    data = <uint8_t *>view.buf
    # The array outlives this call and keeps the memory; the view is not needed.
    PyBuffer_Release(&view)
    if data == NULL:
        data = <uint8_t *>&_EMPTY_BYTE
    return data


def check_offsets(offsets, used_length, page_size=4096, name="offsets"):
    """Raise ``ValueError`` unless every offset is a page of a block of ``used_length`` bytes.

    Parameters
    ----------
    offsets : numpy.ndarray
        Contiguous 1-D ``uint64`` byte offsets.
    used_length : int
        Bytes in the block.
    page_size : int, default 4096
    name : str, default "offsets"
        What the error message calls the array.

    Raises
    ------
    TypeError
        ``offsets`` is not a 1-D uint64 buffer.
    ValueError
        An offset is not a multiple of ``page_size``, or its page does not
        end inside the block.
    """
    cdef Py_ssize_t ps = _check_page_size(page_size)
    cdef Py_ssize_t length = _as_int(used_length, "used_length")
    cdef _Call c
    cdef Py_buffer *ov
    if length < 0:
        raise ValueError(f"used_length must not be negative, got {length}")
    _begin(&c)
    try:
        ov = _acquire(&c, offsets, _U64, name)
        _check_offsets(<const uint64_t *>ov.buf, ov.len // 8, length, ps, name)
    finally:
        _end(&c)


def check_page_size(page_size):
    """Return ``page_size`` as an int if it is a power of two from 1 KiB to 2 MiB.

    Raises
    ------
    TypeError
        Not an integer.
    ValueError
        Out of range or not a power of two.
    """
    return _check_page_size(page_size)


# -------------------------------------------------------------- zero checks

@cython.binding(False)
@cython.always_allow_keywords(False)
@cython.embedsignature(False)
def is_zero(buf, /):
    # A plain builtin taking one argument (METH_O), not a Cython function object:
    # its call costs about 10 ns less, which is a third of a one-page check. The
    # first lines of the docstring give inspect.signature what it needs.
    """is_zero(buf, /)\n--\n\nReturn True if every byte of ``buf`` is zero (QEMU's ``buffer_is_zero``).

    Parameters
    ----------
    buf : buffer
        Any C-contiguous object with the buffer protocol, of any length
        (including 0), any item type and any start alignment. Read-only is fine.

    Returns
    -------
    bool

    Raises
    ------
    TypeError
        ``buf`` does not support the buffer protocol.
    ValueError
        ``buf`` is not C-contiguous.

    Examples
    --------
    >>> from multifd_zero import is_zero
    >>> is_zero(bytes(4096)), is_zero(b"\\0" * 4095 + b"\\1"), is_zero(b"")
    (True, False, True)
    """
    cdef const mfz_path *path = mfz_path_now()
    cdef _Call c
    cdef Py_buffer *view
    cdef int result
    cdef const uint8_t *data
    cdef Py_ssize_t length
    if type(buf) is bytes:
        # Immutable and kept alive by this call's reference: no buffer request,
        # which would cost more than checking a small page.
        data = <const uint8_t *>PyBytes_AS_STRING(buf)
        length = PyBytes_GET_SIZE(buf)
        if length < _NOGIL_BYTES:
            return mfz_is_zero(path, data, length) != 0
        with nogil:
            result = mfz_is_zero(path, data, length)
        return result != 0
    _begin(&c)
    try:
        view = _acquire(&c, buf, _READ, "buf")
        if view.len < _NOGIL_BYTES:
            result = mfz_is_zero(path, <const uint8_t *>view.buf, view.len)
        else:
            with nogil:
                result = mfz_is_zero(path, <const uint8_t *>view.buf, view.len)
    finally:
        _end(&c)
    return result != 0


def zero_page_mask(buf, page_size=4096):
    """Return one bool per page of ``buf``: True where the page is all zero.

    Parameters
    ----------
    buf : buffer
        C-contiguous buffer whose length in bytes is a multiple of ``page_size``.
        Read-only is fine.
    page_size : int, default 4096
        A power of two from 1 KiB to 2 MiB.

    Returns
    -------
    numpy.ndarray
        ``bool`` array of ``len(buf) // page_size`` entries.

    Examples
    --------
    >>> from multifd_zero import zero_page_mask
    >>> zero_page_mask(bytes(4096) + b"\\1" * 4096 + bytes(4096)).tolist()
    [True, False, True]
    """
    cdef const mfz_path *path = mfz_path_now()
    cdef Py_ssize_t ps = _check_page_size(page_size)
    cdef _Call c
    cdef Py_buffer *view
    cdef Py_ssize_t n
    cdef uint8_t *out
    _begin(&c)
    try:
        view = _acquire(&c, buf, _READ, "buf")
        if view.len % ps:
            raise ValueError(
                f"the length of buf ({view.len} bytes) is not a multiple of "
                f"page_size {ps}"
            )
        n = view.len // ps
        mask = np.empty(n, dtype=_BOOL)
        out = _array_data(mask)
        with nogil:
            path.pages(<const uint8_t *>view.buf, NULL, n, ps, out)
    finally:
        _end(&c)
    return mask


def mapped_page_mask(buf, page_size=4096):
    """Return one bool per page of a mapped file window, or None if the file shrank.

    Like :func:`zero_page_mask`, but the length need not be a multiple of
    ``page_size`` (the last page may be partial, checked on its bytes), and
    the check runs with a SIGBUS guard: touching a page that a truncation
    removed from under the mapping returns None instead of ending the process.

    Parameters
    ----------
    buf : buffer
        C-contiguous, typically a memoryview of an ``mmap`` of a file.
    page_size : int, default 4096
        A power of two from 1 KiB to 2 MiB.

    Returns
    -------
    numpy.ndarray or None
        ``bool`` array of ``ceil(len(buf) / page_size)`` entries; None when
        the mapped file shrank during the check.

    Examples
    --------
    >>> mapped_page_mask(bytes(4096) + b"\\1").tolist()
    [True, False]
    """
    cdef const mfz_path *path = mfz_path_now()
    cdef Py_ssize_t ps = _check_page_size(page_size)
    cdef _Call c
    cdef Py_buffer *view
    cdef Py_ssize_t n
    cdef uint8_t *out
    cdef int failed = 0
    _begin(&c)
    try:
        view = _acquire(&c, buf, _READ, "buf")
        n = (view.len + ps - 1) // ps
        mask = np.empty(n, dtype=_BOOL)
        out = _array_data(mask)
        with nogil:
            failed = mfz_guarded_pages(path, <const uint8_t *>view.buf, view.len, ps, out)
    finally:
        _end(&c)
    return None if failed else mask


def punch_hole(fd, offset, length):
    """Deallocate ``length`` bytes of the file ``fd`` from ``offset``; its size stays.

    ``fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset,
    length)``, with the GIL released: the range reads as zeros afterwards and
    its blocks are freed (a partial block at either end is zeroed instead).

    Parameters
    ----------
    fd : int
        A file descriptor open for writing.
    offset, length : int
        Bytes, at least 0 (a length of 0 does nothing).

    Raises
    ------
    OSError
        The file system cannot punch holes (``EOPNOTSUPP``), ``fd`` is not
        open for writing (``EBADF``), or the platform has no ``fallocate``
        (``ENOSYS``, not Linux).
    TypeError, ValueError
        A non-int or negative argument.
    """
    cdef int cfd
    cdef int64_t off, n
    cdef int err = 0
    for name, value, high in (("fd", fd, 2**31 - 1), ("offset", offset, 2**63 - 1),
                              ("length", length, 2**63 - 1)):
        if not 0 <= _as_int(value, name) <= high:
            raise ValueError(f"{name} must be from 0 to {high}, got {value}")
    cfd, off, n = operator.index(fd), operator.index(offset), operator.index(length)
    if n == 0:
        return
    with nogil:
        err = mfz_punch_hole(cfd, off, n)
    if err:
        raise OSError(err, os.strerror(err))


cdef int64_t _file_offset(object value, str name) except -1:
    if not 0 <= _as_int(value, name) <= 2**63 - 1:
        raise ValueError(f"{name} must be from 0 to {2**63 - 1}, got {value}")
    return operator.index(value)


cdef int _file_descriptor(object fd) except -1:
    if not 0 <= _as_int(fd, "fd") <= 2**31 - 1:
        raise ValueError(f"fd must be from 0 to {2**31 - 1}, got {fd}")
    return operator.index(fd)


cdef const uint8_t *_window_flags(object mask, Py_ssize_t length, Py_ssize_t ps) except NULL:
    """The bool mask's data, checked to hold one flag per page of ``length`` bytes."""
    if not isinstance(mask, np.ndarray) or mask.dtype != _BOOL or mask.ndim != 1:
        raise TypeError("mask must be a 1-D numpy bool array (from mapped_page_mask)")
    if mask.shape[0] != (length + ps - 1) // ps:
        raise ValueError(
            f"mask has {mask.shape[0]} flags, not one per page of {length} bytes "
            f"({(length + ps - 1) // ps})"
        )
    if not mask.flags.c_contiguous:
        raise ValueError("mask must be C-contiguous")
    if mask.shape[0] == 0:
        return &_EMPTY_BYTE
    return _array_data(mask)


def write_data_pages(fd, buf, mask, page_size=4096, file_offset=0):
    """``pwrite`` each run of data pages of ``buf`` to ``fd``; return the bytes written.

    One ``pwrite`` per run of pages whose ``mask`` flag is False, at
    ``file_offset`` plus the run's offset in ``buf``; zero pages are skipped
    (they stay holes in a file truncated to its size first). The loop runs in
    C without the GIL: a sparse copy makes a call per run, and there can be
    one every other page.

    Parameters
    ----------
    fd : int
        The destination, open for writing.
    buf : buffer
        The window of the source (a memoryview of an ``mmap``), any length.
    mask : numpy.ndarray
        ``bool``, one flag per page of ``buf`` (the last page may be partial),
        True for a zero page: what :func:`mapped_page_mask` returned.
    page_size : int, default 4096
    file_offset : int, default 0
        Where ``buf`` starts in the destination.

    Raises
    ------
    OSError
        A write failed; ``EFAULT`` when ``buf`` maps a file that shrank.
    TypeError, ValueError
        Bad arguments, or a mask of the wrong length.
    """
    cdef Py_ssize_t ps = _check_page_size(page_size)
    cdef int cfd = _file_descriptor(fd)
    cdef int64_t at = _file_offset(file_offset, "file_offset")
    cdef _Call c
    cdef Py_buffer *view
    cdef const uint8_t *flags
    cdef uint64_t written = 0
    cdef int err = 0
    _begin(&c)
    try:
        view = _acquire(&c, buf, _READ, "buf")
        flags = _window_flags(mask, view.len, ps)
        with nogil:
            err = mfz_write_data_runs(
                cfd, <const uint8_t *>view.buf, view.len, ps, flags, at, &written
            )
    finally:
        _end(&c)
    if err:
        raise OSError(err, os.strerror(err))
    return written


def punch_zero_pages(fd, mask, length, page_size=4096, file_offset=0):
    """Punch a hole in ``fd`` for each run of zero pages; return the holes punched.

    One :func:`punch_hole` per run of pages whose ``mask`` flag is True, in a
    window of ``length`` bytes at ``file_offset``, in C without the GIL.

    Raises
    ------
    OSError
        As :func:`punch_hole` (``EOPNOTSUPP`` where the file system has no holes).
    TypeError, ValueError
        Bad arguments, or a mask of the wrong length.
    """
    cdef Py_ssize_t ps = _check_page_size(page_size)
    cdef int cfd = _file_descriptor(fd)
    cdef int64_t at = _file_offset(file_offset, "file_offset")
    cdef int64_t n = _file_offset(length, "length")
    cdef const uint8_t *flags = _window_flags(mask, n, ps)
    cdef uint64_t punched = 0
    cdef int err = 0
    with nogil:
        err = mfz_punch_zero_runs(cfd, n, ps, flags, at, &punched)
    if err:
        raise OSError(err, os.strerror(err))
    return punched


# ------------------------------------------------------------ the source side

def partition_zero_pages(host, offsets, page_size=4096, name="offsets"):
    """Move normal pages left and zero pages right, exactly as QEMU does.

    This is the two-pointer pass of QEMU's ``multifd_send_zero_page_detect``:
    with ``i`` at the front and ``j`` at the back, a normal page at ``i``
    advances ``i``; a zero page at ``i`` is swapped with ``offsets[j]`` and
    ``j`` retreats. The resulting order matches QEMU's element for element.
    Each page is tested once; the tests run in a forward pass first (cheaper
    out of cache) and the swaps replay the pass from those results.

    Parameters
    ----------
    host : buffer
        The RAM block's memory, C-contiguous; read-only is fine.
    offsets : numpy.ndarray
        Writable, contiguous 1-D ``uint64`` byte offsets into ``host``, each a
        multiple of ``page_size`` with the whole page inside ``host``.
        Reordered in place.
    page_size : int, default 4096
    name : str, default "offsets"
        The argument\'s name in error messages.
        A power of two from 1 KiB to 2 MiB.

    Returns
    -------
    int
        The number of normal (non-zero) pages, QEMU's ``normal_num``:
        ``offsets[:n]`` are the normal pages and ``offsets[n:]`` the zero pages.

    Examples
    --------
    >>> import numpy as np
    >>> from multifd_zero import partition_zero_pages
    >>> host = bytes(4096) + b"\\1" * 4096 + bytes(4096)   # zero, normal, zero
    >>> offsets = np.array([0, 4096, 8192], dtype=np.uint64)
    >>> partition_zero_pages(host, offsets), offsets.tolist()
    (1, [4096, 8192, 0])
    """
    cdef const mfz_path *path = mfz_path_now()
    cdef Py_ssize_t ps = _check_page_size(page_size)
    cdef _Call c
    cdef Py_buffer *hv
    cdef Py_buffer *ov
    cdef uint64_t *work
    cdef uint8_t *zero
    cdef Py_ssize_t n, normal = 0
    _begin(&c)
    try:
        hv = _acquire(&c, host, _READ, "host")
        work = _take_offsets(&c, offsets, _U64 | _WRITE, name, hv.len, ps)
        n = c.n
        zero = _page_flags(&c, n)
        with nogil:
            path.pages(<const uint8_t *>hv.buf, work, n, ps, zero)
            normal = <Py_ssize_t>mfz_replay(work, zero, <size_t>n)
        _put_offsets(&c, offsets, 1, name)
    finally:
        _end(&c)
    return normal


def partition_batches(host, offsets, page_size=4096, name="offsets"):
    """Run :func:`partition_zero_pages` on every row of a 2-D offsets array.

    One call for many batches of the same block (say, the packets a channel
    has queued), so the GIL is released once for all of them.

    Parameters
    ----------
    host : buffer
        The RAM block's memory, C-contiguous; read-only is fine.
    offsets : numpy.ndarray
        Writable, C-contiguous 2-D ``uint64`` array, one batch per row (rows
        of no offsets: at most 65,536 of them); every offset
        page-aligned with its page inside ``host``. Each row is reordered in
        place exactly as :func:`partition_zero_pages` would.
    page_size : int, default 4096
    name : str, default "offsets"
        The argument\'s name in error messages.

    Returns
    -------
    numpy.ndarray
        ``int64``, the number of normal pages of each row.

    Examples
    --------
    >>> import numpy as np
    >>> from multifd_zero import partition_batches
    >>> host = bytes(4096) + b"\\1" * 4096
    >>> offsets = np.array([[0, 4096], [4096, 0]], dtype=np.uint64)
    >>> partition_batches(host, offsets).tolist(), offsets.tolist()
    ([1, 1], [[4096, 0], [4096, 0]])
    """
    cdef const mfz_path *path = mfz_path_now()
    cdef Py_ssize_t ps = _check_page_size(page_size)
    cdef _Call c
    cdef Py_buffer *hv
    cdef Py_buffer *ov
    cdef uint64_t *work
    cdef uint8_t *zero
    cdef Py_ssize_t rows, cols, r
    cdef int64_t *out
    _begin(&c)
    try:
        hv = _acquire(&c, host, _READ, "host")
        work = _take_offsets(&c, offsets, _U64_2D | _WRITE, name, hv.len, ps)
        rows = c.rows
        cols = c.cols
        if cols == 0 and rows > _MAX_EMPTY_ROWS:
            # The answer is one int64 per row: rows of nothing would make it
            # any size from an empty input (10**8 rows, 800 MB).
            raise ValueError(
                f"{name} has {rows} rows of no offsets (at most {_MAX_EMPTY_ROWS} are "
                "accepted): a row is a batch of pages"
            )
        zero = _page_flags(&c, rows * cols)
        normals = np.empty(rows, dtype=np.int64)
        out = <int64_t *>_array_data(normals)
        with nogil:
            # One scan over every row, so that the batch loop's read-ahead and
            # runs of adjacent pages carry on from one batch to the next.
            path.pages(<const uint8_t *>hv.buf, work, rows * cols, ps, zero)
            for r in range(rows):
                out[r] = <int64_t>mfz_replay(work + r * cols, zero + r * cols, <size_t>cols)
        _put_offsets(&c, offsets, 2, name)
    finally:
        _end(&c)
    return normals


def scan_zero_pages(host, offsets, page_size=4096, name="offsets"):
    """Return one bool per offset: True where that page of ``host`` is all zero.

    The check that legacy detection (QEMU's ``save_zero_page``) runs per page,
    done for a whole batch in one call. Nothing is reordered.

    Parameters
    ----------
    host : buffer
        C-contiguous; read-only is fine.
    offsets : numpy.ndarray
        Contiguous 1-D ``uint64`` byte offsets, page-aligned and inside ``host``.
    page_size : int, default 4096
    name : str, default "offsets"
        The argument\'s name in error messages.

    Returns
    -------
    numpy.ndarray
        ``bool`` array with ``len(offsets)`` entries.
    """
    cdef const mfz_path *path = mfz_path_now()
    cdef Py_ssize_t ps = _check_page_size(page_size)
    cdef _Call c
    cdef Py_buffer *hv
    cdef Py_buffer *ov
    cdef uint64_t *work
    cdef Py_ssize_t n
    cdef uint8_t *out
    _begin(&c)
    try:
        hv = _acquire(&c, host, _READ, "host")
        work = _take_offsets(&c, offsets, _U64, name, hv.len, ps)
        n = c.n
        mask = np.empty(n, dtype=_BOOL)
        out = _array_data(mask)
        with nogil:
            path.pages(<const uint8_t *>hv.buf, work, n, ps, out)
    finally:
        _end(&c)
    return mask


# ------------------------------------------------------- the destination side

def recv_zero_pages(
    host, receivedmap, offsets, page_size=4096, mode=ZERO_IF_RECEIVED, name="offsets"
):
    """Apply a batch of zero pages to the destination and mark them received.

    For each offset, in order (QEMU's ``multifd_recv_zero_page_process``):
    the page's receivedmap bit is tested; the page is zeroed when ``mode``
    says so; a bit that was clear is then set atomically. A thread that sees
    a bit set also sees the zeroes written before it (one store fence before
    the next bit, and one before returning).

    Parameters
    ----------
    host : buffer
        The destination block's memory: C-contiguous and writable.
    receivedmap : numpy.ndarray
        Writable 1-D ``uint64`` words, one bit per page, least significant bit
        first, covering every page of ``host``.
    offsets : numpy.ndarray
        Contiguous 1-D ``uint64`` byte offsets, page-aligned and inside ``host``.
    page_size : int, default 4096
    name : str, default "offsets"
        The argument\'s name in error messages.
    mode : int
        ``ZERO_IF_RECEIVED`` (multifd precopy into fresh memory),
        ``ZERO_ALWAYS`` (postcopy-ram), ``ZERO_IF_NONZERO`` (the legacy
        stream's ``ram_handle_zero``) or ``ZERO_IF_RECEIVED_OR_NONZERO``
        (multifd precopy into memory not known to be zero: a page received
        before is zeroed, a new one is read and zeroed only if not zero).

    Returns
    -------
    int
        The number of pages written with zeros.
    """
    cdef const mfz_path *path = mfz_path_now()
    cdef Py_ssize_t ps = _check_page_size(page_size)
    cdef _Call c
    cdef Py_buffer *hv
    cdef Py_buffer *mv
    cdef Py_buffer *ov
    cdef uint64_t *work
    cdef Py_ssize_t n, k, written = 0
    cdef uint64_t bit
    cdef int received, how, shift
    cdef bint unfenced = False
    cdef uint8_t *base
    cdef uint64_t *words
    mode = _as_int(mode, "mode")
    if mode not in (ZERO_IF_RECEIVED, ZERO_ALWAYS, ZERO_IF_NONZERO, ZERO_IF_RECEIVED_OR_NONZERO):
        raise ValueError(
            "mode must be ZERO_IF_RECEIVED, ZERO_ALWAYS, ZERO_IF_NONZERO or "
            f"ZERO_IF_RECEIVED_OR_NONZERO, got {mode}"
        )
    how = mode
    shift = _page_shift(ps)
    _begin(&c)
    try:
        hv = _acquire(&c, host, _READ | _WRITE, "host")
        mv = _acquire(&c, receivedmap, _U64 | _WRITE, "receivedmap")
        _check_bitmap(mv, hv.len, ps)
        work = _take_offsets(&c, offsets, _U64, name, hv.len, ps)
        n = c.n
        base = <uint8_t *>hv.buf
        words = <uint64_t *>mv.buf
        with nogil:
            for k in range(n):
                bit = work[k] >> shift
                received = mfz_bit_test(words, bit)
                if how == _IF_NONZERO or (how == _IF_RECEIVED_OR_NONZERO and not received):
                    if not mfz_is_zero(path, base + work[k], ps):
                        memset(base + work[k], 0, ps)
                        written += 1
                elif how == _ALWAYS or received:
                    path.zero_page(base + work[k], ps)
                    written += 1
                    unfenced = True
                if not received:
                    # The zeroes must be visible before the bit that says the
                    # page has arrived.
                    if unfenced:
                        mfz_store_fence()
                        unfenced = False
                    mfz_bit_set(words, bit)
            if unfenced:
                mfz_store_fence()
    finally:
        _end(&c)
    return written


def recv_normal_pages(host, receivedmap, offsets, data, page_size=4096, name="offsets"):
    """Write normal pages into the destination and mark them received.

    Page ``k`` of ``data`` goes to ``host[offsets[k]:offsets[k] + page_size]``;
    as QEMU's nocomp receiver does, each page's bit is set before its data
    lands.

    Parameters
    ----------
    host : buffer
        The destination block's memory: C-contiguous and writable.
    receivedmap : numpy.ndarray
        Writable 1-D ``uint64`` words covering every page of ``host``.
    offsets : numpy.ndarray
        Contiguous 1-D ``uint64`` byte offsets, page-aligned and inside ``host``.
    data : buffer
        C-contiguous, exactly ``len(offsets) * page_size`` bytes.
    page_size : int, default 4096
    name : str, default "offsets"
        The argument\'s name in error messages.

    Returns
    -------
    int
        The number of pages written.
    """
    cdef Py_ssize_t ps = _check_page_size(page_size)
    cdef _Call c
    cdef Py_buffer *hv
    cdef Py_buffer *mv
    cdef Py_buffer *ov
    cdef Py_buffer *dv
    cdef uint64_t *work
    cdef Py_ssize_t n, k
    cdef int shift = _page_shift(ps)
    cdef uint8_t *base
    cdef const uint8_t *src
    cdef uint64_t *words
    _begin(&c)
    try:
        hv = _acquire(&c, host, _READ | _WRITE, "host")
        mv = _acquire(&c, receivedmap, _U64 | _WRITE, "receivedmap")
        _check_bitmap(mv, hv.len, ps)
        work = _take_offsets(&c, offsets, _U64, name, hv.len, ps)
        n = c.n
        dv = _acquire(&c, data, _READ, "data")
        if dv.len != n * ps:
            raise ValueError(
                f"data holds {dv.len} bytes, but {n} pages of {ps} bytes need {n * ps}"
            )
        base = <uint8_t *>hv.buf
        src = <const uint8_t *>dv.buf
        words = <uint64_t *>mv.buf
        with nogil:
            for k in range(n):
                mfz_bit_set(words, work[k] >> shift)
                memcpy(base + work[k], src + k * ps, ps)
    finally:
        _end(&c)
    return n


def gather_pages(host, offsets, out, page_size=4096, name="offsets"):
    """Copy the pages at ``offsets`` of ``host``, in order, into ``out``.

    The sender's half of a normal-page transfer (QEMU's iovec of normal pages).

    Parameters
    ----------
    host : buffer
        C-contiguous; read-only is fine.
    offsets : numpy.ndarray
        Contiguous 1-D ``uint64`` byte offsets, page-aligned and inside ``host``.
    out : buffer
        Writable, C-contiguous, exactly ``len(offsets) * page_size`` bytes.
    page_size : int, default 4096
    name : str, default "offsets"
        The argument\'s name in error messages.

    Returns
    -------
    int
        The number of pages copied.
    """
    cdef Py_ssize_t ps = _check_page_size(page_size)
    cdef _Call c
    cdef Py_buffer *hv
    cdef Py_buffer *ov
    cdef Py_buffer *dv
    cdef uint64_t *work
    cdef Py_ssize_t n, k
    cdef const uint8_t *base
    cdef uint8_t *dst
    _begin(&c)
    try:
        hv = _acquire(&c, host, _READ, "host")
        work = _take_offsets(&c, offsets, _U64, name, hv.len, ps)
        n = c.n
        dv = _acquire(&c, out, _READ | _WRITE, "out")
        if dv.len != n * ps:
            raise ValueError(
                f"out holds {dv.len} bytes, but {n} pages of {ps} bytes need {n * ps}"
            )
        base = <const uint8_t *>hv.buf
        dst = <uint8_t *>dv.buf
        with nogil:
            for k in range(n):
                memcpy(dst + k * ps, base + work[k], ps)
    finally:
        _end(&c)
    return n


# ----------------------------------------------------------- receivedmap bits

cdef uint64_t _check_bit(const Py_buffer *mv, object bit) except? 0:
    bit = _as_int(bit, "bit")
    if bit < 0 or bit >= mv.len * 8:
        raise ValueError(f"bit {bit} is out of range for a bitmap of {mv.len * 8} bits")
    return <uint64_t>bit


def bitmap_test(bitmap, bit):
    """Return the value of ``bit`` in a ``uint64`` bitmap (an atomic load)."""
    cdef _Call c
    cdef Py_buffer *mv
    cdef int r
    _begin(&c)
    try:
        mv = _acquire(&c, bitmap, _U64, "bitmap")
        r = mfz_bit_test(<const uint64_t *>mv.buf, _check_bit(mv, bit))
    finally:
        _end(&c)
    return r != 0


def bitmap_set(bitmap, bit):
    """Set ``bit`` atomically; return its previous value."""
    cdef _Call c
    cdef Py_buffer *mv
    cdef int r
    _begin(&c)
    try:
        mv = _acquire(&c, bitmap, _U64 | _WRITE, "bitmap")
        r = mfz_bit_set(<uint64_t *>mv.buf, _check_bit(mv, bit))
    finally:
        _end(&c)
    return r != 0


def bitmap_clear(bitmap, bit):
    """Clear ``bit`` atomically; return its previous value."""
    cdef _Call c
    cdef Py_buffer *mv
    cdef int r
    _begin(&c)
    try:
        mv = _acquire(&c, bitmap, _U64 | _WRITE, "bitmap")
        r = mfz_bit_clear(<uint64_t *>mv.buf, _check_bit(mv, bit))
    finally:
        _end(&c)
    return r != 0


def bitmap_count(bitmap):
    """Return the number of set bits in a ``uint64`` bitmap."""
    cdef _Call c
    cdef Py_buffer *mv
    cdef uint64_t total = 0
    cdef Py_ssize_t k
    cdef const uint64_t *words
    _begin(&c)
    try:
        mv = _acquire(&c, bitmap, _U64, "bitmap")
        words = <const uint64_t *>mv.buf
        with nogil:
            for k in range(mv.len // 8):
                total += mfz_popcount64(words[k])
    finally:
        _end(&c)
    return total


# ---------------------------------------------------------------- SIMD paths

def simd_paths():
    """Return the names of the zero-check paths this CPU can run, slowest first."""
    return tuple(
        (<bytes>mfz_paths[p].name).decode() for p in range(MFZ_NPATHS) if mfz_path_supported(p)
    )


def get_simd():
    """Return the name of the active zero-check path."""
    return (<bytes>mfz_path_now().name).decode()


def set_simd(name):
    """Select the zero-check path by name (``"best"`` picks the fastest available).

    Every kernel reads the active path once, when it is called, and runs the
    whole call on it. Calling ``set_simd`` while kernels run on other threads
    is therefore safe: a call already running finishes on the path it started
    with, and calls that start afterwards use the new one. The switch is one
    atomic pointer store, so no call ever mixes two paths. The path is global
    to the process, not per thread.

    Parameters
    ----------
    name : str
        ``"best"`` or one of :func:`simd_paths`.

    Returns
    -------
    str
        The name of the path now active.

    Raises
    ------
    TypeError
        ``name`` is not a str.
    ValueError
        Unknown name, or a path this CPU cannot run.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    if name == "best":
        mfz_select(mfz_best_path())
        return get_simd()
    for p in range(MFZ_NPATHS):
        if (<bytes>mfz_paths[p].name).decode() == name:
            if mfz_select(p) != 0:
                raise ValueError(f"SIMD path {name!r} is not supported by this CPU")
            return get_simd()
    known = ", ".join((<bytes>mfz_paths[p].name).decode() for p in range(MFZ_NPATHS))
    raise ValueError(f"unknown SIMD path {name!r}; known paths: best, {known}")


mfz_select(mfz_best_path())
_probe_direct()
