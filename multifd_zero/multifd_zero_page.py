"""QEMU's ``migration/multifd-zero-page.c``: both halves of multifd zero-page handling.

- Source: :func:`send_zero_page_detect` is ``multifd_send_zero_page_detect``,
  the two-pointer pass that moves a batch's normal pages to the front and its
  zero pages to the back.
- Destination: :func:`recv_zero_page_process` is
  ``multifd_recv_zero_page_process`` (a zero page is written only when it was
  received before, or always under postcopy-ram), and
  :func:`recv_normal_pages` places the packet's normal pages, as the nocomp
  receiver of ``migration/multifd-nocomp.c`` does.

The legacy path, where the main migration thread finds zero pages, is in
:mod:`multifd_zero.ram`.
"""

from __future__ import annotations

from typing import Any

from . import _kernels
from ._checks import check_type
from ._zero_page_rules import check_common, destination_offsets, releases
from .options import MigrationOptions, ZeroPageDetection
from .pages import MultiFDPages
from .ramblock import RAMBlock
from .stats import MigrationStats

__all__ = ["recv_normal_pages", "recv_zero_page_process", "send_zero_page_detect"]


def send_zero_page_detect(
    pages: MultiFDPages,
    *,
    options: MigrationOptions,
    stats: MigrationStats,
    in_postcopy: bool = False,
) -> int:
    """Split a batch into normal and zero pages, as a multifd sender channel does.

    QEMU's ``multifd_send_zero_page_detect``:

    - ``multifd`` detection: every page is tested once; normal pages move to
      the front of ``pages.offset`` and zero pages to the back, in exactly
      QEMU's order; each zero page is released (see below).
    - ``none`` or ``legacy``: nothing is tested here and every page counts as
      normal (with ``legacy``, zero pages were already taken out on the main
      thread by :func:`save_zero_pages`).

    Then ``stats`` gains ``normal_num`` normal pages and ``num - normal_num``
    zero pages, for every batch whatever the mode.

    Release rule: with ``options.release_ram`` and ``in_postcopy``, the zero
    pages are passed to :meth:`RAMBlock.release_pages` in the order QEMU calls
    ``ram_release_page`` on them. (Since QEMU 10.1 multifd is not used once
    in postcopy, so in QEMU this is a no-op in practice.)

    Parameters
    ----------
    pages : MultiFDPages
        The batch; reordered in place.
    options : MigrationOptions
    stats : MigrationStats
    in_postcopy : bool, default False
        Whether the source is in a postcopy state.

    Returns
    -------
    int
        ``pages.normal_num``.

    Raises
    ------
    TypeError
        An argument of the wrong type; nothing is changed.

    Examples
    --------
    >>> block = RAMBlock("pc.ram", bytes(4096) + b"\\x01" * 4096)
    >>> pages = MultiFDPages(block, [0, 4096])
    >>> stats = MigrationStats()
    >>> send_zero_page_detect(pages, options=MigrationOptions(), stats=stats)
    1
    >>> pages.normal.tolist(), pages.zero.tolist(), stats
    ([4096], [0], MigrationStats(normal_pages=1, zero_pages=1))
    """
    check_type("pages", pages, MultiFDPages)
    check_common(options, stats, in_postcopy)
    block = pages.block
    if options.zero_page_detection is ZeroPageDetection.MULTIFD:
        normal_num = int(_kernels.partition_zero_pages(block.host, pages.offset, block.page_size))
    else:
        normal_num = pages.num
    pages._set_normal_num(normal_num)
    zero_num = pages.num - normal_num
    stats.add(normal_pages=normal_num, zero_pages=zero_num)
    if zero_num and releases(options, in_postcopy):
        # The zero region holds pages in reverse order of discovery.
        block.release_pages(pages.zero[::-1])
    return normal_num


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
    (unpopulated, for anonymous memory). That holds only for a block whose
    memory is known to be zero (``block.fresh``); for any other, such a page
    is read and zeroed only if it is not zero (the ``buffer_is_zero`` check
    of ``ram_handle_zero``), so old data never survives. A page received before (it changed on
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
    check_type("options", options, MigrationOptions)
    offs = destination_offsets(block, zero_offsets, "zero_offsets")
    if options.postcopy_ram:
        mode = _kernels.ZERO_ALWAYS
    elif block.fresh:
        mode = _kernels.ZERO_IF_RECEIVED
    else:
        mode = _kernels.ZERO_IF_RECEIVED_OR_NONZERO
    return int(
        _kernels.recv_zero_pages(
            block.host, block.receivedmap.bitmap, offs, block.page_size, mode, "zero_offsets"
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
    offs = destination_offsets(block, offsets, "offsets")
    return int(
        _kernels.recv_normal_pages(
            block.host, block.receivedmap.bitmap, offs, data, block.page_size
        )
    )
