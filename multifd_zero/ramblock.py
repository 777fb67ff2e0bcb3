"""RAM blocks and their receivedmap."""

from __future__ import annotations

import mmap
import operator
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _kernels
from ._checks import OffsetArray, as_offsets, check_int, check_offsets

__all__ = ["RAMBlock", "ReceivedMap"]

ReleaseCallback = Callable[[OffsetArray], object]

_HOST_PAGE = mmap.PAGESIZE


class ReceivedMap:
    """One bit per page of a RAM block: set once the page has been received.

    QEMU's ``RAMBlock.receivedmap``. Methods take byte offsets, as QEMU's
    ``ramblock_recv_bitmap_test_byte_offset`` and ``ramblock_recv_bitmap_set_offset``
    do. Bits are set and cleared atomically, so channels on several threads
    may share one map.

    Parameters
    ----------
    num_pages : int
        Pages covered.
    page_size : int
        Bytes per page.

    Examples
    --------
    >>> rmap = ReceivedMap(num_pages=8, page_size=4096)
    >>> rmap.set(8192)
    False
    >>> rmap.test(8192), rmap.test(4096), rmap.count()
    (True, False, 1)
    """

    def __init__(self, num_pages: int, page_size: int) -> None:
        self._page_size = _kernels.check_page_size(page_size)
        self._shift = self._page_size.bit_length() - 1
        self._num_pages = check_int("num_pages", num_pages, 0)
        if self._num_pages * self._page_size > sys.maxsize:
            raise ValueError(
                f"num_pages {self._num_pages} of {self._page_size} bytes is more memory "
                "than this machine can address"
            )
        self._bitmap = np.zeros((self._num_pages + 63) // 64, dtype=np.uint64)

    @property
    def bitmap(self) -> npt.NDArray[np.uint64]:
        """The raw bitmap: ``uint64`` words, page ``i`` at bit ``i % 64`` of word ``i // 64``.

        This is the array itself, shared with the kernels (QEMU's unsigned-long
        words on a 64-bit little-endian host).
        """
        return self._bitmap

    @property
    def num_pages(self) -> int:
        """Pages covered by the map."""
        return self._num_pages

    @property
    def page_size(self) -> int:
        """Bytes per page."""
        return self._page_size

    def _bit(self, offset: int) -> int:
        if isinstance(offset, bool):
            raise TypeError("offset must be an int, not bool")
        try:
            off = operator.index(offset)
        except TypeError:
            raise TypeError(f"offset must be an int, not {type(offset).__name__}") from None
        if off < 0 or off >= self._num_pages * self._page_size:
            raise ValueError(
                f"offset {off} is outside the block's {self._num_pages * self._page_size} bytes"
            )
        if off & (self._page_size - 1):
            raise ValueError(f"offset {off} is not a multiple of page_size {self._page_size}")
        return off >> self._shift

    def test(self, offset: int) -> bool:
        """Return True if the page at byte ``offset`` has been received."""
        return bool(_kernels.bitmap_test(self._bitmap, self._bit(offset)))

    def set(self, offset: int) -> bool:
        """Mark the page at byte ``offset`` received (atomically); return the old value."""
        return bool(_kernels.bitmap_set(self._bitmap, self._bit(offset)))

    def clear(self, offset: int) -> bool:
        """Mark the page at byte ``offset`` not received (atomically); return the old value."""
        return bool(_kernels.bitmap_clear(self._bitmap, self._bit(offset)))

    def count(self) -> int:
        """Return the number of pages marked received."""
        return int(_kernels.bitmap_count(self._bitmap))

    def received_offsets(self) -> OffsetArray:
        """Return the byte offsets of every received page, ascending."""
        bits = np.unpackbits(self._bitmap.view(np.uint8), bitorder="little")
        pages = np.flatnonzero(bits[: self._num_pages]).astype(np.uint64)
        offsets: OffsetArray = pages << np.uint64(self._shift)
        return offsets

    def __len__(self) -> int:
        return self._num_pages

    def __repr__(self) -> str:
        return f"ReceivedMap(num_pages={self._num_pages}, received={self.count()})"


class RAMBlock:
    """A named region of guest RAM, as QEMU's ``RAMBlock``.

    Parameters
    ----------
    idstr : str
        The block's name (QEMU's ``idstr``, e.g. ``"pc.ram"``): 1 to 255 bytes
        of UTF-8 with no NUL, so that it fits the 256-byte name of a multifd
        packet.
    host : buffer
        The block's memory: any C-contiguous buffer (bytes, bytearray,
        memoryview, mmap, numpy array). Its length, ``used_length``, must be a
        multiple of ``page_size``. A source block may be read-only (bytes);
        writing into a read-only block raises ``ValueError``.
    page_size : int, default 4096
        The target page size: a power of two from 1 KiB to 2 MiB.
    on_release : callable, optional
        Called as ``on_release(offsets)`` once per batch with the zero pages
        that QEMU's ``ram_release_page`` would discard (``release-ram`` while
        in postcopy), in the order QEMU releases them. Without it an ``mmap``
        host has those pages discarded (see :meth:`release_pages`); any other
        host is left alone.
    fresh : bool, default False
        True when every page not yet received is known to be zero: new
        anonymous memory, a new sparse file (:meth:`anonymous` makes such a
        block). Then, as QEMU assumes of its destination RAM, a zero page
        arriving for the first time in multifd precopy is neither read nor
        written, so untouched memory stays unpopulated. False, for any buffer
        given, makes such a page be read and zeroed only if it is not zero
        already (the ``buffer_is_zero`` check of QEMU's ``ram_handle_zero``),
        so a destination holding old data ends equal to the source.

    Raises
    ------
    TypeError
        Wrong types.
    ValueError
        A bad name, page size or length, or a host that is not C-contiguous.

    Examples
    --------
    >>> block = RAMBlock("pc.ram", bytearray(16 * 4096))
    >>> block.num_pages, block.used_length, len(block.receivedmap), block.fresh
    (16, 65536, 16, False)
    >>> RAMBlock.anonymous("pc.ram", 16 * 4096).fresh
    True
    """

    def __init__(
        self,
        idstr: str,
        host: Any,
        page_size: int = 4096,
        on_release: ReleaseCallback | None = None,
        *,
        fresh: bool = False,
    ) -> None:
        if not isinstance(fresh, bool):
            raise TypeError(f"fresh must be a bool, not {type(fresh).__name__}")
        if not isinstance(idstr, str):
            raise TypeError(f"idstr must be a str, not {type(idstr).__name__}")
        encoded = idstr.encode("utf-8")
        if not 1 <= len(encoded) <= 255 or b"\0" in encoded:
            raise ValueError(
                f"idstr must be 1 to 255 bytes of UTF-8 without NUL, got {idstr!r}"
            )
        self._page_size = _kernels.check_page_size(page_size)
        try:
            view = memoryview(host)
        except TypeError:
            raise TypeError(
                "host must support the buffer protocol (bytes, bytearray, memoryview, "
                f"mmap, numpy array), not {type(host).__name__}"
            ) from None
        with view:
            if not view.c_contiguous:
                raise ValueError("host must be C-contiguous")
            used_length = view.nbytes
            readonly = view.readonly
        if used_length % self._page_size:
            raise ValueError(
                f"host holds {used_length} bytes, not a multiple of page_size {self._page_size}"
            )
        if on_release is not None and not callable(on_release):
            raise TypeError(f"on_release must be callable, not {type(on_release).__name__}")
        self._idstr = idstr
        self._host = host
        self._used_length = used_length
        self._readonly = readonly
        self._on_release = on_release
        self._fresh = fresh
        self._receivedmap = ReceivedMap(used_length // self._page_size, self._page_size)

    @classmethod
    def anonymous(cls, idstr: str, size: int, page_size: int = 4096) -> RAMBlock:
        """A block on new private anonymous memory (``fresh``), as QEMU allocates guest RAM.

        Reading an untouched page maps the kernel's shared zero page; only a
        write allocates one.
        """
        size = check_int("size", size, 1)
        memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        return cls(idstr, memory, page_size, fresh=True)

    @property
    def fresh(self) -> bool:
        """True if the pages not yet received are known to be zero (see the class)."""
        return self._fresh

    @property
    def idstr(self) -> str:
        """The block's name."""
        return self._idstr

    @property
    def host(self) -> Any:
        """The buffer given as the block's memory."""
        return self._host

    @property
    def page_size(self) -> int:
        """Bytes per target page."""
        return self._page_size

    @property
    def used_length(self) -> int:
        """Bytes of memory in the block."""
        return self._used_length

    @property
    def num_pages(self) -> int:
        """Pages in the block."""
        return self._used_length // self._page_size

    @property
    def readonly(self) -> bool:
        """True if the host buffer cannot be written (a source-only block)."""
        return self._readonly

    @property
    def receivedmap(self) -> ReceivedMap:
        """The destination's record of received pages."""
        return self._receivedmap

    @property
    def on_release(self) -> ReleaseCallback | None:
        """The release callback, if any."""
        return self._on_release

    def page(self, offset: int) -> memoryview:
        """Return a read-only view of the page at byte ``offset``.

        Raises
        ------
        ValueError
            A bad offset, or a host that no longer holds ``used_length``
            bytes (a closed mmap, a bytearray that shrank).
        """
        offs = as_offsets([offset], "offset")
        check_offsets(offs, self._used_length, self._page_size, "offset")
        start = int(offs[0])
        try:
            view = memoryview(self._host).cast("B")
        except ValueError as exc:  # a closed mmap
            raise ValueError(f"RAMBlock {self._idstr!r}: its host is gone ({exc})") from None
        if view.nbytes != self._used_length:
            raise ValueError(
                f"RAMBlock {self._idstr!r}: its host now holds {view.nbytes} bytes, not the "
                f"block's {self._used_length}"
            )
        return view[start : start + self._page_size].toreadonly()

    def check_writable(self) -> None:
        """Raise ``ValueError`` if the host is read-only."""
        if self._readonly:
            raise ValueError(
                f"RAMBlock {self._idstr!r} wraps a read-only buffer "
                f"({type(self._host).__name__}); a destination block must be writable"
            )

    def release_pages(self, offsets: Any) -> None:
        """Discard pages the source no longer needs (QEMU's ``ram_discard_range``).

        With an ``on_release`` callback, that callback receives the offsets.
        Otherwise, for an ``mmap`` host, each page that covers whole host pages
        is discarded: ``MADV_REMOVE`` first (shared memory and shared file
        mappings, which QEMU discards with ``MADV_REMOVE`` or a punched hole),
        else ``MADV_DONTNEED`` (private mappings). Pages smaller than a host
        page cannot be discarded and are left, as QEMU's alignment check does.
        Any other host is left alone.
        """
        offs = as_offsets(offsets)
        check_offsets(offs, self._used_length, self._page_size)
        if self._on_release is not None:
            self._on_release(offs)
            return
        if not isinstance(self._host, mmap.mmap) or self._page_size % _HOST_PAGE:
            return
        remove = getattr(mmap, "MADV_REMOVE", None)
        for off in offs.tolist():
            try:
                if remove is None:
                    raise OSError("no MADV_REMOVE here")
                self._host.madvise(remove, off, self._page_size)
            except OSError:
                self._host.madvise(mmap.MADV_DONTNEED, off, self._page_size)

    def __repr__(self) -> str:
        return (
            f"RAMBlock({self._idstr!r}, {type(self._host).__name__} of {self._used_length} "
            f"bytes, page_size={self._page_size}{', fresh' if self._fresh else ''})"
        )
