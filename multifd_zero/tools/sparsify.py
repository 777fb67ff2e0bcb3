"""Sparse copies and hole punching: zero pages of a file become holes.

:func:`sparsify` does what ``cp --sparse=always SRC DST`` (a copy whose zero
pages are holes) and ``fallocate --dig-holes FILE`` (holes punched in place)
do, with the zero check of the multifd sender (QEMU's ``buffer_is_zero``) on
``mmap`` windows: the source is mapped 64 MiB at a time and checked under the
SIGBUS guard (a source that shrinks is a
:class:`~multifd_zero.errors.FileChangedError`, not a crash); its holes
(``SEEK_DATA``/``SEEK_HOLE``) are skipped unread. A copy writes only the
data pages, one ``pwrite`` per run straight from the mapping, into a file
truncated to the source's size (``_kernels.write_data_pages``); in place,
each run of zero pages is one ``fallocate(PUNCH_HOLE | KEEP_SIZE)``
(``_kernels.punch_zero_pages``, over ``_kernels.punch_hole``), after the
window's pages are dropped from the page cache as ``fallocate --dig-holes``
does (a punch over cached pages costs twice as much on ext4). Both loops run
in C without the GIL, one system call per run and no Python call.

Where the time goes: a file half zero at random places has a run every two
pages, 65536 per GiB, and each costs the file system a write or a punch that
no tool avoids; ``benchmarks/bench_sparsify.py`` measures that floor (the same
calls with the runs known in advance) next to ``cp`` and ``fallocate``.

The unit is the page (``page_size``, 4 KiB by default, the block size of
most file systems): a page is a hole afterwards exactly when all its bytes
are zero; the content never changes (``cmp`` equal).
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import _kernels
from ..errors import FileChangedError
from .scan import WINDOW_BYTES, _page_ranges

__all__ = ["SparsifyResult", "sparsify"]

ProgressCallback = Callable[[int], object]

_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", None)


@dataclass(frozen=True)
class SparsifyResult:
    """What :func:`sparsify` did.

    Attributes
    ----------
    source, destination : str
        The files (the same for ``in_place``).
    size : int
        Bytes of the file.
    page_size : int
    pages, zero_pages : int
        Pages checked or skipped as holes (a trailing partial page counts as one).
    bytes_written : int
        Data bytes written to the copy (0 in place).
    holes_punched : int
        ``fallocate`` calls in place (0 for a copy).
    allocated_before, allocated_after : int
        Bytes the destination's blocks took (``st_blocks * 512``) before and
        after (before is the source's, for a copy).
    seconds : float
    in_place : bool
    """

    source: str
    destination: str
    size: int
    page_size: int
    pages: int
    zero_pages: int
    bytes_written: int
    holes_punched: int
    allocated_before: int
    allocated_after: int
    seconds: float
    in_place: bool

    @property
    def gb_per_s(self) -> float:
        """10**9 bytes of the file per second."""
        return self.size / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Every field and the speed, JSON-ready."""
        return {
            "source": self.source,
            "destination": self.destination,
            "in_place": self.in_place,
            "size": self.size,
            "page_size": self.page_size,
            "pages": self.pages,
            "zero_pages": self.zero_pages,
            "bytes_written": self.bytes_written,
            "holes_punched": self.holes_punched,
            "allocated_before": self.allocated_before,
            "allocated_after": self.allocated_after,
            "seconds": self.seconds,
            "gb_per_s": self.gb_per_s,
        }


def _runs(mask: npt.NDArray[np.bool_], value: bool) -> list[tuple[int, int]]:
    """``(first, end)`` page indexes of the runs of ``value`` in ``mask``."""
    padded = np.concatenate(([not value], mask, [not value]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    firsts, ends = edges[0::2].tolist(), edges[1::2].tolist()
    pairs: list[tuple[int, int]] = list(zip(firsts, ends, strict=True))
    return pairs


def _regular(fd: int, name: str) -> os.stat_result:
    info = os.fstat(fd)
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), name)
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{name}: not a regular file (sparsify needs a file that can hold holes)")
    return info


def sparsify(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str] | None = None,
    *,
    page_size: int = 4096,
    progress: ProgressCallback | None = None,
) -> SparsifyResult:
    """Make the zero pages of a file holes: in a new copy, or in place.

    Parameters
    ----------
    source : str or os.PathLike
        A regular file.
    destination : str or os.PathLike, optional
        The copy to write (created or truncated); None punches holes in
        ``source`` itself.
    page_size : int, default 4096
        The unit of the check, a power of two from 1 KiB to 2 MiB; use the
        file system's block size or a multiple of it.
    progress : callable, optional
        Called with the bytes just processed (holes included).

    Returns
    -------
    SparsifyResult

    Raises
    ------
    FileChangedError
        The source shrank while it was read.
    ValueError
        Bad ``page_size``; a source or destination that is not a regular
        file; a destination that is the source.
    OSError
        A file cannot be opened, read or written, or the file system cannot
        punch holes (``EOPNOTSUPP``).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as d:
    ...     src, dst = Path(d, "a"), Path(d, "b")
    ...     _ = src.write_bytes(bytes(8192) + b"\\1" * 4096)
    ...     r = sparsify(src, dst)
    ...     same = src.read_bytes() == dst.read_bytes()
    >>> r.pages, r.zero_pages, r.bytes_written, same
    (3, 2, 4096, True)
    """
    ps = _kernels.check_page_size(page_size)
    src_name = os.fspath(source)
    in_place = destination is None
    dst_name = src_name if destination is None else os.fspath(destination)
    src = os.open(src_name, (os.O_RDWR if in_place else os.O_RDONLY) | os.O_CLOEXEC)
    dst = -1
    try:
        info = _regular(src, src_name)
        before = info.st_blocks * 512
        if not in_place:
            if os.path.exists(dst_name) and os.path.samefile(src_name, dst_name):
                raise ValueError(
                    f"{dst_name}: the destination is the source; use in-place mode instead"
                )
            dst = os.open(dst_name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
            if _regular(dst, dst_name).st_size:
                # Only a file that had contents: on ext4 a truncation to 0 makes
                # close() write the new file back at once (auto_da_alloc), as
                # it does for cp onto an existing file.
                os.ftruncate(dst, 0)
            os.ftruncate(dst, info.st_size)
        start = time.perf_counter()
        counts = _Sparsifier(src, dst, ps, progress, src_name).run(info.st_size)
        after = os.fstat(src if in_place else dst).st_blocks * 512
        seconds = time.perf_counter() - start
    finally:
        os.close(src)
        if dst >= 0:
            os.close(dst)
    return SparsifyResult(
        source=src_name,
        destination=dst_name,
        size=info.st_size,
        page_size=ps,
        pages=counts.pages,
        zero_pages=counts.zero_pages,
        bytes_written=counts.written,
        holes_punched=counts.punched,
        allocated_before=before,
        allocated_after=after,
        seconds=seconds,
        in_place=in_place,
    )


class _Sparsifier:
    """One pass over the source; ``dst < 0`` punches holes in the source."""

    def __init__(
        self, src: int, dst: int, ps: int, progress: ProgressCallback | None, name: str
    ) -> None:
        self.src, self.dst, self.ps, self.progress, self.name = src, dst, ps, progress, name
        self.pages = self.zero_pages = self.written = self.punched = 0

    def _shrank(self) -> FileChangedError:
        return FileChangedError(
            errno.EIO, "the file shrank while it was read (changed under sparsify)", self.name
        )

    def run(self, size: int) -> _Sparsifier:
        done = 0
        for lo, hi in _page_ranges(self.src, size, self.ps):
            self._hole(lo - done)
            for offset in range(lo, hi, WINDOW_BYTES):
                self._window(offset, min(WINDOW_BYTES, hi - offset))
            done = hi
        self._hole(size - done)
        return self

    def _hole(self, nbytes: int) -> None:
        if nbytes > 0:
            pages = -(-nbytes // self.ps)
            self.pages += pages
            self.zero_pages += pages
            if self.progress is not None:
                self.progress(nbytes)

    def _window(self, offset: int, length: int) -> None:
        ps = self.ps
        base = offset - offset % mmap.ALLOCATIONGRANULARITY
        try:
            mapped = mmap.mmap(
                self.src, offset - base + length, access=mmap.ACCESS_READ, offset=base
            )
        except ValueError:  # "mmap length is greater than file size": it shrank
            raise self._shrank() from None
        try:
            with memoryview(mapped) as whole, whole[offset - base :] as view:
                mask = _kernels.mapped_page_mask(view, ps)
                if mask is None:
                    raise self._shrank()
                zero = int(np.count_nonzero(mask))
                self.pages += len(mask)
                self.zero_pages += zero
                if self.dst >= 0 and zero < len(mask):
                    try:
                        self.written += _kernels.write_data_pages(self.dst, view, mask, ps, offset)
                    except OSError as exc:
                        # Copying from a mapping whose file shrank fails with EFAULT.
                        if exc.errno == errno.EFAULT:
                            raise self._shrank() from None
                        raise
        finally:
            mapped.close()
        if self.dst < 0 and zero:
            if _DONTNEED is not None:
                # As fallocate --dig-holes does: drop the window's pages from the
                # page cache first, so that each punch has no cached page to drop.
                os.posix_fadvise(self.src, offset, length, _DONTNEED)
            self.punched += _kernels.punch_zero_pages(self.src, mask, length, ps, offset)
        if self.progress is not None:
            self.progress(length)
