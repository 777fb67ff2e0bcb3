"""The source side: zero-page detection for a batch, and the legacy check."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _kernels
from ._offsets import OffsetArray, as_offsets, check_offsets
from .options import MigrationOptions, ZeroPageDetection
from .pages import MultiFDPages
from .ramblock import RAMBlock
from .stats import MigrationStats

__all__ = ["save_zero_pages", "send_zero_page_detect"]


def _check_common(options: object, stats: object, in_postcopy: object) -> None:
    if not isinstance(options, MigrationOptions):
        raise TypeError(f"options must be a MigrationOptions, not {type(options).__name__}")
    if not isinstance(stats, MigrationStats):
        raise TypeError(f"stats must be a MigrationStats, not {type(stats).__name__}")
    if not isinstance(in_postcopy, bool):
        raise TypeError(f"in_postcopy must be a bool, not {type(in_postcopy).__name__}")


def _releases(options: MigrationOptions, in_postcopy: bool) -> bool:
    # QEMU's ram_release_page does nothing unless release-ram is on and the
    # source is in postcopy.
    return options.release_ram and in_postcopy


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
    if not isinstance(pages, MultiFDPages):
        raise TypeError(f"pages must be a MultiFDPages, not {type(pages).__name__}")
    _check_common(options, stats, in_postcopy)
    block = pages.block
    if options.zero_page_detection is ZeroPageDetection.MULTIFD:
        normal_num = int(
            _kernels.partition_zero_pages(block.host, pages.offset, block.page_size)
        )
    else:
        normal_num = pages.num
    pages._set_normal_num(normal_num)
    zero_num = pages.num - normal_num
    stats.add(normal_pages=normal_num, zero_pages=zero_num)
    if zero_num and _releases(options, in_postcopy):
        # The zero region holds pages in reverse order of discovery.
        block.release_pages(pages.zero[::-1])
    return normal_num


def save_zero_pages(
    block: RAMBlock,
    offsets: Any,
    *,
    options: MigrationOptions,
    stats: MigrationStats,
    in_postcopy: bool = False,
) -> tuple[OffsetArray, OffsetArray]:
    """Legacy detection on the main migration thread, for a run of queued pages.

    QEMU's ``save_zero_page``, applied to each offset in order:

    - ``legacy``: a zero page counts in ``stats.zero_pages``, is released
      under the release rule and goes over the main channel as a zero record
      (see :func:`~multifd_zero.recv_legacy_zero_pages`); the other pages are
      returned for the multifd channels, which count them as normal.
    - ``none``: nothing is checked; every page is returned as normal.
    - ``multifd``: the main thread does not check (the channels do); every
      page is returned as normal.

    Parameters
    ----------
    block : RAMBlock
    offsets : sequence of int or numpy integer array
        Page-aligned byte offsets inside the block.
    options : MigrationOptions
    stats : MigrationStats
    in_postcopy : bool, default False

    Returns
    -------
    (normal, zero) : tuple of numpy.ndarray
        ``uint64`` offsets of the pages to queue to multifd and of the zero
        pages, each in the input order.
    """
    if not isinstance(block, RAMBlock):
        raise TypeError(f"block must be a RAMBlock, not {type(block).__name__}")
    _check_common(options, stats, in_postcopy)
    offs = as_offsets(offsets)
    check_offsets(offs, block.used_length, block.page_size)
    if options.zero_page_detection is not ZeroPageDetection.LEGACY:
        return offs, np.zeros(0, dtype=np.uint64)
    mask = _kernels.scan_zero_pages(block.host, offs, block.page_size)
    zero = offs[mask]
    stats.add(zero_pages=int(zero.size))
    if zero.size and _releases(options, in_postcopy):
        block.release_pages(zero)
    return offs[~mask], zero
