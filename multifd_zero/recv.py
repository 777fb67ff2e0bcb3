"""The destination side: applying zero pages and normal pages to a RAM block."""

from __future__ import annotations

from typing import Any

from . import _kernels
from ._offsets import as_offsets, check_offsets
from .options import MigrationOptions
from .ramblock import RAMBlock

__all__ = ["recv_legacy_zero_pages", "recv_normal_pages", "recv_zero_page_process"]


def _checked(block: object, offsets: Any, name: str) -> Any:
    if not isinstance(block, RAMBlock):
        raise TypeError(f"block must be a RAMBlock, not {type(block).__name__}")
    block.check_writable()
    offs = as_offsets(offsets, name)
    check_offsets(offs, block.used_length, block.page_size, name)
    return offs


def recv_zero_page_process(
    block: RAMBlock, zero_offsets: Any, *, options: MigrationOptions
) -> int:
    """Apply a packet's zero pages, as a multifd receiver channel does.

    QEMU's ``multifd_recv_zero_page_process``, for each offset in order:

    1. ``received`` = the page's receivedmap bit;
    2. if ``options.postcopy_ram`` or ``received``: write zeros over the page;
    3. if not ``received``: set the bit (atomically).

    So in precopy a zero page arriving for the first time is neither read nor
    written: fresh destination memory is assumed zero and stays untouched
    (unpopulated, for anonymous memory). A page received before (it changed on
    the source since) is zeroed. With postcopy-ram every zero page is written,
    so that no page is marked received without being populated (QEMU 10.1,
    commit 249543d0c0: otherwise a postcopy fault on it is never served).

    Parameters
    ----------
    block : RAMBlock
        The destination block; must be writable.
    zero_offsets : sequence of int or numpy integer array
        Page-aligned byte offsets inside the block.
    options : MigrationOptions

    Returns
    -------
    int
        Pages written with zeros.

    Raises
    ------
    TypeError, ValueError
        Bad arguments, a read-only block, or an offset out of range or
        misaligned; raised before any page or bit changes.
    """
    if not isinstance(options, MigrationOptions):
        raise TypeError(f"options must be a MigrationOptions, not {type(options).__name__}")
    offs = _checked(block, zero_offsets, "zero_offsets")
    mode = _kernels.ZERO_ALWAYS if options.postcopy_ram else _kernels.ZERO_IF_RECEIVED
    return int(
        _kernels.recv_zero_pages(
            block.host, block.receivedmap.bitmap, offs, block.page_size, mode
        )
    )


def recv_normal_pages(block: RAMBlock, offsets: Any, data: Any) -> int:
    """Write a packet's normal pages and mark them received.

    Page ``k`` of ``data`` lands at ``offsets[k]``; as in QEMU's nocomp
    receiver, each page's receivedmap bit is set as its data is placed.

    Parameters
    ----------
    block : RAMBlock
        The destination block; must be writable.
    offsets : sequence of int or numpy integer array
        Page-aligned byte offsets inside the block.
    data : buffer
        Exactly ``len(offsets) * block.page_size`` bytes, C-contiguous.

    Returns
    -------
    int
        Pages written.
    """
    offs = _checked(block, offsets, "offsets")
    return int(
        _kernels.recv_normal_pages(
            block.host, block.receivedmap.bitmap, offs, data, block.page_size
        )
    )


def recv_legacy_zero_pages(block: RAMBlock, offsets: Any) -> int:
    """Apply zero-page records of the legacy stream (QEMU's ``ram_handle_zero``).

    Unlike multifd, the legacy receiver reads the page first and writes zeros
    only if it is not already zero; every page is marked received.

    Returns
    -------
    int
        Pages written with zeros.
    """
    offs = _checked(block, offsets, "offsets")
    return int(
        _kernels.recv_zero_pages(
            block.host, block.receivedmap.bitmap, offs, block.page_size,
            _kernels.ZERO_IF_NONZERO,
        )
    )
