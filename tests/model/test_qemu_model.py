"""The oracle itself: the model's partition has the properties QEMU's loop is documented to have.

If the model drifted from QEMU's loop, every comparison against it would be
worthless; these checks tie it to the documented behaviour independently.
"""

from __future__ import annotations

from hypothesis import given
from support.builders import Batch, batches
from support.qemu_model import (
    RefDestination,
    RefStats,
    ref_is_zero,
    ref_page_is_zero,
    ref_partition,
    ref_send_zero_page_detect,
)


@given(batches(max_pages=30))
def test_model_partition_properties(batch: Batch) -> None:
    """n tests, one release per zero page, zeros stored in reverse discovery order, k fixed."""
    host, offsets, ps = batch.host, batch.offsets, batch.page_size
    result = ref_partition(host, offsets, ps)
    k = result.normal_num
    assert result.tests == len(offsets)
    assert sorted(result.offsets) == sorted(offsets)
    assert all(not ref_page_is_zero(host, o, ps) for o in result.offsets[:k])
    assert all(ref_page_is_zero(host, o, ps) for o in result.offsets[k:])
    assert result.released == result.offsets[k:][::-1]
    for i in range(k):
        if not ref_page_is_zero(host, offsets[i], ps):
            assert result.offsets[i] == offsets[i]


@given(batches(max_pages=30))
def test_model_holes_filled_from_the_tail_in_descending_order(batch: Batch) -> None:
    """Normals from original positions >= k fill the holes left to right, taken descending."""
    host, offsets, ps = batch.host, batch.offsets, batch.page_size
    result = ref_partition(host, offsets, ps)
    k = result.normal_num
    zero = [ref_page_is_zero(host, o, ps) for o in offsets]
    holes = [i for i in range(k) if zero[i]]
    tail_normals = [offsets[i] for i in range(len(offsets) - 1, k - 1, -1) if not zero[i]]
    assert [result.offsets[i] for i in holes] == tail_normals


def test_model_stats_and_modes() -> None:
    """none/legacy leave the order and count every page normal; multifd counts zeros."""
    host = bytes(4096) + b"\x01" * 4096
    for mode, expected in (("none", (2, 0)), ("legacy", (2, 0)), ("multifd", (1, 1))):
        stats = RefStats()
        result = ref_send_zero_page_detect(host, [0, 4096], 4096, stats, mode=mode)
        assert (stats.normal_pages, stats.zero_pages) == expected
        if mode != "multifd":
            assert result.offsets == [0, 4096]


def test_model_receive_rule() -> None:
    """First-time zero page untouched in precopy, written in postcopy; legacy reads first."""
    dest = RefDestination(b"\x07" * 8192, 4096, fresh=True)  # claimed zero: not even read
    assert dest.recv_zero_page_process([0], postcopy_ram=False) == 0
    assert dest.memory[:4096] == b"\x07" * 4096 and dest.received == [True, False]
    assert dest.recv_zero_page_process([0], postcopy_ram=False) == 1
    assert dest.recv_zero_page_process([4096], postcopy_ram=True) == 1
    assert ref_is_zero(dest.memory)
    assert dest.recv_legacy_zero_pages([0]) == 0
    assert dest.bitmap_words() == [0b11]
