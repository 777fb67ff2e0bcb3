"""The release rule without a callback: an ``mmap`` host really has zero pages discarded.

Residency is read with ``mincore(2)``. Python's ``mmap.mmap(-1, n)`` is a
shared anonymous (shmem) mapping, where only ``MADV_REMOVE`` frees a page
(``MADV_DONTNEED`` just unmaps it and the page stays in the page cache), so a
shared mapping shows that ``MADV_REMOVE`` is used; a private mapping
(``MAP_PRIVATE``) rejects ``MADV_REMOVE`` and needs the ``MADV_DONTNEED``
fallback.
"""

from __future__ import annotations

import ctypes
import mmap
import sys

import numpy as np
import pytest
from support.builders import LIBC, ctypes_address, resident

import multifd_zero as mz

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="mincore/MADV_REMOVE checks are Linux-only"
)

PS = mmap.PAGESIZE


class RecordingMmap(mmap.mmap):
    """An mmap that records every madvise call (and still performs it)."""

    def madvise(self, *args: int) -> None:
        self.calls.append(args)
        super().madvise(*args)


def make_source(flags: int, pattern: str, page_size: int = PS) -> RecordingMmap:
    """A source block: every page touched (resident); "N" pages hold data, "Z" are zero."""
    mm = RecordingMmap(-1, len(pattern) * page_size, flags=flags)
    mm.calls = []
    for p, kind in enumerate(pattern):
        mm[p * page_size] = 0xAB  # fault the page in
        if kind == "Z":
            mm[p * page_size] = 0
    return mm


def detect(mm: mmap.mmap, page_size: int, *, release_ram: bool, in_postcopy: bool) -> list[int]:
    """Run multifd detection over every page; return the zero offsets."""
    block = mz.RAMBlock("pc.ram", mm, page_size)
    pages = mz.MultiFDPages(block, [p * page_size for p in range(len(mm) // page_size)])
    mz.send_zero_page_detect(
        pages,
        options=mz.MigrationOptions(release_ram=release_ram),
        stats=mz.MigrationStats(),
        in_postcopy=in_postcopy,
    )
    return pages.zero.tolist()


@pytest.mark.parametrize("flags", [mmap.MAP_SHARED, mmap.MAP_PRIVATE], ids=["shared", "private"])
def test_zero_pages_of_an_mmap_host_are_discarded(flags: int) -> None:
    """release-ram in postcopy, no callback: zero pages leave memory, normal pages stay intact."""
    pattern = "ZNZZNNZN"
    mm = make_source(flags, pattern)
    try:
        before = bytes(mm)
        assert resident(mm, len(pattern)) == [1] * len(pattern)
        zero = detect(mm, PS, release_ram=True, in_postcopy=True)
        assert sorted(zero) == [p * PS for p, k in enumerate(pattern) if k == "Z"]
        assert resident(mm, len(pattern)) == [int(k == "N") for k in pattern]
        assert bytes(mm) == before  # discarded pages read back as zero
        # Shared memory is only freed by MADV_REMOVE; a private mapping needs MADV_DONTNEED.
        needed = mmap.MADV_REMOVE if flags == mmap.MAP_SHARED else mmap.MADV_DONTNEED
        assert sorted(call[1] for call in mm.calls if call[0] == needed) == sorted(zero)
        assert all(call[2] == PS for call in mm.calls)
    finally:
        mm.close()


def test_release_follows_qemu_order_on_mmap() -> None:
    """The madvise calls come in ram_release_page's order (discovery), one per zero page."""
    mm = make_source(mmap.MAP_SHARED, "ZNZNZ")
    try:
        detect(mm, PS, release_ram=True, in_postcopy=True)
        # Z0 first (slot 0), then Z4 swapped into slot 0, then Z2.
        assert [call[1] for call in mm.calls] == [0, 4 * PS, 2 * PS]
    finally:
        mm.close()


@pytest.mark.parametrize(
    ("release_ram", "in_postcopy"), [(False, False), (True, False), (False, True)]
)
def test_no_discard_unless_release_ram_in_postcopy(release_ram: bool, in_postcopy: bool) -> None:
    """Without both flags nothing is advised and every page stays resident."""
    pattern = "ZNZZ"
    mm = make_source(mmap.MAP_SHARED, pattern)
    try:
        detect(mm, PS, release_ram=release_ram, in_postcopy=in_postcopy)
        assert mm.calls == []
        assert resident(mm, len(pattern)) == [1] * len(pattern)
    finally:
        mm.close()


def test_pages_smaller_than_a_host_page_are_left() -> None:
    """1 KiB target pages cannot be discarded by madvise: left alone, no error."""
    mm = make_source(mmap.MAP_SHARED, "Z" * 8, page_size=1024)
    try:
        detect(mm, 1024, release_ram=True, in_postcopy=True)
        assert mm.calls == []
        assert resident(mm, 2) == [1, 1]
    finally:
        mm.close()


def test_huge_target_pages_discard_whole_range() -> None:
    """64 KiB target pages on an mmap: each zero page is discarded in full."""
    page_size = 65536
    mm = make_source(mmap.MAP_SHARED, "NZ", page_size=page_size)
    try:
        for k in range(0, page_size, PS):
            mm[page_size + k] = 1
            mm[page_size + k] = 0
        detect(mm, page_size, release_ram=True, in_postcopy=True)
        vec = (ctypes.c_ubyte * (2 * page_size // PS))()
        assert LIBC.mincore(ctypes_address(mm), 2 * page_size, vec) == 0
        flags = [v & 1 for v in vec]
        half = page_size // PS
        assert flags[half:] == [0] * half
        assert flags[:half][0] == 1
    finally:
        mm.close()


def test_non_mmap_host_is_left_alone() -> None:
    """A numpy view over an mmap is not an mmap host: nothing is discarded."""
    pattern = "ZNZ"
    mm = make_source(mmap.MAP_SHARED, pattern)
    try:
        view = np.frombuffer(mm, dtype=np.uint8)
        block = mz.RAMBlock("pc.ram", view, PS)
        pages = mz.MultiFDPages(block, [0, PS, 2 * PS])
        mz.send_zero_page_detect(
            pages,
            options=mz.MigrationOptions(release_ram=True),
            stats=mz.MigrationStats(),
            in_postcopy=True,
        )
        assert pages.zero_num == 2
        assert mm.calls == []
        assert resident(mm, 3) == [1, 1, 1]
        del view, block, pages
    finally:
        mm.close()


def test_callback_replaces_the_discard() -> None:
    """With ``on_release`` the callback gets the offsets and the mmap is not touched."""
    mm = make_source(mmap.MAP_SHARED, "ZN")
    got: list[list[int]] = []
    try:
        block = mz.RAMBlock("pc.ram", mm, PS, on_release=lambda offs: got.append(offs.tolist()))
        pages = mz.MultiFDPages(block, [0, PS])
        mz.send_zero_page_detect(
            pages,
            options=mz.MigrationOptions(release_ram=True),
            stats=mz.MigrationStats(),
            in_postcopy=True,
        )
        assert got == [[0]]
        assert mm.calls == []
        assert resident(mm, 2) == [1, 1]
    finally:
        mm.close()


def test_legacy_release_discards_too() -> None:
    """Legacy detection on the main thread releases its zero pages by the same rule."""
    pattern = "NZZ"
    mm = make_source(mmap.MAP_PRIVATE, pattern)
    try:
        block = mz.RAMBlock("pc.ram", mm, PS)
        normal, zero = mz.save_zero_pages(
            block,
            [0, PS, 2 * PS],
            options=mz.MigrationOptions(zero_page_detection="legacy", release_ram=True),
            stats=mz.MigrationStats(),
            in_postcopy=True,
        )
        assert (normal.tolist(), zero.tolist()) == ([0], [PS, 2 * PS])
        assert resident(mm, 3) == [1, 0, 0]
    finally:
        mm.close()
