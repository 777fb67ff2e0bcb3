"""The destination side: the zero-page receive rule, normal pages and legacy zero records."""

from __future__ import annotations

import mmap
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.builders import aligned_bytearray, bitmap_bools, resident
from support.qemu_model import RefDestination

import multifd_zero as mz

PS = 4096
PRECOPY = mz.MigrationOptions()
POSTCOPY = mz.MigrationOptions(postcopy_ram=True)
GARBAGE = b"\xde\xad\xbe\xef" * (PS // 4)


def garbage_block(pages: int = 8, page_size: int = PS) -> tuple[bytearray, mz.RAMBlock]:
    """A destination whose every page holds non-zero garbage and none is received.

    Claimed fresh (known zero), so that the garbage shows which pages QEMU's precopy
    rule writes; test_dirty_destination.py has the blocks that are not fresh."""
    mem = bytearray((b"\xde\xad\xbe\xef" * (page_size // 4)) * pages)
    return mem, mz.RAMBlock("pc.ram", mem, page_size, fresh=True)


def test_precopy_first_time_zero_page_is_not_written() -> None:
    """Precopy: a zero page never received before is not written, only marked received."""
    mem, block = garbage_block()
    written = mz.recv_zero_page_process(block, [3 * PS], options=PRECOPY)
    assert written == 0
    assert bytes(mem[3 * PS : 4 * PS]) == GARBAGE  # the garbage stays
    assert block.receivedmap.test(3 * PS)
    assert bitmap_bools(block.receivedmap) == [p == 3 for p in range(8)]


def test_precopy_zero_page_received_before_is_zeroed() -> None:
    """Precopy: a page received before (normal data, or an earlier zero page) is zeroed."""
    mem, block = garbage_block()
    mz.recv_normal_pages(block, [5 * PS], b"\x11" * PS)
    assert bytes(mem[5 * PS : 6 * PS]) == b"\x11" * PS
    mz.recv_zero_page_process(block, [3 * PS], options=PRECOPY)  # first time: untouched
    written = mz.recv_zero_page_process(block, [5 * PS, 3 * PS], options=PRECOPY)
    assert written == 2
    assert bytes(mem[5 * PS : 6 * PS]) == bytes(PS)
    assert bytes(mem[3 * PS : 4 * PS]) == bytes(PS)
    assert bytes(mem[4 * PS : 5 * PS]) == GARBAGE
    assert block.receivedmap.count() == 2


def test_precopy_duplicate_in_one_batch() -> None:
    """The same zero page twice in one batch: the first marks it, the second zeroes it."""
    mem, block = garbage_block()
    written = mz.recv_zero_page_process(block, [2 * PS, 2 * PS], options=PRECOPY)
    assert written == 1
    assert bytes(mem[2 * PS : 3 * PS]) == bytes(PS)


def test_postcopy_always_writes_zero_pages() -> None:
    """postcopy-ram: every zero page is written, received before or not, and marked."""
    mem, block = garbage_block()
    written = mz.recv_zero_page_process(block, [1 * PS, 6 * PS], options=POSTCOPY)
    assert written == 2
    assert bytes(mem[PS : 2 * PS]) == bytes(PS)
    assert bytes(mem[6 * PS : 7 * PS]) == bytes(PS)
    assert bytes(mem[0:PS]) == GARBAGE
    assert bitmap_bools(block.receivedmap) == [p in (1, 6) for p in range(8)]
    assert mz.recv_zero_page_process(block, [1 * PS], options=POSTCOPY) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore is Linux-only")
def test_precopy_does_not_touch_fresh_anonymous_memory() -> None:
    """The point of the precopy rule: a first-time zero page is never faulted in."""
    pages = 16
    mm = mmap.mmap(-1, pages * PS, flags=mmap.MAP_PRIVATE)
    try:
        block = mz.RAMBlock("pc.ram", mm, PS, fresh=True)
        offsets = [p * PS for p in range(0, pages, 2)]
        assert mz.recv_zero_page_process(block, offsets, options=PRECOPY) == 0
        assert resident(mm, pages) == [0] * pages
        assert block.receivedmap.count() == pages // 2
        assert mz.recv_zero_page_process(block, [PS], options=POSTCOPY) == 1
        assert resident(mm, pages) == [int(p == 1) for p in range(pages)]
    finally:
        mm.close()


def test_recv_normal_pages_places_data_and_marks() -> None:
    """Page k of data lands at offsets[k]; each page is marked; the count is returned."""
    mem = bytearray(8 * PS)
    block = mz.RAMBlock("pc.ram", mem)
    data = b"".join(bytes([k + 1]) * PS for k in range(3))
    assert mz.recv_normal_pages(block, [7 * PS, 0, 2 * PS], data) == 3
    assert bytes(mem[7 * PS :]) == b"\x01" * PS
    assert bytes(mem[:PS]) == b"\x02" * PS
    assert bytes(mem[2 * PS : 3 * PS]) == b"\x03" * PS
    assert bytes(mem[PS : 2 * PS]) == bytes(PS)
    assert block.receivedmap.received_offsets().tolist() == [0, 2 * PS, 7 * PS]


def test_recv_normal_pages_accepts_any_data_buffer() -> None:
    """data may be bytes, a read-only memoryview or a 2-D numpy array."""
    block = mz.RAMBlock("pc.ram", np.zeros(4 * PS, dtype=np.uint8))
    rows = np.full((2, PS), 9, dtype=np.uint8)
    rows.flags.writeable = False
    assert mz.recv_normal_pages(block, [PS, 3 * PS], rows) == 2
    assert mz.recv_normal_pages(block, [0], memoryview(b"\x05" * PS).toreadonly()) == 1
    host = block.host
    assert (host[PS : 2 * PS] == 9).all() and (host[3 * PS :] == 9).all()
    assert (host[:PS] == 5).all() and (host[2 * PS : 3 * PS] == 0).all()


def test_recv_empty_batches() -> None:
    """Empty batches change nothing and return 0."""
    mem, block = garbage_block()
    assert mz.recv_zero_page_process(block, [], options=POSTCOPY) == 0
    assert mz.recv_normal_pages(block, [], b"") == 0
    assert mz.recv_legacy_zero_pages(block, np.zeros(0, dtype=np.uint64)) == 0
    assert block.receivedmap.count() == 0
    assert bytes(mem) == GARBAGE * 8


def test_legacy_zero_record_writes_only_non_zero_pages() -> None:
    """ram_handle_zero: a non-zero page is zeroed, a zero page is not written; both marked."""
    mem, block = garbage_block(4)
    mem[2 * PS : 3 * PS] = bytes(PS)
    assert mz.recv_legacy_zero_pages(block, [0, 2 * PS]) == 1
    assert bytes(mem[:PS]) == bytes(PS)
    assert bytes(mem[2 * PS : 3 * PS]) == bytes(PS)
    assert bytes(mem[PS : 2 * PS]) == GARBAGE
    assert bitmap_bools(block.receivedmap) == [True, False, True, False]
    assert mz.recv_legacy_zero_pages(block, [0]) == 0


def test_legacy_record_writes_even_first_time_garbage() -> None:
    """Unlike multifd precopy, the legacy receiver zeroes a never-received non-zero page."""
    mem, block = garbage_block(2)
    assert mz.recv_legacy_zero_pages(block, [PS]) == 1
    assert bytes(mem[PS:]) == bytes(PS)


# ------------------------------------------- page zeroing on every SIMD path


@pytest.mark.parametrize("page_size", [1024, 2048, 4096, 65536, 2 * 1024 * 1024])
def test_zeroing_writes_exactly_the_page_on_every_path(simd_path: str, page_size: int) -> None:
    """Zeroing a page (postcopy, or precopy after a receive) touches its bytes and no other.

    The host starts at several misalignments from a 4 KiB boundary, so the
    page's first and last cache lines are shared with its neighbours; every
    byte around it (neighbour pages and bytes outside the host) must keep 0xFF.
    """
    pages = 3
    for shift in (0, 1, 16, 63, 64 + 8):
        buf, base = aligned_bytearray(pages * page_size + 256, 4096)
        buf[:] = b"\xff" * len(buf)
        start = base + shift
        host = memoryview(buf)[start : start + pages * page_size]
        block = mz.RAMBlock("pc.ram", host, page_size)
        middle = page_size
        assert mz.recv_zero_page_process(block, [middle], options=POSTCOPY) == 1
        expected = bytearray(b"\xff" * len(buf))
        expected[start + middle : start + middle + page_size] = bytes(page_size)
        assert buf == expected, (simd_path, shift)
        block.receivedmap.set(0)
        assert mz.recv_zero_page_process(block, [0], options=PRECOPY) == 1
        expected[start : start + page_size] = bytes(page_size)
        assert buf == expected, (simd_path, shift)
        host.release()


@pytest.mark.parametrize("path", mz.simd_paths())
@settings(max_examples=15)
@given(case=st.data())
def test_receive_sequences_match_model_on_every_path(path: str, case: st.DataObject) -> None:
    """The sequence test again on each SIMD path (each has its own page-zeroing code)."""
    mz.set_simd(path)
    try:
        _run_sequence(case.draw(op_sequences()))
    finally:
        mz.set_simd("best")


# ------------------------------------------------------------ sequences vs model


@st.composite
def op_sequences(draw: st.DrawFn) -> tuple[int, bool, bytes, list[tuple]]:
    """A destination (page size, fresh or not, initial memory) and receive operations.

    A fresh destination's memory is all zero, as the claim says; one that is not fresh
    holds zero and non-zero pages."""
    page_size = draw(st.sampled_from([1024, 4096, 16384]))
    pages = draw(st.integers(1, 140))
    fresh = draw(st.booleans())
    kinds = "Z" if fresh else "ZG"
    init_kinds = draw(st.lists(st.sampled_from(kinds), min_size=pages, max_size=pages))
    memory = b"".join(bytes(page_size) if k == "Z" else b"\x5a" * page_size for k in init_kinds)
    offset = st.integers(0, pages - 1).map(lambda p: p * page_size)
    op = st.one_of(
        st.tuples(st.just("zero"), st.lists(offset, max_size=20), st.booleans()),
        st.tuples(st.just("legacy"), st.lists(offset, max_size=20)),
        st.tuples(st.just("normal"), st.lists(offset, max_size=8), st.integers(0, 255)),
    )
    return page_size, fresh, memory, draw(st.lists(op, max_size=12))


@given(op_sequences())
def test_receive_sequences_match_model(case: tuple[int, bool, bytes, list[tuple]]) -> None:
    """Any sequence of zero / legacy / normal batches: memory, bitmap and counts as the model."""
    _run_sequence(case)


def _run_sequence(case: tuple[int, bool, bytes, list[tuple]]) -> None:
    page_size, fresh, memory, ops = case
    mem = bytearray(memory)
    block = mz.RAMBlock("pc.ram", mem, page_size, fresh=fresh)
    ref = RefDestination(memory, page_size, fresh=fresh)
    for op in ops:
        if op[0] == "zero":
            _, offsets, postcopy = op
            options = mz.MigrationOptions(postcopy_ram=postcopy)
            got = mz.recv_zero_page_process(block, offsets, options=options)
            assert got == ref.recv_zero_page_process(offsets, postcopy_ram=postcopy)
        elif op[0] == "legacy":
            _, offsets = op
            assert mz.recv_legacy_zero_pages(block, offsets) == ref.recv_legacy_zero_pages(offsets)
        else:
            _, offsets, fill = op
            data = b"".join(bytes([(fill + k) % 256]) * page_size for k in range(len(offsets)))
            assert mz.recv_normal_pages(block, offsets, data) == ref.recv_normal_pages(
                offsets, data
            )
        assert mem == ref.memory
        assert block.receivedmap.bitmap.tolist() == ref.bitmap_words()
    assert block.receivedmap.count() == sum(ref.received)


@pytest.mark.parametrize("page_size", [1024, 2 * 1024 * 1024])
def test_receive_extreme_page_sizes(page_size: int) -> None:
    """The smallest and largest page sizes follow the same rules."""
    mem = bytearray(b"\x01" * (3 * page_size))
    block = mz.RAMBlock("pc.ram", mem, page_size, fresh=True)  # the ones show what is written
    assert mz.recv_zero_page_process(block, [page_size], options=PRECOPY) == 0
    assert mem.count(0) == 0
    assert mz.recv_zero_page_process(block, [page_size], options=PRECOPY) == 1
    assert mem.count(0) == page_size
    assert mz.recv_zero_page_process(block, [2 * page_size], options=POSTCOPY) == 1
    assert mem[2 * page_size :].count(0) == page_size
    assert bitmap_bools(block.receivedmap) == [False, True, True]
