"""A batch of pages of one RAM block, as a multifd channel sends it."""

from __future__ import annotations

from typing import Any

from . import _kernels
from ._checks import OffsetArray, as_offsets, check_int, check_offsets, check_type
from .ramblock import RAMBlock

__all__ = ["MULTIFD_PACKET_SIZE", "MultiFDPages", "multifd_ram_page_count"]

MULTIFD_PACKET_SIZE = 512 * 1024
"""Bytes of guest memory one multifd packet carries at most (QEMU's constant)."""


def multifd_ram_page_count(page_size: int = 4096) -> int:
    """Return the pages one packet holds: ``MULTIFD_PACKET_SIZE // page_size`` (128 for 4 KiB).

    At least 1, so that huge pages still form batches of one.
    """
    return max(1, MULTIFD_PACKET_SIZE // _kernels.check_page_size(page_size))


class MultiFDPages:
    """QEMU's ``MultiFDPages_t``: the offsets of up to ``page_count`` pages of one block.

    After :func:`~multifd_zero.send_zero_page_detect`, ``offset[:normal_num]``
    are the normal pages and ``offset[normal_num:]`` the zero pages, in QEMU's
    order.

    Parameters
    ----------
    block : RAMBlock
        Every page of a batch belongs to this block.
    offsets : sequence of int or numpy integer array
        Byte offsets of the pages, page-aligned and inside the block, in queue
        order. Copied.
    page_count : int, optional
        The batch capacity (QEMU's ``pages_alloc``); by default
        :func:`multifd_ram_page_count` of the block's page size.

    Raises
    ------
    TypeError
        ``block`` is not a RAMBlock, or offsets are not integers.
    ValueError
        An offset is negative, misaligned or outside the block, or there are
        more offsets than ``page_count``.

    Examples
    --------
    >>> block = RAMBlock("pc.ram", bytes(4 * 4096))
    >>> pages = MultiFDPages(block, [0, 8192])
    >>> pages.num, pages.offset.dtype
    (2, dtype('uint64'))
    """

    def __init__(self, block: RAMBlock, offsets: Any, *, page_count: int | None = None) -> None:
        check_type("block", block, RAMBlock)
        if page_count is None:
            capacity = multifd_ram_page_count(block.page_size)
        else:
            capacity = check_int("page_count", page_count, 1)
        offs = as_offsets(offsets)
        if offs.size > capacity:
            raise ValueError(f"{offs.size} offsets do not fit a batch of page_count={capacity}")
        check_offsets(offs, block.used_length, block.page_size)
        self._block = block
        self._page_count = capacity
        self._offset = offs
        self._normal_num = 0
        self._detected = False

    @property
    def block(self) -> RAMBlock:
        """The RAM block the pages belong to."""
        return self._block

    @property
    def offset(self) -> OffsetArray:
        """The page offsets (``uint64``); reordered in place by detection."""
        return self._offset

    @property
    def num(self) -> int:
        """Pages in the batch."""
        return int(self._offset.size)

    @property
    def page_count(self) -> int:
        """The batch capacity."""
        return self._page_count

    @property
    def normal_num(self) -> int:
        """Normal pages after detection (0 before it, as in QEMU)."""
        return self._normal_num

    @property
    def zero_num(self) -> int:
        """Zero pages after detection."""
        self._require_detected()
        return self.num - self._normal_num

    @property
    def detected(self) -> bool:
        """True once detection has run on this batch."""
        return self._detected

    @property
    def normal(self) -> OffsetArray:
        """Read-only view of the normal pages' offsets, after detection."""
        self._require_detected()
        return _readonly(self._offset[: self._normal_num])

    @property
    def zero(self) -> OffsetArray:
        """Read-only view of the zero pages' offsets, after detection."""
        self._require_detected()
        return _readonly(self._offset[self._normal_num :])

    def normal_data(self) -> bytearray:
        """Return the normal pages' bytes, in ``normal`` order (what nocomp sends)."""
        normal = self.normal
        out = bytearray(normal.size * self._block.page_size)
        _kernels.gather_pages(self._block.host, normal, out, self._block.page_size)
        return out

    def _set_normal_num(self, normal_num: int) -> None:
        self._normal_num = normal_num
        self._detected = True

    def _require_detected(self) -> None:
        if not self._detected:
            raise RuntimeError("zero-page detection has not run on this batch yet")

    def __len__(self) -> int:
        return self.num

    def __repr__(self) -> str:
        state = f"normal_num={self._normal_num}" if self._detected else "not detected"
        return f"MultiFDPages({self._block.idstr!r}, num={self.num}, {state})"


def _readonly(view: OffsetArray) -> OffsetArray:
    out: OffsetArray = view.view()
    out.flags.writeable = False
    return out
