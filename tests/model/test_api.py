"""The public API: options, stats, RAMBlock, ReceivedMap, MultiFDPages, SIMD selection."""

from __future__ import annotations

import dataclasses
from importlib import metadata

import numpy as np
import pytest
from support.builders import expected_best_simd
from support.qemu_model import ref_page_count

import multifd_zero as mz

PS = 4096


def test_public_names_exist() -> None:
    """Everything in ``__all__`` is importable; the issue's names are all there."""
    for name in mz.__all__:
        assert hasattr(mz, name), name
    for name in (
        "ZeroPageDetection", "MigrationOptions", "MigrationStats", "RAMBlock", "ReceivedMap",
        "MultiFDPages", "send_zero_page_detect", "recv_zero_page_process", "recv_normal_pages",
        "is_zero", "zero_page_mask", "partition_zero_pages", "partition_batches",
    ):  # fmt: skip
        assert name in mz.__all__, name


def test_version_is_the_installed_distribution() -> None:
    """``__version__`` is the installed distribution's version."""
    assert mz.__version__ == metadata.version("multifd-zero")


def test_constants() -> None:
    """Packet size 512 KiB; page sizes from 1 KiB to 2 MiB."""
    assert mz.MULTIFD_PACKET_SIZE == 524288
    assert (mz.MIN_PAGE_SIZE, mz.MAX_PAGE_SIZE) == (1024, 2 * 1024 * 1024)


# ------------------------------------------------------------------- options


def test_zero_page_detection_enum() -> None:
    """Three values named as QEMU's QAPI enum; a str enum that prints as its value."""
    assert [m.value for m in mz.ZeroPageDetection] == ["none", "legacy", "multifd"]
    assert mz.ZeroPageDetection("legacy") is mz.ZeroPageDetection.LEGACY
    assert str(mz.ZeroPageDetection.MULTIFD) == "multifd"
    assert mz.ZeroPageDetection.NONE == "none"
    assert isinstance(mz.ZeroPageDetection.NONE, str)


def test_migration_options_defaults_and_strings() -> None:
    """Default multifd detection, no postcopy, no release; str values become the enum."""
    default = mz.MigrationOptions()
    assert default.zero_page_detection is mz.ZeroPageDetection.MULTIFD
    assert (default.postcopy_ram, default.release_ram) == (False, False)
    for value in ("none", "legacy", "multifd"):
        options = mz.MigrationOptions(zero_page_detection=value)
        assert options.zero_page_detection is mz.ZeroPageDetection(value)
        assert options == mz.MigrationOptions(zero_page_detection=mz.ZeroPageDetection(value))
    both = mz.MigrationOptions("legacy", True, True)
    assert (both.postcopy_ram, both.release_ram) == (True, True)


def test_migration_options_are_frozen() -> None:
    """Options cannot be changed after creation (channels share them)."""
    options = mz.MigrationOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.postcopy_ram = True  # type: ignore[misc]


# --------------------------------------------------------------------- stats


def test_stats_counters_and_query_migrate_names() -> None:
    """query-migrate names: normal, duplicate (zero pages), normal-bytes; no zero-pages field."""
    stats = mz.MigrationStats()
    assert stats.snapshot() == (0, 0)
    stats.add(normal_pages=3)
    stats.add(zero_pages=125)
    stats.add(normal_pages=2, zero_pages=1)
    assert (stats.normal_pages, stats.zero_pages) == (5, 126)
    info = stats.query_migrate(page_size=1024)
    assert info == {"normal": 5, "duplicate": 126, "normal-bytes": 5120, "page-size": 1024}
    assert "zero-pages" not in info and "zero-bytes" not in info
    assert stats.query_migrate()["normal-bytes"] == 5 * 4096
    assert repr(stats) == "MigrationStats(normal_pages=5, zero_pages=126)"
    stats.reset()
    assert stats.snapshot() == (0, 0)
    assert mz.MigrationStats(normal_pages=7, zero_pages=8).snapshot() == (7, 8)


# ------------------------------------------------------------------ RAMBlock


def test_ramblock_properties() -> None:
    """Name, host, page size, length, page count, read-only flag, receivedmap size."""
    host = bytearray(16 * 1024)
    block = mz.RAMBlock("pc.ram", host, 1024)
    assert block.idstr == "pc.ram"
    assert block.host is host
    assert (block.page_size, block.used_length, block.num_pages) == (1024, 16384, 16)
    assert block.readonly is False
    assert len(block.receivedmap) == 16
    assert block.receivedmap.page_size == 1024
    assert block.on_release is None
    assert "pc.ram" in repr(block)
    assert mz.RAMBlock("rom", bytes(PS)).readonly is True
    assert mz.RAMBlock("np", np.zeros((4, 512), dtype=np.float64)).used_length == 16384


def test_ramblock_page_view() -> None:
    """``page(offset)`` is a read-only view of exactly that page."""
    host = bytearray(3 * PS)
    host[PS : 2 * PS] = b"\x07" * PS
    block = mz.RAMBlock("pc.ram", host)
    view = block.page(PS)
    assert view.readonly
    assert bytes(view) == b"\x07" * PS
    host[PS] = 9
    assert view[0] == 9  # a view, not a copy


def test_ramblock_release_pages_with_callback() -> None:
    """release_pages passes checked uint64 offsets to the callback, in the given order."""
    got: list[list[int]] = []
    block = mz.RAMBlock("pc.ram", bytearray(4 * PS), on_release=lambda o: got.append(o.tolist()))
    block.release_pages([3 * PS, 0])
    assert got == [[3 * PS, 0]]


def test_ramblock_release_pages_non_mmap_is_a_no_op() -> None:
    """Without a callback, a bytearray host is left alone (no error, no change)."""
    host = bytearray(b"\x01" * (2 * PS))
    mz.RAMBlock("pc.ram", host).release_pages([0, PS])
    assert host == b"\x01" * (2 * PS)


# --------------------------------------------------------------- ReceivedMap


def test_receivedmap_byte_offsets() -> None:
    """test/set/clear take byte offsets; set/clear return the old bit; count counts."""
    rmap = mz.ReceivedMap(num_pages=130, page_size=PS)
    assert (rmap.num_pages, rmap.page_size, len(rmap)) == (130, PS, 130)
    assert rmap.test(0) is False
    assert rmap.set(65 * PS) is False
    assert rmap.set(65 * PS) is True
    assert rmap.test(65 * PS) is True
    assert rmap.test(64 * PS) is False and rmap.test(66 * PS) is False
    rmap.set(0)
    rmap.set(129 * PS)
    assert rmap.count() == 3
    assert rmap.received_offsets().tolist() == [0, 65 * PS, 129 * PS]
    assert rmap.clear(65 * PS) is True
    assert rmap.clear(65 * PS) is False
    assert rmap.count() == 2
    assert "received=2" in repr(rmap)


def test_receivedmap_raw_bitmap_layout() -> None:
    """Raw bitmap: uint64 words, page i at bit i % 64 of word i // 64 (QEMU's layout)."""
    rmap = mz.ReceivedMap(num_pages=130, page_size=1024)
    bitmap = rmap.bitmap
    assert bitmap.dtype == np.uint64
    assert bitmap.shape == (3,)
    rmap.set(1 * 1024)
    rmap.set(65 * 1024)
    rmap.set(128 * 1024)
    assert bitmap.tolist() == [1 << 1, 1 << 1, 1 << 0]
    bitmap[0] |= np.uint64(1 << 63)  # the array is the map itself
    assert rmap.test(63 * 1024)


def test_receivedmap_is_shared_with_the_receive_kernels() -> None:
    """Bits set by the receive functions show through the public map and vice versa."""
    block = mz.RAMBlock("pc.ram", bytearray(4 * PS))
    block.receivedmap.set(2 * PS)  # marked received: a zero page now gets written
    block.host[2 * PS] = 5
    assert mz.recv_zero_page_process(block, [2 * PS, 3 * PS], options=mz.MigrationOptions()) == 1
    assert block.host[2 * PS] == 0
    assert block.receivedmap.received_offsets().tolist() == [2 * PS, 3 * PS]


def test_receivedmap_empty() -> None:
    """A map of zero pages has no words and counts zero."""
    rmap = mz.ReceivedMap(0, PS)
    assert rmap.bitmap.shape == (0,)
    assert rmap.count() == 0
    assert rmap.received_offsets().tolist() == []


# -------------------------------------------------------------- MultiFDPages


@pytest.mark.parametrize("page_size", [1 << k for k in range(10, 22)])
def test_page_count_is_packet_size_over_page_size(page_size: int) -> None:
    """Capacity = 524288 // page_size (128 for 4 KiB); at least one page for huge pages."""
    expected = ref_page_count(page_size)
    assert expected == (524288 // page_size if page_size <= 524288 else 1)
    assert mz.multifd_ram_page_count(page_size) == expected
    block = mz.RAMBlock("pc.ram", bytes(page_size), page_size)
    assert mz.MultiFDPages(block, []).page_count == expected


def test_page_count_default_is_128() -> None:
    """4 KiB target pages: 128 pages per packet."""
    assert mz.multifd_ram_page_count() == 128


def test_multifd_pages_basics() -> None:
    """num, len, block, uint64 offsets in queue order; page_count may be given."""
    block = mz.RAMBlock("pc.ram", bytes(8 * PS))
    pages = mz.MultiFDPages(block, [5 * PS, 0, 5 * PS], page_count=3)
    assert (pages.num, len(pages), pages.page_count) == (3, 3, 3)
    assert pages.block is block
    assert pages.offset.dtype == np.uint64
    assert pages.offset.tolist() == [5 * PS, 0, 5 * PS]
    assert "not detected" in repr(pages)


def test_multifd_pages_views_before_and_after_detection() -> None:
    """normal/zero raise RuntimeError before detection and are views of offset after."""
    host = bytearray(4 * PS)
    host[PS] = 1
    pages = mz.MultiFDPages(mz.RAMBlock("pc.ram", host), [0, PS, 2 * PS])
    with pytest.raises(RuntimeError, match="zero-page detection has not run"):
        _ = pages.normal
    with pytest.raises(RuntimeError, match="zero-page detection has not run"):
        _ = pages.zero
    with pytest.raises(RuntimeError, match="zero-page detection has not run"):
        pages.normal_data()
    n = mz.send_zero_page_detect(pages, options=mz.MigrationOptions(), stats=mz.MigrationStats())
    assert n == pages.normal_num == 1
    assert pages.detected
    assert pages.normal.tolist() == [PS]
    assert pages.zero.tolist() == [2 * PS, 0]
    assert np.shares_memory(pages.zero, pages.offset)
    with pytest.raises(ValueError, match="read-only"):
        pages.zero[0] = 0
    assert "normal_num=1" in repr(pages)


# ---------------------------------------------------------------------- SIMD


def test_simd_paths_and_selection() -> None:
    """Paths listed slowest first, portable always there; 'best' picks the fastest for this CPU."""
    paths = mz.simd_paths()
    assert isinstance(paths, tuple)
    assert paths[0] == "portable"
    assert set(paths) <= {"portable", "sse2", "avx2", "avx512"}
    assert mz.set_simd("best") == expected_best_simd() == mz.get_simd()
    for name in paths:
        assert mz.set_simd(name) == name
        assert mz.get_simd() == name
        assert mz.is_zero(bytes(1000)) and not mz.is_zero(bytes(999) + b"\1")
    mz.set_simd("best")
