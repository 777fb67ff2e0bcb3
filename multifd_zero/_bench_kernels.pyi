"""Type stub for ``multifd_zero._bench_kernels``: the benchmark's limit loops."""

from multifd_zero._kernels import _ReadableBuffer, _WritableBuffer

# The OR of every byte, no early exit: the read limit.
def _read_all(buf: _ReadableBuffer) -> int: ...

# The receiver's streaming stores over the whole buffer: the write limit.
def _zero_all(buf: _WritableBuffer) -> None: ...

# One load of each page's first byte: the floor of a batch loop.
def _touch_heads(
    host: _ReadableBuffer, offsets: _ReadableBuffer, out: _WritableBuffer
) -> None: ...

# The zero pages read with the answer known, eight side by side: their floor.
def _read_known(host: _ReadableBuffer, offsets: _ReadableBuffer, page_size: int) -> int: ...

# A call that only spins for ns nanoseconds without the GIL: the threads' ceiling.
def _busy(ns: float) -> None: ...

__test__: dict[str, str]
