"""Checks and rules shared by the multifd and the legacy zero-page paths."""

from __future__ import annotations

from typing import Any

from ._checks import OffsetArray, as_offsets, check_bool, check_offsets, check_type
from .options import MigrationOptions
from .ramblock import RAMBlock
from .stats import MigrationStats


def check_common(options: object, stats: object, in_postcopy: object) -> None:
    """The arguments every source-side call takes."""
    if type(options) is MigrationOptions and type(stats) is MigrationStats and (
        in_postcopy is False or in_postcopy is True
    ):
        return  # the usual case, on the hot path: no call per argument
    check_type("options", options, MigrationOptions)
    check_type("stats", stats, MigrationStats)
    check_bool("in_postcopy", in_postcopy)


def releases(options: MigrationOptions, in_postcopy: bool) -> bool:
    # QEMU's ram_release_page does nothing unless release-ram is on and the
    # source is in postcopy.
    return options.release_ram and in_postcopy


def destination_offsets(block: object, offsets: Any, name: str) -> OffsetArray:
    """A writable destination block and its offsets as ``uint64``, inside ``used_length``.

    This is the block's rule (a page lies inside QEMU's ``used_length``),
    checked here where the offsets enter. The receive kernel then checks its
    private copy against the buffer it is given: a guard that keeps C inside
    the buffer however the host may have been resized since.
    """
    check_type("block", block, RAMBlock)
    assert isinstance(block, RAMBlock)
    block.check_writable()
    offs = as_offsets(offsets, name, copy=False)
    check_offsets(offs, block.used_length, block.page_size, name)
    return offs
