"""Count the zero pages of files, block devices and memory dumps, in constant memory.

:func:`scan_file` reads a file of any size through ``mmap`` windows
(:data:`WINDOW_BYTES`, 64 MiB by default) that are unmapped as soon as they
are checked, so the scanner's resident memory stays at about one window
whatever the size of the file. Ranges that the file system reports as holes
(``SEEK_DATA``/``SEEK_HOLE``) are all zero by definition and are counted
without being read. Files that cannot be mapped (pipes, character devices,
some ``/proc`` files and network file systems) are read sequentially with
``readinto`` into one reused buffer of :data:`READ_CHUNK_BYTES`.
:func:`scan_buffer` does the same for memory that is already mapped.

Each page is checked with the same kernel as the multifd sender
(:func:`~multifd_zero.zero_page_mask`, QEMU's ``buffer_is_zero``), with the GIL
released.

The trailing partial page
-------------------------
When the size is not a multiple of the page size, the last ``size %
page_size`` bytes are counted as **one more page, padded with zeros**: it is a
zero page if those bytes are all zero, a normal page otherwise, and a normal
one costs a whole page on the wire. This is what QEMU does with a RAM block:
its length is rounded up to whole pages (``HOST_PAGE_ALIGN``) and the padding
reads as zero. QEMU 7.2 refuses a ``memory-backend-file`` whose file is shorter
than the rounded size, so to migrate such an image it must first be extended
to the page boundary (``truncate -s %4K``), which adds exactly those zeros;
``tests/migration/test_qemu_peer.py`` checks that the counts of the unpadded image equal
QEMU's counts for the padded one.

What goes on the wire
---------------------
For each scan the result estimates the migration stream's bytes for QEMU's
``zero-page-detection`` modes (QEMU 9.0+, multifd enabled, no compression),
and for a plain precopy migration without multifd. ``packet_len = 320 + 8 *
page_count`` with ``page_count = 524288 // page_size`` (128 and 1344 bytes for
4 KiB pages; at least one page per packet, as in
:func:`~multifd_zero.multifd_ram_page_count`).

``multifd``
    Every page is queued to the channels; zero pages cost only their 8-byte
    offset inside the fixed-size packet:
    ``ceil(pages / page_count) * packet_len + normal * page_size``.
``legacy``
    Zero pages are found on the main migration thread and sent there as a page
    header: a big-endian 64-bit ``offset | RAM_SAVE_FLAG_ZERO |
    RAM_SAVE_FLAG_CONTINUE`` and one 0 byte, **9 bytes per zero page**. Only
    normal pages reach the multifd channels:
    ``9 * zero + ceil(normal / page_count) * packet_len + normal * page_size``.
``none``
    No zero check; every page is sent with its data in multifd packets:
    ``ceil(pages / page_count) * packet_len + pages * page_size``.
``precopy``
    Multifd off (QEMU's legacy single stream, where detection is always
    legacy): 9 bytes per zero page and an 8-byte header plus the page for each
    normal page: ``9 * zero + (8 + page_size) * normal``.

Every figure leaves out what does not depend on the pages' contents: the
one-time ``1 + len(idstr)`` block name sent with the first page header of a
block (the per-page header is approximated by the 8-byte ``CONTINUE`` form for
every page), the 64-byte multifd handshake per channel, one SYNC packet per
channel at setup, at every iteration and at completion, partial batches flushed
at those sync points, the 8-byte end-of-section marker per iteration, and the
device state. Pages dirtied again during the migration are not modelled (the
scan sees one snapshot).

QEMU before 9.0 has no ``zero-page-detection`` parameter and always detects on
the main thread, so its multifd migrations are the ``legacy`` case.
``tests/migration/test_qemu_peer.py`` migrates an image with QEMU 7.2 and finds its
``duplicate`` and ``normal`` equal to the scan's counts, and its
``transferred`` equal to the ``precopy`` and ``legacy`` figures plus exactly
the overheads above (and, with multifd, pages that QEMU 7.2 sends twice
through a race, but counts once).

Units: ``gb_per_s`` is 10**9 bytes read (holes, which are not read, left
out) per second of wall time.
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .. import _kernels
from ..errors import FileChangedError, FileFormatError
from ..pages import multifd_ram_page_count
from .formats import SNIFF_BYTES, LoadSegment, elf_segments, sniff

__all__ = [
    "HOLE_MERGE_BYTES",
    "LEGACY_ZERO_PAGE_BYTES",
    "MULTIFD_PACKET_HEADER_BYTES",
    "PAGE_HEADER_BYTES",
    "READ_CHUNK_BYTES",
    "STDIN",
    "WINDOW_BYTES",
    "Extent",
    "ScanMethod",
    "ScanResult",
    "multifd_packet_len",
    "read_image",
    "scan_buffer",
    "scan_file",
]

MIB = 1024 * 1024

WINDOW_BYTES = 64 * MIB
"""Bytes mapped at a time by :func:`scan_file` (a multiple of every page size)."""

READ_CHUNK_BYTES = 1 * MIB
"""Buffer size of the ``readinto`` path (raised to the page size for larger pages)."""

HOLE_MERGE_BYTES = 1 * MIB
"""Holes shorter than this, between two data ranges, are read instead of skipped."""

MULTIFD_PACKET_HEADER_BYTES = 320
"""Fixed part of a multifd RAM packet, before the ``8 * page_count`` offset array."""

LEGACY_ZERO_PAGE_BYTES = 9
"""A zero page on the main channel: 8-byte ``offset | ZERO | CONTINUE`` and one 0 byte."""

PAGE_HEADER_BYTES = 8
"""The ``offset | PAGE | CONTINUE`` header before a normal page in a precopy stream."""

ScanMethod = Literal["auto", "mmap", "read"]
"""How :func:`scan_file` reads: ``mmap`` windows, ``read`` (``readinto``) or ``auto``."""

ProgressCallback = Callable[[int], object]

_METHODS = ("auto", "mmap", "read")


def multifd_packet_len(page_size: int = 4096) -> int:
    """Return the bytes of one multifd RAM packet header: ``320 + 8 * page_count``.

    Examples
    --------
    >>> multifd_packet_len(4096)
    1344
    """
    return MULTIFD_PACKET_HEADER_BYTES + 8 * multifd_ram_page_count(page_size)


@dataclass(frozen=True)
class ScanResult:
    """The pages of one file or buffer, and what migrating them would cost.

    Parameters
    ----------
    path : str
        The file scanned, or a name for a buffer.
    size : int
        Bytes scanned.
    page_size : int
        Page size the counts use.
    pages : int
        ``ceil(size / page_size)``: a trailing partial page counts as one page
        padded with zeros (see the module documentation).
    zero_pages : int
        Pages whose bytes are all zero (QEMU's ``duplicate``).
    bytes_read : int
        Bytes actually read; holes of sparse files are counted without being read.
    seconds : float
        Wall time of the scan (opening the file excluded).
    method : str
        ``"mmap"``, ``"read"`` or ``"buffer"``.
    format : str
        ``"raw"``, or ``"elf"`` for a core dump scanned by its segments.
    extents : tuple of Extent, optional
        The runs of zero and data pages, when asked for.

    Examples
    --------
    >>> r = scan_buffer(bytes(8192) + b"\\1" * 4096)
    >>> r.pages, r.zero_pages, r.normal_pages, r.wire_bytes["multifd"]
    (3, 2, 1, 5440)
    """

    path: str
    size: int
    page_size: int
    pages: int
    zero_pages: int
    bytes_read: int
    seconds: float
    method: str
    format: str = "raw"
    extents: tuple[Extent, ...] | None = None

    @property
    def normal_pages(self) -> int:
        """Pages with at least one non-zero byte (QEMU's ``normal``)."""
        return self.pages - self.zero_pages

    @property
    def zero_ratio(self) -> float:
        """Share of zero pages, 0.0 for an empty file."""
        return self.zero_pages / self.pages if self.pages else 0.0

    @property
    def partial_page_bytes(self) -> int:
        """Bytes of the trailing partial page (0 when the size is a multiple of the page)."""
        return self.size % self.page_size

    @property
    def packet_pages(self) -> int:
        """Pages per multifd packet (``page_count``)."""
        return multifd_ram_page_count(self.page_size)

    @property
    def wire_bytes(self) -> dict[str, int]:
        """Estimated stream bytes per mode: ``multifd``, ``legacy``, ``none``, ``precopy``.

        See the module documentation for the formulas and what they leave out.
        """
        per_packet = self.packet_pages
        packet_len = multifd_packet_len(self.page_size)
        zero, normal, pages, ps = self.zero_pages, self.normal_pages, self.pages, self.page_size
        return {
            "multifd": math.ceil(pages / per_packet) * packet_len + normal * ps,
            "legacy": LEGACY_ZERO_PAGE_BYTES * zero
            + math.ceil(normal / per_packet) * packet_len
            + normal * ps,
            "none": math.ceil(pages / per_packet) * packet_len + pages * ps,
            "precopy": LEGACY_ZERO_PAGE_BYTES * zero + (PAGE_HEADER_BYTES + ps) * normal,
        }

    @property
    def gb_per_s(self) -> float:
        """Bytes read, in 10**9 per second; 0.0 if nothing was read (holes only) or not timed.

        Holes are counted without being read, so they are left out: a file of
        holes only has no speed to report.
        """
        return self.bytes_read / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Return every field and derived figure as JSON-ready values."""
        return {
            "path": self.path,
            "size": self.size,
            "page_size": self.page_size,
            "pages": self.pages,
            "zero_pages": self.zero_pages,
            "normal_pages": self.normal_pages,
            "zero_ratio": self.zero_ratio,
            "partial_page_bytes": self.partial_page_bytes,
            "packet_pages": self.packet_pages,
            "wire_bytes": self.wire_bytes,
            "bytes_read": self.bytes_read,
            "method": self.method,
            "format": self.format,
            "seconds": self.seconds,
            "gb_per_s": self.gb_per_s,
        }


@dataclass(frozen=True)
class Extent:
    """A run of zero or data pages, shaped like one entry of ``qemu-img map --output=json``.

    ``start`` is the address in the memory scanned (the file offset of a raw
    image, the guest physical address in an ELF dump), ``offset`` where those
    bytes lie in the file (None for the zero tail of an ELF segment, which the
    file does not hold). Unlike ``qemu-img map``, which reports allocation,
    ``zero`` says that every byte of the run *reads* as zero (a hole or
    written zeros).
    """

    start: int
    length: int
    zero: bool
    offset: int | None

    def as_dict(self) -> dict[str, Any]:
        """The ``qemu-img map --output=json`` fields (``offset`` only where the file holds it)."""
        entry: dict[str, Any] = {
            "start": self.start,
            "length": self.length,
            "depth": 0,
            "present": True,
            "zero": self.zero,
            "data": not self.zero,
            "compressed": False,
        }
        if self.offset is not None:
            entry["offset"] = self.offset
        return entry


class _ShrankError(Exception):
    """Raised inside a scan when the file ended before its size."""


class _Counter:
    """Zero pages of page-aligned pieces, fed in order; optionally their extents."""

    def __init__(
        self, page_size: int, progress: ProgressCallback | None, extents: bool = False
    ) -> None:
        self.page_size = page_size
        self.progress = progress
        self.pages = 0
        self.zero_pages = 0
        self.bytes_read = 0
        self.address = 0  # of the next byte fed
        self.delta: int | None = 0  # file offset minus address; None: not in the file
        self.extents: list[Extent] | None = [] if extents else None

    def seek(self, address: int, delta: int | None) -> None:
        """The next piece is at ``address``, held at file offset ``address + delta``."""
        self.address, self.delta = address, delta

    def check(self, view: memoryview, mapped: bool = False) -> None:
        """Count the pages of ``view``; only the last piece may end in a partial page.

        ``mapped``: ``view`` is a file mapping, checked under the SIGBUS guard.
        """
        ps = self.page_size
        if mapped:
            mask = _kernels.mapped_page_mask(view, ps)
            if mask is None:
                raise _ShrankError
        else:
            full = len(view) - len(view) % ps
            with view[:full] as head:
                mask = _kernels.zero_page_mask(head, ps)
            if full != len(view):
                with view[full:] as tail:
                    mask = np.append(mask, _kernels.is_zero(tail))
        self.zero_pages += int(np.count_nonzero(mask))
        self.pages += len(mask)
        self.bytes_read += len(view)
        if self.extents is not None:
            self._record(mask, len(view))
        self.address += len(view)
        self.advance(len(view))

    def _record(self, mask: npt.NDArray[np.bool_], nbytes: int) -> None:
        if not len(mask):
            return
        edges = np.flatnonzero(mask[1:] != mask[:-1]) + 1
        starts = [0, *edges.tolist()]
        ends = [*edges.tolist(), len(mask)]
        ps = self.page_size
        for a, b in zip(starts, ends, strict=True):
            self._add(a * ps, min(b * ps, nbytes) - a * ps, bool(mask[a]))

    def _add(self, rel: int, length: int, zero: bool) -> None:
        assert self.extents is not None
        start = self.address + rel
        offset = None if self.delta is None else start + self.delta
        if self.extents:
            last = self.extents[-1]
            joins = last.start + last.length == start and last.zero == zero
            if joins and (
                (last.offset is None and offset is None)
                or (last.offset is not None and offset == last.offset + last.length)
            ):
                self.extents[-1] = Extent(last.start, last.length + length, zero, last.offset)
                return
        self.extents.append(Extent(start, length, zero, offset))

    def hole(self, nbytes: int) -> None:
        """Count ``nbytes`` (page-aligned, or ending at the end) of a hole as zero pages."""
        if nbytes <= 0:
            return
        pages = -(-nbytes // self.page_size)
        self.pages += pages
        self.zero_pages += pages
        if self.extents is not None:
            self._add(0, nbytes, True)
        self.address += nbytes
        self.advance(nbytes)

    def advance(self, nbytes: int) -> None:
        if self.progress is not None and nbytes:
            self.progress(nbytes)


def scan_buffer(
    buf: Any,
    *,
    page_size: int = 4096,
    progress: ProgressCallback | None = None,
    name: str = "<buffer>",
) -> ScanResult:
    """Count the zero pages of a buffer already in memory.

    Parameters
    ----------
    buf : buffer
        Any C-contiguous object with the buffer protocol (bytes, bytearray,
        memoryview, mmap, numpy array), of any length.
    page_size : int, default 4096
        A power of two from 1 KiB to 2 MiB.
    progress : callable, optional
        Called with the number of bytes just checked, once per window.
    name : str, default "<buffer>"
        Stored as ``ScanResult.path``.

    Returns
    -------
    ScanResult

    Raises
    ------
    TypeError
        ``buf`` does not support the buffer protocol.
    ValueError
        ``page_size`` is invalid, or ``buf`` is not C-contiguous.

    Examples
    --------
    >>> r = scan_buffer(bytes(4096) + b"\\0\\1")
    >>> r.pages, r.zero_pages, r.partial_page_bytes
    (2, 1, 2)
    """
    ps = _kernels.check_page_size(page_size)
    start = time.perf_counter()
    with memoryview(buf) as raw:
        if not raw.c_contiguous:
            raise ValueError("buf must be C-contiguous")
        counter = _Counter(ps, progress)
        with raw.cast("B") as view:
            for offset in range(0, len(view), WINDOW_BYTES):
                with view[offset : offset + WINDOW_BYTES] as piece:
                    counter.check(piece)
    return ScanResult(
        path=name,
        size=counter.bytes_read,
        page_size=ps,
        pages=counter.pages,
        zero_pages=counter.zero_pages,
        bytes_read=counter.bytes_read,
        seconds=time.perf_counter() - start,
        method="buffer",
    )


STDIN = "-"
"""The path that :func:`scan_file` reads as standard input."""


def scan_file(
    path: str | os.PathLike[str],
    *,
    page_size: int = 4096,
    progress: ProgressCallback | None = None,
    method: ScanMethod = "auto",
    window: int = WINDOW_BYTES,
    length: int | None = None,
    extents: bool = False,
) -> ScanResult:
    """Count the zero pages of a file, block device or memory dump, in constant memory.

    Parameters
    ----------
    path : str or os.PathLike
        A regular file, a block device, ``"-"`` for standard input, or anything
        ``open`` can read to its end (a pipe, ``/proc/...``). An ELF core dump
        is scanned through its ``PT_LOAD`` segments, by guest physical address;
        disk-image containers, kdump-compressed dumps and QEMU migration
        streams are refused (:mod:`multifd_zero.tools.formats`).
    page_size : int, default 4096
        A power of two from 1 KiB to 2 MiB. For a comparison with QEMU use the
        target page size (4096 on x86), not the host huge page size.
    progress : callable, optional
        Called with the number of bytes just processed (holes included), about
        once per window: ``tqdm.update`` fits.
    method : {"auto", "mmap", "read"}, default "auto"
        ``mmap`` maps one window at a time and skips holes; ``read`` reads
        sequentially into a reused buffer; ``auto`` maps regular files and block
        devices and falls back to ``read`` when mapping fails or the size is
        unknown. A regular file of size 0 is always read (it is empty, or a
        pseudo-file such as ``/proc/self/mem`` whose size is not its length).
    window : int, default WINDOW_BYTES
        Bytes per mapped window, rounded down to whole pages (at least one).
    length : int, optional
        Scan at most this many bytes of a raw file. Required for a character
        device (``/dev/zero`` never ends).
    extents : bool, default False
        Also return the runs of zero and data pages (``ScanResult.extents``).

    Returns
    -------
    ScanResult

    Raises
    ------
    FileNotFoundError, PermissionError, IsADirectoryError, OSError
        The path cannot be opened or read. A directory raises
        ``IsADirectoryError``.
    FileChangedError
        The file shrank while it was scanned (an ``OSError``).
    FileFormatError
        The file is a container, not memory (a ``ValueError``).
    ValueError
        Bad ``page_size``, ``method``, ``window`` or ``length``, a character
        device without ``length``, or ``method="mmap"`` on a file whose size
        is unknown.

    Notes
    -----
    A mapped file that shrinks while it is scanned would end the process with
    SIGBUS when a page past its new end is touched; every mapped window is
    checked under a SIGBUS guard (``multifd_zero._kernels.mapped_page_mask``),
    so a shrinking file raises :class:`~multifd_zero.errors.FileChangedError`
    with both methods.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as f:
    ...     _ = f.write(bytes(3 * 4096) + b"\\1")
    ...     f.flush()
    ...     r = scan_file(f.name)
    >>> r.pages, r.zero_pages, r.normal_pages
    (4, 3, 1)
    """
    ps = _kernels.check_page_size(page_size)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(_METHODS)}, not {method!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    if length is not None and (
        isinstance(length, bool) or not isinstance(length, int) or length < 0
    ):
        raise ValueError(f"length must be an int of at least 0, got {length!r}")
    window = max(window // ps, 1) * ps
    name = os.fspath(path)
    stdin = name == STDIN
    fd = 0 if stdin else os.open(name, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    if stdin:
        name = "<stdin>"
    counter = _Counter(ps, progress, extents)
    file_format = "raw"
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), name)
        if stat.S_ISCHR(info.st_mode) and length is None:
            raise ValueError(
                f"{name}: a character device has no end; give the length to scan "
                "(--length on the command line)"
            )
        size = _known_size(fd, info)
        if method == "mmap" and size is None:
            raise ValueError(f"{name}: the size is unknown, so it cannot be mapped")
        if size:
            file_format = sniff(os.pread(fd, SNIFF_BYTES, 0), name)
        if file_format == "raw" and size is not None and length is not None:
            size = min(size, length)
        # A regular file of size 0 is read: it is empty, or a /proc or /sys
        # pseudo-file whose size says nothing about its contents.
        use_mmap = size is not None and size > 0 and method != "read" and _mappable(fd, size)
        if method == "mmap" and not use_mmap and size != 0:
            raise OSError(errno.ENODEV, "the file cannot be mapped", name)
        start = time.perf_counter()
        try:
            if file_format == "elf" and size is not None:
                segments = elf_segments(lambda at, n: os.pread(fd, n, at), size, name)
                for segment in segments:
                    _scan_segment(fd, segment, window, counter, use_mmap)
                scanned = sum(s.memsz for s in segments)
            elif use_mmap and size is not None:
                _scan_mapped(fd, size, window, counter)
                scanned = size
            else:
                scanned = _scan_read(fd, counter, size, length, name)
        except _ShrankError:
            raise FileChangedError(
                errno.EIO, "the file shrank while it was read (changed under the scan)", name
            ) from None
        seconds = time.perf_counter() - start
    finally:
        if not stdin:
            os.close(fd)
    return ScanResult(
        path=name,
        size=scanned,
        page_size=ps,
        pages=counter.pages,
        zero_pages=counter.zero_pages,
        bytes_read=counter.bytes_read,
        seconds=seconds,
        method="mmap" if use_mmap else "read",
        format=file_format,
        extents=tuple(counter.extents) if counter.extents is not None else None,
    )


def read_image(
    path: str | os.PathLike[str], page_size: int, progress: ProgressCallback | None = None
) -> mmap.mmap:
    """Read a raw RAM image into fresh anonymous memory, for a migration's source.

    Read rather than mapped, so that an image that shrinks while it is read
    is an error, not SIGBUS.

    Raises
    ------
    ValueError
        The size is 0 or not a multiple of ``page_size``; the file is a
        container (:class:`~multifd_zero.errors.FileFormatError`).
    FileChangedError
        The file shrank while it was read.
    OSError
        It cannot be opened or read.
    """
    ps = _kernels.check_page_size(page_size)
    name = os.fspath(path)
    with open(name, "rb", buffering=0) as f:
        fd = f.fileno()
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), name)
        size = _known_size(fd, info) or 0
        if size == 0 or size % ps:
            raise ValueError(
                f"{name} holds {size} bytes, not a positive multiple of the page size {ps}"
            )
        if sniff(os.pread(fd, SNIFF_BYTES, 0), name) != "raw":
            raise FileFormatError(f"{name}: an ELF dump; migrate reads raw images only")
        memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        done = 0
        with memoryview(memory) as view:
            while done < size:
                with view[done : done + 4 * READ_CHUNK_BYTES] as piece:
                    n = os.preadv(fd, [piece], done)
                if n == 0:
                    break
                done += n
                if progress is not None:
                    progress(n)
        if done < size:
            memory.close()
            raise FileChangedError(
                errno.EIO, f"the file shrank to {done} bytes while it was read", name
            )
    return memory


def _known_size(fd: int, info: os.stat_result) -> int | None:
    """The size of a regular file or a block device; None for anything else."""
    if stat.S_ISREG(info.st_mode):
        return info.st_size
    if stat.S_ISBLK(info.st_mode):
        size = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, 0, os.SEEK_SET)
        return size
    return None


def _mappable(fd: int, size: int) -> bool:
    """True if the first page of the file can be mapped for reading."""
    try:
        probe = mmap.mmap(fd, min(size, mmap.PAGESIZE), access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return False
    probe.close()
    return True


def _data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """Yield ``(start, end)`` byte ranges that may hold data; the rest is holes.

    Uses ``SEEK_DATA``/``SEEK_HOLE``; where they are not supported the whole
    file is one extent.
    """
    seek_data = getattr(os, "SEEK_DATA", None)
    seek_hole = getattr(os, "SEEK_HOLE", None)
    if seek_data is None or seek_hole is None:
        yield 0, size
        return
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, seek_data)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no data after pos
                yield pos, size
            return
        if start >= size:
            return
        try:
            end = min(os.lseek(fd, start, seek_hole), size)
        except OSError:
            end = size
        if end <= start:  # a file system that answers nonsense: read the rest
            yield start, size
            return
        yield start, end
        pos = end


def _page_ranges(fd: int, size: int, page_size: int) -> Iterator[tuple[int, int]]:
    """Byte ranges, on page boundaries (or the end), that cover every data extent.

    Holes shorter than :data:`HOLE_MERGE_BYTES` are read rather than skipped:
    one more mapping costs more than reading them.
    """
    current: tuple[int, int] | None = None
    for start, end in _data_extents(fd, size):
        lo = start - start % page_size
        hi = min(-(-end // page_size) * page_size, size)
        if current is not None and lo - current[1] < HOLE_MERGE_BYTES:
            current = (current[0], max(current[1], hi))
            continue
        if current is not None:
            yield current
        current = (lo, hi)
    if current is not None:
        yield current


def _check_mapped(fd: int, offset: int, length: int, counter: _Counter) -> None:
    """Map ``length`` bytes of ``fd`` from ``offset`` and check them under the guard."""
    base = offset - offset % mmap.ALLOCATIONGRANULARITY
    try:
        mapped = mmap.mmap(fd, offset - base + length, access=mmap.ACCESS_READ, offset=base)
    except ValueError:  # "mmap length is greater than file size": it shrank
        raise _ShrankError from None
    try:
        with memoryview(mapped) as view, view[offset - base :] as piece:
            counter.check(piece, mapped=True)
    finally:
        mapped.close()


def _scan_mapped(fd: int, size: int, window: int, counter: _Counter) -> None:
    done = 0
    for lo, hi in _page_ranges(fd, size, counter.page_size):
        counter.hole(lo - done)
        offset = lo
        while offset < hi:
            length = min(window, hi - offset)
            _check_mapped(fd, offset, length, counter)
            offset += length
        done = hi
    counter.hole(size - done)


def _scan_segment(
    fd: int, segment: LoadSegment, window: int, counter: _Counter, use_mmap: bool
) -> None:
    """The pages of one ELF ``PT_LOAD`` segment, aligned on guest physical pages."""
    ps = counter.page_size
    lead = segment.paddr % ps
    offset, left = segment.offset, segment.filesz
    counter.seek(segment.paddr - lead, segment.offset - segment.paddr)
    if lead:
        # The segment starts inside a page: the bytes before it read as zero.
        first = bytearray(ps)
        part = os.pread(fd, min(ps - lead, left), offset)
        if len(part) < min(ps - lead, left):
            raise _ShrankError
        first[lead : lead + len(part)] = part
        with memoryview(first) as view:
            counter.delta = None
            counter.check(view)
            counter.delta = segment.offset - segment.paddr
        offset, left = offset + len(part), left - len(part)
    buf = None if use_mmap else bytearray(window)
    while left > 0:
        length = min(window, left)
        if buf is None:
            _check_mapped(fd, offset, length, counter)
        else:
            with memoryview(buf) as view, view[:length] as piece:
                if os.preadv(fd, [piece], offset) != length:
                    raise _ShrankError
                counter.check(piece)
        offset, left = offset + length, left - length
    checked = -(-(lead + segment.filesz) // ps) * ps if segment.filesz else 0
    counter.seek(segment.paddr - lead + checked, None)
    counter.hole(lead + segment.memsz - checked)  # the zeros past the file's part


def _scan_read(fd: int, counter: _Counter, size: int | None, length: int | None, name: str) -> int:
    """Read ``fd`` to its end (or ``length``) in whole chunks; return the bytes read.

    With a known ``size`` (a regular file or a device), ending before it means
    the file shrank.
    """
    chunk = max(READ_CHUNK_BYTES, counter.page_size)
    limit = size if size else length
    buf = bytearray(chunk)
    total = 0
    with memoryview(buf) as view:
        while limit is None or total < limit:
            want = chunk if limit is None else min(chunk, limit - total)
            filled = 0
            while filled < want:  # whole chunks, so that no page is split
                n = os.readv(fd, [view[filled:want]])
                if n == 0:
                    break
                filled += n
            if total == 0 and filled:
                kind = sniff(bytes(view[: min(filled, SNIFF_BYTES)]), name)
                if kind != "raw":
                    raise FileFormatError(
                        f"{name}: an ELF core dump read from a pipe; scan the file itself "
                        "(its segments are found by seeking)"
                    )
            if filled:
                counter.check(view[:filled])
                total += filled
            if filled < want:
                if size:
                    raise _ShrankError
                return total
    return total
