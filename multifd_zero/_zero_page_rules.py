"""Checks and rules shared by the multifd and the legacy zero-page paths."""

from __future__ import annotations

from typing import Any

from ._checks import OffsetArray, as_offsets, check_offsets
from .options import MigrationOptions
from .ramblock import RAMBlock
from .stats import MigrationStats


def check_common(options: object, stats: object, in_postcopy: object) -> None:
    if not isinstance(options, MigrationOptions):
        raise TypeError(f"options must be a MigrationOptions, not {type(options).__name__}")
    if not isinstance(stats, MigrationStats):
        raise TypeError(f"stats must be a MigrationStats, not {type(stats).__name__}")
    if not isinstance(in_postcopy, bool):
        raise TypeError(f"in_postcopy must be a bool, not {type(in_postcopy).__name__}")


def releases(options: MigrationOptions, in_postcopy: bool) -> bool:
    # QEMU's ram_release_page does nothing unless release-ram is on and the
    # source is in postcopy.
    return options.release_ram and in_postcopy


def checked_offsets(block: object, offsets: Any, name: str) -> OffsetArray:
    if not isinstance(block, RAMBlock):
        raise TypeError(f"block must be a RAMBlock, not {type(block).__name__}")
    block.check_writable()
    offs = as_offsets(offsets, name)
    check_offsets(offs, block.used_length, block.page_size, name)
    return offs
