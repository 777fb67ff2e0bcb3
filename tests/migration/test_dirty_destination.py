"""Destinations not known to be zero end equal to the source, in every mode (issue 14).

``migrate()`` into ``bytearray(b"\\xff" * n)`` with multifd detection left 32 of 64 pages
different, every page marked received, no error: the precopy saving (a first-time zero
page is not written) is right only for memory known to be zero. A block now says whether
it is (``RAMBlock.fresh``); fresh memory keeps the saving, shown by mincore.
"""

from __future__ import annotations

import mmap
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.qemu_model import RefDestination, RefStats, ref_apply_batch, ref_send_batch

import multifd_zero as mz
from multifd_zero.migration.shm import SharedRAM

PS = 4096
NAME = "pc.ram"
MODES = ("multifd", "legacy", "none")


def half_zero_source(pages: int = 64) -> np.ndarray:
    ram = np.zeros((pages, PS), dtype=np.uint8)
    ram[1::2, 7] = np.arange(1, pages // 2 + 1, dtype=np.uint8)  # odd pages hold data
    return ram.reshape(-1)


@pytest.mark.parametrize("postcopy", [False, True], ids=["precopy", "postcopy"])
@pytest.mark.parametrize("mode", MODES)
def test_a_destination_full_of_ff_ends_equal_to_the_source(mode: str, postcopy: bool) -> None:
    """The issue's case, in process: every page equal, every page received."""
    src = half_zero_source()
    dst = mz.RAMBlock(NAME, bytearray(b"\xff" * src.size))
    options = mz.MigrationOptions(zero_page_detection=mode, postcopy_ram=postcopy)
    result = mz.migrate(mz.RAMBlock(NAME, src), dst, channels=2, options=options)
    assert bytes(dst.host) == src.tobytes()
    assert dst.receivedmap.count() == 64
    if mode != "none":  # the 32 zero pages held 0xff: each had to be written
        assert result.destination.zero_pages_written == 32


@pytest.mark.parametrize("host", ["bytearray", "shared"])
def test_a_dirty_destination_over_a_socket_ends_equal(host: str) -> None:
    """Over TCP to the destination process: staged (a bytearray) or mapped there directly
    (SharedRAM); the block is not fresh either way, and says so to the child."""
    src = half_zero_source()
    memory = bytearray(src.size) if host == "bytearray" else SharedRAM(src.size)
    np.frombuffer(memory, np.uint8)[:] = 0xFF
    dst = mz.RAMBlock(NAME, memory)
    mz.migrate(mz.RAMBlock(NAME, src), dst, channels=2, transport="tcp", timeout=30)
    assert bytes(memory) == src.tobytes()


@st.composite
def cases(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, list[list[int]], str]:
    pages = draw(st.integers(1, 40))
    kinds = st.sampled_from([0, 1, 2])  # zero, one byte set, random
    def page(kind: int, seed: int) -> np.ndarray:
        out = np.zeros(PS, np.uint8)
        if kind == 1:
            out[seed % PS] = seed % 255 + 1
        elif kind == 2:
            out[:] = np.random.default_rng(seed).integers(0, 256, PS, dtype=np.uint8)
        return out
    src = np.stack([page(draw(kinds), draw(st.integers(0, 10**6))) for _ in range(pages)])
    dst = np.stack([page(draw(kinds), draw(st.integers(0, 10**6))) for _ in range(pages)])
    rounds = draw(st.lists(st.lists(st.integers(0, pages - 1), max_size=pages), max_size=2))
    return src, dst, rounds, draw(st.sampled_from(MODES))


@settings(max_examples=25, deadline=None)
@given(cases())
def test_any_destination_ends_as_the_model_says_and_equal_to_the_source(
    case: tuple[np.ndarray, np.ndarray, list[list[int]], str],
) -> None:
    """Random source and destination contents, dirty rounds that rewrite pages as zero or
    data: migrate() ends byte for byte as the oracle (a destination that is not fresh), which
    is the source's last state."""
    src, dst_init, rounds, mode = case
    pages = src.shape[0]
    ram = src.copy()
    dst = mz.RAMBlock(NAME, bytearray(dst_init.tobytes()))
    ref = RefDestination(dst_init.tobytes(), PS, fresh=False)
    stats = RefStats()

    def ref_round(offsets: list[int]) -> None:
        for first in range(0, len(offsets), 4):  # page_count 4 below: the same batches
            sent = ref_send_batch(bytes(ram.tobytes()), offsets[first:first + 4], PS, stats,
                                  mode=mode)
            ref_apply_batch(ref, bytes(ram.tobytes()), sent, postcopy_ram=False)

    def dirty() -> object:
        for k, pages_ in enumerate(rounds):
            chosen = sorted(set(pages_))
            for p in chosen:  # rewrite: zero on even rounds, data on odd ones
                ram[p] = 0 if k % 2 == 0 else (p + k) % 255 + 1
            ref_round([p * PS for p in chosen])
            yield [p * PS for p in chosen]

    ref_round([p * PS for p in range(pages)])
    mz.migrate(mz.RAMBlock(NAME, ram.reshape(-1)), dst, channels=2, page_count=4,
               options=mz.MigrationOptions(zero_page_detection=mode), dirty=dirty())
    assert bytes(dst.host) == bytes(ref.memory) == ram.tobytes()
    assert dst.receivedmap.bitmap.tolist() == ref.bitmap_words()


def test_the_model_checks_first_time_zero_pages_of_memory_that_is_not_fresh() -> None:
    """The oracle itself: not fresh, a first-time zero page is zeroed only if not zero."""
    dest = RefDestination(b"\x07" * 4096 + bytes(4096), 4096, fresh=False)
    assert dest.recv_zero_page_process([0, 4096], postcopy_ram=False) == 1
    assert dest.memory == bytes(8192) and dest.received == [True, True]
    fresh = RefDestination(b"\x07" * 4096, 4096, fresh=True)
    assert fresh.recv_zero_page_process([0], postcopy_ram=False) == 0
    assert fresh.memory == b"\x07" * 4096


@pytest.mark.skipif(not sys.platform.startswith("linux") or mmap.PAGESIZE != PS,
                    reason="mincore with 4 KiB host pages (Linux)")
def test_fresh_anonymous_memory_keeps_the_precopy_saving() -> None:
    """RAMBlock.anonymous is fresh: the zero pages of a migration into it are never faulted
    in (mincore), the data pages are."""
    from support.builders import resident

    src = half_zero_source()
    dst = mz.RAMBlock.anonymous(NAME, src.size)
    assert dst.fresh
    dst.host.madvise(mmap.MADV_NOHUGEPAGE)
    mz.migrate(mz.RAMBlock(NAME, src), dst, channels=2)
    assert resident(dst.host, 64) == [p % 2 for p in range(64)]
    assert bytes(dst.host) == src.tobytes()  # (reading maps the zero page: mincore first)


def test_fresh_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="fresh must be a bool"):
        mz.RAMBlock(NAME, bytearray(PS), fresh=1)  # type: ignore[arg-type]
