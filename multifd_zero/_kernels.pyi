"""Type stub for the compiled module ``multifd_zero._kernels`` (see ``_kernels.pyx``).

Buffers: every argument documented as a "buffer" takes any object that
exports the buffer protocol (bytes, bytearray, memoryview, mmap, array.array,
numpy arrays). ``collections.abc.Buffer`` only exists from Python 3.12 and
numpy's stubs only declare ``ndarray.__buffer__`` from 3.12, so the alias
below spells the same thing out for every supported Python without any
dependency beyond numpy.
"""

from typing import Final, Protocol, SupportsIndex, TypeAlias

import numpy as np
import numpy.typing as npt

class _SupportsBuffer(Protocol):
    def __buffer__(self, flags: int, /) -> memoryview: ...

# Anything with the buffer protocol: bytes, bytearray, memoryview, mmap,
# array.array, and numpy arrays of any dtype and shape.
_ReadableBuffer: TypeAlias = _SupportsBuffer | npt.NDArray[np.generic]
# The same, where the kernel writes: the object must also be writable at run
# time (bytes and read-only views raise ``ValueError``), which no type says.
_WritableBuffer: TypeAlias = _ReadableBuffer
# C-contiguous arrays of native uint64: offsets (1-D, or 2-D for
# partition_batches) and receivedmap words.
_U64Array: TypeAlias = npt.NDArray[np.uint64]

MIN_PAGE_SIZE: Final = 1024
MAX_PAGE_SIZE: Final = 2097152

ZERO_IF_RECEIVED: Final = 0
ZERO_ALWAYS: Final = 1
ZERO_IF_NONZERO: Final = 2
ZERO_IF_RECEIVED_OR_NONZERO: Final = 3

def check_page_size(page_size: SupportsIndex) -> int: ...
def check_offsets(
    offsets: _U64Array,
    used_length: SupportsIndex,
    page_size: SupportsIndex = 4096,
    name: str = "offsets",
) -> None: ...

# Zero checks.
def is_zero(buf: _ReadableBuffer, /) -> bool: ...
def zero_page_mask(
    buf: _ReadableBuffer, page_size: SupportsIndex = 4096
) -> npt.NDArray[np.bool_]: ...

# The source side.
def partition_zero_pages(
    host: _ReadableBuffer,
    offsets: _U64Array,
    page_size: SupportsIndex = 4096,
    name: str = "offsets",
) -> int: ...
def partition_batches(
    host: _ReadableBuffer,
    offsets: _U64Array,
    page_size: SupportsIndex = 4096,
    name: str = "offsets",
) -> npt.NDArray[np.int64]: ...
def scan_zero_pages(
    host: _ReadableBuffer,
    offsets: _U64Array,
    page_size: SupportsIndex = 4096,
    name: str = "offsets",
) -> npt.NDArray[np.bool_]: ...
def gather_pages(
    host: _ReadableBuffer,
    offsets: _U64Array,
    out: _WritableBuffer,
    page_size: SupportsIndex = 4096,
    name: str = "offsets",
) -> int: ...

# The destination side.
def recv_zero_pages(
    host: _WritableBuffer,
    receivedmap: _U64Array,
    offsets: _U64Array,
    page_size: SupportsIndex = 4096,
    mode: SupportsIndex = 0,
    name: str = "offsets",
) -> int: ...
def recv_normal_pages(
    host: _WritableBuffer,
    receivedmap: _U64Array,
    offsets: _U64Array,
    data: _ReadableBuffer,
    page_size: SupportsIndex = 4096,
    name: str = "offsets",
) -> int: ...

# Whether offsets in exact uint64 ndarrays are read without a buffer request
# (decided at import by comparing with the buffer protocol).
def _reads_ndarrays_directly() -> bool: ...

# receivedmap bits.
def bitmap_test(bitmap: _U64Array, bit: SupportsIndex) -> bool: ...
def bitmap_set(bitmap: _U64Array, bit: SupportsIndex) -> bool: ...
def bitmap_clear(bitmap: _U64Array, bit: SupportsIndex) -> bool: ...
def bitmap_count(bitmap: _U64Array) -> int: ...

# SIMD paths.
def simd_paths() -> tuple[str, ...]: ...
def get_simd() -> str: ...

# The path is global to the process and read once per kernel call: a call on
# another thread finishes on the path it started with.
def set_simd(name: str) -> str: ...

__test__: dict[str, str]
def mapped_page_mask(
    buf: _ReadableBuffer, page_size: SupportsIndex = 4096
) -> npt.NDArray[np.bool_] | None: ...
def punch_hole(fd: SupportsIndex, offset: SupportsIndex, length: SupportsIndex) -> None: ...
def write_data_pages(
    fd: SupportsIndex,
    buf: _ReadableBuffer,
    mask: npt.NDArray[np.bool_],
    page_size: SupportsIndex = 4096,
    file_offset: SupportsIndex = 0,
) -> int: ...
def punch_zero_pages(
    fd: SupportsIndex,
    mask: npt.NDArray[np.bool_],
    length: SupportsIndex,
    page_size: SupportsIndex = 4096,
    file_offset: SupportsIndex = 0,
) -> int: ...
