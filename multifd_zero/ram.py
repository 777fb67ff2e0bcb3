"""QEMU's ``migration/ram.c`` legacy zero pages: found on the main thread, sent as records.

With ``zero-page-detection=legacy`` the main migration thread checks each
queued page (``save_zero_page``, :func:`save_zero_pages`) and sends a zero page
as a one-byte record on the main channel; the destination applies it
(``ram_handle_zero``, :func:`recv_legacy_zero_pages`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _kernels
from ._checks import OffsetArray, as_offsets, check_offsets, check_type
from ._zero_page_rules import check_common, destination_offsets, releases
from .options import MigrationOptions, ZeroPageDetection
from .ramblock import RAMBlock
from .stats import MigrationStats

__all__ = ["recv_legacy_zero_pages", "save_zero_pages"]


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
    check_type("block", block, RAMBlock)
    check_common(options, stats, in_postcopy)
    offs = as_offsets(offsets)
    if options.zero_page_detection is not ZeroPageDetection.LEGACY:
        # Nothing scans them here, so nothing else would check them.
        check_offsets(offs, block.used_length, block.page_size)
        return offs, np.zeros(0, dtype=np.uint64)
    mask = _kernels.scan_zero_pages(block.host, offs, block.page_size)
    zero = offs[mask]
    stats.add(zero_pages=int(zero.size))
    if zero.size and releases(options, in_postcopy):
        block.release_pages(zero)
    return offs[~mask], zero


def recv_legacy_zero_pages(block: RAMBlock, offsets: Any) -> int:
    """Apply zero-page records of the legacy stream (QEMU's ``ram_handle_zero``).

    Unlike multifd, the legacy receiver reads the page first and writes zeros
    only if it is not already zero; every page is marked received.

    Returns
    -------
    int
        Pages written with zeros.
    """
    offs = destination_offsets(block, offsets, "offsets")
    return int(
        _kernels.recv_zero_pages(
            block.host,
            block.receivedmap.bitmap,
            offs,
            block.page_size,
            _kernels.ZERO_IF_NONZERO,
        )
    )
