"""Bad input: a ``TypeError``/``ValueError`` naming the problem, and nothing changed.

Every case runs against one "world" (source and destination blocks, offset
arrays, a receivedmap with bits set, stats with counts) and checks that the
world is byte-for-byte the same after the call raised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

import multifd_zero as mz
from multifd_zero import _kernels

PS = 4096
PAGES = 8
BAD_PAGE_SIZES = [
    (0, ValueError, "page_size must be a power of two"),
    (-4096, ValueError, "page_size must be a power of two"),
    (3000, ValueError, "page_size must be a power of two"),
    (512, ValueError, "page_size must be a power of two"),
    (4 * 1024 * 1024, ValueError, "page_size must be a power of two"),
    (True, TypeError, "page_size must be an int, not bool"),
    (4096.0, TypeError, "page_size must be an int, not float"),
    ("4096", TypeError, "page_size must be an int, not str"),
    (None, TypeError, "page_size must be an int, not NoneType"),
]
NOT_BUFFERS = [None, "text", 1.5, [0, 0, 0], 7]


@dataclass
class World:
    """Everything a bad call could damage."""

    src_mem: bytearray
    src: mz.RAMBlock
    dst_mem: bytearray
    dst: mz.RAMBlock
    offsets: np.ndarray
    ro_offsets: np.ndarray
    pages: mz.MultiFDPages
    stats: mz.MigrationStats
    released: list

    @classmethod
    def make(cls) -> World:
        src_mem = bytearray(PAGES * PS)
        for p in (1, 4, 6):
            src_mem[p * PS + p] = p
        released: list = []
        src = mz.RAMBlock("src", src_mem, PS, on_release=released.append)
        dst_mem = bytearray(b"\x5a" * (PAGES * PS))
        dst = mz.RAMBlock("dst", dst_mem, PS)
        dst.receivedmap.set(2 * PS)
        dst.receivedmap.set(5 * PS)
        offsets = np.array([p * PS for p in range(PAGES)], dtype=np.uint64)
        ro = offsets.copy()
        ro.flags.writeable = False
        pages = mz.MultiFDPages(src, offsets)
        stats = mz.MigrationStats(normal_pages=11, zero_pages=22)
        return cls(src_mem, src, dst_mem, dst, offsets, ro, pages, stats, released)

    def snapshot(self) -> tuple:
        return (
            bytes(self.src_mem),
            bytes(self.dst_mem),
            self.offsets.tolist(),
            self.ro_offsets.tolist(),
            self.pages.offset.tolist(),
            self.pages.normal_num,
            self.pages.detected,
            self.dst.receivedmap.bitmap.tolist(),
            self.src.receivedmap.bitmap.tolist(),
            self.stats.snapshot(),
            list(self.released),
        )


def u64(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def check(call: Callable[[World], object], exc: type[Exception], match: str) -> None:
    """``call`` raises ``exc`` matching ``match`` and the world is unchanged."""
    world = World.make()
    before = world.snapshot()
    with pytest.raises(exc, match=match):
        call(world)
    assert world.snapshot() == before


PRECOPY = mz.MigrationOptions()
POSTCOPY = mz.MigrationOptions(postcopy_ram=True)
STRIDED = np.arange(0, 2 * PAGES * PS, PS, dtype=np.uint64)[::2]
TWO_D = np.zeros((2, 2), dtype=np.uint64)
BIG_ENDIAN = np.array([0, PS], dtype=">u8")


# ------------------------------------------------------------------ buffers


@pytest.mark.parametrize("bad", NOT_BUFFERS, ids=repr)
def test_is_zero_not_a_buffer(bad: object) -> None:
    """is_zero(None / str / float / list / int): TypeError naming the buffer protocol."""
    check(lambda w: mz.is_zero(bad), TypeError, "buf must support the buffer protocol")


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(64, dtype=np.uint8)[::2],
        np.zeros((8, 8), dtype=np.uint8, order="F"),
        memoryview(bytes(16))[::-1],
        np.zeros((8, 8), dtype=np.uint8)[:, :4],
    ],
    ids=["strided", "fortran", "reversed", "column-slice"],
)
def test_is_zero_not_c_contiguous(bad: object) -> None:
    """A non-C-contiguous buffer is refused, not silently read as raw memory."""
    check(lambda w: mz.is_zero(bad), ValueError, "buf must be C-contiguous")


@pytest.mark.parametrize("bad", NOT_BUFFERS, ids=repr)
def test_zero_page_mask_not_a_buffer(bad: object) -> None:
    """zero_page_mask of a non-buffer: TypeError."""
    check(lambda w: mz.zero_page_mask(bad, PS), TypeError, "buf must support the buffer")


def test_zero_page_mask_length_not_a_multiple() -> None:
    """A buffer whose length is not whole pages: ValueError naming both numbers."""
    check(
        lambda w: mz.zero_page_mask(bytes(PS + 1), PS),
        ValueError,
        r"length of buf \(4097 bytes\) is not a multiple of page_size 4096",
    )


def test_zero_page_mask_not_contiguous() -> None:
    """zero_page_mask of a strided array: ValueError."""
    check(
        lambda w: mz.zero_page_mask(np.zeros(4 * PS, np.uint8)[::2], 1024),
        ValueError,
        "C-contiguous",
    )


@pytest.mark.parametrize(("page_size", "exc", "match"), BAD_PAGE_SIZES, ids=repr)
def test_bad_page_sizes_everywhere(page_size: object, exc: type[Exception], match: str) -> None:
    """Page sizes 0, negative, not a power of two, too small, too big, bool, float, str, None."""
    calls: list[Callable[[World], object]] = [
        lambda w: mz.zero_page_mask(bytes(PS), page_size),
        lambda w: mz.partition_zero_pages(w.src_mem, w.offsets, page_size),
        lambda w: mz.scan_zero_pages(w.src_mem, w.offsets, page_size),
        lambda w: mz.RAMBlock("x", w.dst_mem, page_size),
        lambda w: mz.ReceivedMap(4, page_size),
        lambda w: mz.partition_batches(w.src_mem, w.offsets.reshape(2, 4), page_size),
        lambda w: mz.multifd_ram_page_count(page_size),
        lambda w: _kernels.recv_zero_pages(
            w.dst_mem, w.dst.receivedmap.bitmap, w.offsets, page_size
        ),
        lambda w: _kernels.recv_normal_pages(
            w.dst_mem, w.dst.receivedmap.bitmap, w.offsets, bytes(PAGES * PS), page_size
        ),
    ]
    for call in calls:
        check(call, exc, match)


# ------------------------------------------------------- kernel offset arrays


@pytest.mark.parametrize(
    ("bad", "exc", "match"),
    [
        ([0, PS], TypeError, "offsets must be a 1-D numpy.uint64 array"),
        (None, TypeError, "offsets must be a 1-D numpy.uint64 array"),
        (np.array([0, PS], dtype=np.int64), TypeError, "offsets must hold uint64 items"),
        (np.array([0, PS], dtype=np.uint32), TypeError, "offsets must hold uint64 items"),
        (np.array([0.0, 4096.0]), TypeError, "offsets must hold uint64 items"),
        (BIG_ENDIAN, TypeError, "offsets must hold uint64 items"),
        (TWO_D, ValueError, "offsets must be 1-D, got 2 dimensions"),
        (STRIDED, ValueError, "offsets must be contiguous"),
    ],
    ids=["list", "None", "int64", "uint32", "float64", "big-endian", "2-D", "strided"],
)
def test_kernel_offsets_of_the_wrong_kind(bad: object, exc: type[Exception], match: str) -> None:
    """The kernels take a 1-D contiguous native uint64 buffer and nothing else."""
    check(lambda w: mz.partition_zero_pages(w.src_mem, bad, PS), exc, match)
    check(lambda w: mz.scan_zero_pages(w.src_mem, bad, PS), exc, match)
    check(
        lambda w: _kernels.recv_zero_pages(w.dst_mem, w.dst.receivedmap.bitmap, bad, PS),
        exc,
        match,
    )


def test_partition_read_only_offsets() -> None:
    """partition_zero_pages writes the offsets: a read-only array is refused."""
    check(
        lambda w: mz.partition_zero_pages(w.src_mem, w.ro_offsets, PS),
        ValueError,
        "offsets is read-only",
    )


@pytest.mark.parametrize(
    ("last", "match"),
    [
        (PS + 1, r"offsets\[8\] = 4097 is not a multiple of page_size 4096"),
        (PAGES * PS, r"offsets\[8\] = 32768 is out of range"),
        ((PAGES + 3) * PS, r"offsets\[8\] = 45056 is out of range"),
        (2**63, r"offsets\[8\] = 9223372036854775808 is out of range"),
    ],
    ids=["misaligned", "at-end", "past-end", "huge"],
)
def test_kernel_bad_offset_after_good_ones(last: int, match: str) -> None:
    """A bad last offset is found before any good one is used: nothing moves or is written."""
    offsets = [p * PS for p in range(PAGES)] + [last]

    def partition(w: World) -> object:
        arr = u64(offsets)
        try:
            return mz.partition_zero_pages(w.src_mem, arr, PS)
        finally:
            assert arr.tolist() == offsets

    check(partition, ValueError, match)
    check(lambda w: mz.scan_zero_pages(w.src_mem, u64(offsets), PS), ValueError, match)
    for mode in (_kernels.ZERO_IF_RECEIVED, _kernels.ZERO_ALWAYS, _kernels.ZERO_IF_NONZERO):
        check(
            lambda w, m=mode: _kernels.recv_zero_pages(
                w.dst_mem, w.dst.receivedmap.bitmap, u64(offsets), PS, m
            ),
            ValueError,
            match,
        )
    check(
        lambda w: _kernels.recv_normal_pages(
            w.dst_mem, w.dst.receivedmap.bitmap, u64(offsets), bytes(9 * PS), PS
        ),
        ValueError,
        match,
    )


@pytest.mark.parametrize(
    ("bad", "exc", "match"),
    [
        (np.zeros(4, dtype=np.uint64), ValueError, "offsets must be 2-D, got 1 dimensions"),
        (np.zeros((2, 2, 2), dtype=np.uint64), ValueError, "offsets must be 2-D, got 3"),
        (np.zeros((2, 4), dtype=np.int64), TypeError, "offsets must hold uint64 items"),
        (np.zeros((2, 8), dtype=np.uint64)[:, ::2], ValueError, "offsets must be contiguous"),
        (np.zeros((4, 2), dtype=np.uint64, order="F"), ValueError, "must be contiguous"),
        ([[0, PS]], TypeError, "offsets must be a 1-D numpy.uint64 array"),
    ],
    ids=["1-D", "3-D", "int64", "strided", "fortran", "list"],
)
def test_partition_batches_wrong_offsets(bad: object, exc: type[Exception], match: str) -> None:
    """partition_batches takes a writable C-contiguous 2-D uint64 array only."""
    check(lambda w: mz.partition_batches(w.src_mem, bad, PS), exc, match)


def test_partition_batches_read_only_or_bad_last_row() -> None:
    """A read-only grid, or a bad offset in the last row: raises, and no row is reordered."""
    grid = np.array([[PS, 0, 2 * PS], [0, PS, 4 * PS], [0, PS, PAGES * PS]], dtype=np.uint64)

    def bad_last_row(w: World) -> object:
        arr = grid.copy()
        try:
            return mz.partition_batches(w.src_mem, arr, PS)
        finally:
            np.testing.assert_array_equal(arr, grid)

    check(bad_last_row, ValueError, "= 32768 is out of range")
    ro = grid[:2].copy()
    ro.flags.writeable = False
    check(lambda w: mz.partition_batches(w.src_mem, ro, PS), ValueError, "offsets is read-only")


def test_kernel_out_of_range_message_does_not_wrap() -> None:
    """The kernel's out-of-range message gives the true page end, not a uint64 wrap-around.

    Offset 2**64 - 4096 ends at 2**64; the message must not claim it ends at 0.
    """
    check(
        lambda w: mz.partition_zero_pages(w.src_mem, u64([2**64 - PS]), PS),
        ValueError,
        "would end at 18446744073709551616",
    )


def test_kernel_host_not_a_buffer_or_not_writable() -> None:
    """Kernel host arguments: non-buffers are TypeErrors, read-only destinations ValueErrors."""
    for bad in NOT_BUFFERS:
        check(
            lambda w, b=bad: mz.partition_zero_pages(b, w.offsets, PS),
            TypeError,
            "host must support",
        )
    check(
        lambda w: _kernels.recv_zero_pages(
            bytes(w.dst_mem), w.dst.receivedmap.bitmap, w.offsets, PS
        ),
        ValueError,
        "host is read-only",
    )
    check(
        lambda w: _kernels.recv_normal_pages(
            bytes(w.dst_mem), w.dst.receivedmap.bitmap, w.offsets, bytes(PAGES * PS), PS
        ),
        ValueError,
        "host is read-only",
    )


def test_kernel_receivedmap_too_small_or_wrong() -> None:
    """A receivedmap with too few words, the wrong dtype, or read-only is refused."""
    big = bytearray(130 * PS)  # 130 pages need 3 words
    offsets = u64([129 * PS])

    def short(w: World) -> object:
        bitmap = np.zeros(2, dtype=np.uint64)
        try:
            return _kernels.recv_zero_pages(big, bitmap, offsets, PS, _kernels.ZERO_ALWAYS)
        finally:
            assert bitmap.tolist() == [0, 0]
            assert big.count(0) == len(big)

    check(short, ValueError, "receivedmap has 2 words, but the host's 130 pages need 3")
    check(
        lambda w: _kernels.recv_normal_pages(
            big, np.zeros(2, dtype=np.uint64), offsets, bytes(PS), PS
        ),
        ValueError,
        "receivedmap has 2 words",
    )
    check(
        lambda w: _kernels.recv_zero_pages(
            w.dst_mem, w.dst.receivedmap.bitmap.astype(np.int64), w.offsets, PS
        ),
        TypeError,
        "receivedmap must hold uint64 items",
    )
    ro = np.zeros(1, dtype=np.uint64)
    ro.flags.writeable = False
    check(
        lambda w: _kernels.recv_zero_pages(w.dst_mem, ro, w.offsets, PS),
        ValueError,
        "receivedmap is read-only",
    )


def test_kernel_bad_mode() -> None:
    """The receive kernel's mode must be one of its three constants."""
    check(
        lambda w: _kernels.recv_zero_pages(w.dst_mem, w.dst.receivedmap.bitmap, w.offsets, PS, 7),
        ValueError,
        "mode must be ZERO_IF_RECEIVED, ZERO_ALWAYS, ZERO_IF_NONZERO or",
    )
    check(
        lambda w: _kernels.recv_zero_pages(
            w.dst_mem, w.dst.receivedmap.bitmap, w.offsets, PS, True
        ),
        TypeError,
        "mode must be an int, not bool",
    )


# ------------------------------------------------------------- facade offsets


@pytest.mark.parametrize(
    ("bad", "exc", "match"),
    [
        ("0", TypeError, "offsets must be a sequence of ints, not str"),
        (b"\0" * 8, TypeError, "offsets must be a sequence of ints, not bytes"),
        ([0.0, 4096.0], TypeError, "offsets must hold integers, got dtype float64"),
        ([True, False], TypeError, "offsets must hold integers, got dtype bool"),
        ([0, "4096"], TypeError, "offsets must hold integers"),
        ([2**70], TypeError, "offsets must hold integers"),
        ([0, -4096], ValueError, r"offsets\[1\] = -4096 is negative"),
        (np.array([0, -PS], dtype=np.int64), ValueError, r"offsets\[1\] = -4096 is negative"),
        ([[0], [PS]], ValueError, "offsets must be 1-D, got 2 dimensions"),
        ([0, 100], ValueError, r"offsets\[1\] = 100 is not a multiple of page_size 4096"),
        ([PAGES * PS], ValueError, r"offsets\[0\] = 32768 is out of range"),
        ([PS, (PAGES + 1) * PS], ValueError, r"offsets\[1\] = 36864 is out of range"),
    ],
    ids=[
        "str",
        "bytes",
        "floats",
        "bools",
        "mixed",
        "too-big",
        "negative",
        "negative-int64",
        "2-D",
        "misaligned",
        "at-end",
        "past-end",
    ],
)
def test_facade_bad_offsets(bad: object, exc: type[Exception], match: str) -> None:
    """MultiFDPages, save_zero_pages and the receive functions refuse the same bad offsets."""
    check(lambda w: mz.MultiFDPages(w.src, bad), exc, match)
    check(
        lambda w: mz.save_zero_pages(
            w.src, bad, options=mz.MigrationOptions(zero_page_detection="legacy"), stats=w.stats
        ),
        exc,
        match,
    )
    check(lambda w: mz.recv_normal_pages(w.dst, bad, bytes(PS)), exc, match)
    check(lambda w: mz.recv_legacy_zero_pages(w.dst, bad), exc, match)
    check(lambda w: w.src.release_pages(bad), exc, match)


@pytest.mark.parametrize(
    "bad",
    [None, {0, PS}, (o for o in (0, PS))],
    ids=["None", "set", "generator"],
)
def test_facade_offsets_that_are_not_sequences_are_type_errors(bad: object) -> None:
    """None, a set or a generator is the wrong type: TypeError, not "must be 1-D"."""
    check(lambda w: mz.MultiFDPages(w.src, bad), TypeError, "offsets")


def test_recv_zero_page_process_bad_offsets_name_the_argument() -> None:
    """recv_zero_page_process names its argument ``zero_offsets`` and writes nothing.

    The bad offset is last and the options are postcopy (every page would be
    written), so a half-applied batch would show in memory and bits.
    """
    good = [p * PS for p in range(PAGES)]
    check(
        lambda w: mz.recv_zero_page_process(w.dst, [*good, PS + 8], options=POSTCOPY),
        ValueError,
        r"zero_offsets\[8\] = 4104 is not a multiple of page_size 4096",
    )
    check(
        lambda w: mz.recv_zero_page_process(w.dst, [*good, PAGES * PS], options=POSTCOPY),
        ValueError,
        r"zero_offsets\[8\] = 32768 is out of range",
    )
    check(
        lambda w: mz.recv_zero_page_process(w.dst, [0.5], options=POSTCOPY),
        TypeError,
        "zero_offsets must hold integers",
    )


def test_too_many_offsets_for_a_packet() -> None:
    """More offsets than page_count: ValueError; page_count must be a positive int."""
    block = mz.RAMBlock("big", bytes(200 * 1024), 1024)
    check(
        lambda w: mz.MultiFDPages(block, [0] * 513),
        ValueError,
        "513 offsets do not fit a batch of page_count=512",
    )
    check(
        lambda w: mz.MultiFDPages(w.src, [0, PS, 2 * PS], page_count=2),
        ValueError,
        "3 offsets do not fit a batch of page_count=2",
    )
    check(lambda w: mz.MultiFDPages(w.src, [], page_count=0), ValueError, "page_count must be")
    check(lambda w: mz.MultiFDPages(w.src, [], page_count=True), TypeError, "page_count must")
    check(lambda w: mz.MultiFDPages(w.src, [], page_count=2.0), TypeError, "page_count must")
    check(lambda w: mz.MultiFDPages(None, [0]), TypeError, "block must be a RAMBlock")


def test_facade_accepts_other_integer_offsets() -> None:
    """The facade converts int64/int32/uint32/big-endian arrays, lists, tuples, ranges, strides."""
    block = mz.RAMBlock("pc.ram", bytes(PAGES * PS))
    for offsets in (
        np.array([0, PS], dtype=np.int64),
        np.array([0, PS], dtype=np.int32),
        np.array([0, PS], dtype=np.uint32),
        np.array([0, PS], dtype=">u8"),
        [0, PS],
        (0, PS),
        range(0, 2 * PS, PS),
        np.arange(0, 4 * PS, PS, dtype=np.uint64)[::2] // 2,
    ):
        pages = mz.MultiFDPages(block, offsets)
        assert pages.offset.dtype == np.uint64
        assert pages.offset.dtype.isnative
        assert pages.offset.flags.c_contiguous
        assert pages.offset.tolist() == [0, PS]


@pytest.mark.parametrize("dtype", [np.uint64, np.int64])
def test_facade_copies_the_callers_offsets(dtype: type) -> None:
    """MultiFDPages keeps its own copy: detection does not reorder the caller's array."""
    block = mz.RAMBlock("pc.ram", bytes(PAGES * PS))
    source = np.array([0, PS, 2 * PS], dtype=dtype)
    pages = mz.MultiFDPages(block, source)
    assert not np.shares_memory(pages.offset, source)
    mz.send_zero_page_detect(pages, options=PRECOPY, stats=mz.MigrationStats())
    assert pages.offset.tolist() == [PS, 2 * PS, 0]  # all zero: rotated left by one
    assert source.tolist() == [0, PS, 2 * PS]


# ---------------------------------------------------------- facade functions


def test_send_zero_page_detect_bad_arguments() -> None:
    """Wrong pages, options, stats or in_postcopy: TypeError and nothing changes."""
    check(
        lambda w: mz.send_zero_page_detect(w.offsets, options=PRECOPY, stats=w.stats),
        TypeError,
        "pages must be a MultiFDPages, not ndarray",
    )
    check(
        lambda w: mz.send_zero_page_detect(w.pages, options="multifd", stats=w.stats),
        TypeError,
        "options must be a MigrationOptions, not str",
    )
    check(
        lambda w: mz.send_zero_page_detect(w.pages, options=PRECOPY, stats={"normal": 0}),
        TypeError,
        "stats must be a MigrationStats, not dict",
    )
    release = mz.MigrationOptions(release_ram=True)
    check(
        lambda w: mz.send_zero_page_detect(w.pages, options=release, stats=w.stats, in_postcopy=1),
        TypeError,
        "in_postcopy must be a bool, not int",
    )


def test_send_zero_page_detect_offsets_damaged_after_construction() -> None:
    """Offsets corrupted in place after MultiFDPages checked them: refused, nothing changes."""

    world = World.make()
    world.pages.offset[3] = 3 * PS + 1
    world.offsets[3] = 3 * PS + 1
    before = world.snapshot()
    with pytest.raises(ValueError, match=r"offsets\[3\] = 12289 is not a multiple"):
        mz.send_zero_page_detect(world.pages, options=PRECOPY, stats=world.stats)
    assert world.snapshot() == before


def test_save_zero_pages_bad_arguments() -> None:
    """save_zero_pages checks block, options, stats and in_postcopy first."""
    legacy = mz.MigrationOptions(zero_page_detection="legacy", release_ram=True)
    check(
        lambda w: mz.save_zero_pages(w.src_mem, [0], options=legacy, stats=w.stats),
        TypeError,
        "block must be a RAMBlock, not bytearray",
    )
    check(
        lambda w: mz.save_zero_pages(w.src, [0], options=None, stats=w.stats),
        TypeError,
        "options must be a MigrationOptions",
    )
    check(
        lambda w: mz.save_zero_pages(w.src, [0], options=legacy, stats=None),
        TypeError,
        "stats must be a MigrationStats",
    )
    check(
        lambda w: mz.save_zero_pages(w.src, [0], options=legacy, stats=w.stats, in_postcopy="yes"),
        TypeError,
        "in_postcopy must be a bool",
    )


def test_receive_into_read_only_block() -> None:
    """A destination over bytes (read-only) refuses every receive call."""
    ro = mz.RAMBlock("ro", bytes(PAGES * PS))
    match = "RAMBlock 'ro' wraps a read-only buffer"
    check(lambda w: mz.recv_zero_page_process(ro, [0], options=POSTCOPY), ValueError, match)
    check(lambda w: mz.recv_normal_pages(ro, [0], bytes(PS)), ValueError, match)
    check(lambda w: mz.recv_legacy_zero_pages(ro, [0]), ValueError, match)
    assert ro.receivedmap.count() == 0


def test_receive_bad_block_or_options() -> None:
    """Receive functions: block must be a RAMBlock, options a MigrationOptions."""
    check(
        lambda w: mz.recv_zero_page_process(w.dst_mem, [0], options=POSTCOPY),
        TypeError,
        "block must be a RAMBlock, not bytearray",
    )
    check(
        lambda w: mz.recv_zero_page_process(w.dst, [0], options={"postcopy_ram": True}),
        TypeError,
        "options must be a MigrationOptions, not dict",
    )
    check(lambda w: mz.recv_normal_pages(None, [0], bytes(PS)), TypeError, "block must be")
    check(lambda w: mz.recv_legacy_zero_pages("dst", [0]), TypeError, "block must be")


@pytest.mark.parametrize(
    ("data", "exc", "match"),
    [
        (bytes(PS - 1), ValueError, "data holds 4095 bytes, but 2 pages of 4096 bytes need 8192"),
        (bytes(3 * PS), ValueError, "data holds 12288 bytes, but 2 pages"),
        (b"", ValueError, "data holds 0 bytes"),
        (None, TypeError, "data must support the buffer protocol"),
        ("x" * 8192, TypeError, "data must support the buffer protocol"),
        ([0] * 8192, TypeError, "data must support the buffer protocol"),
        (np.zeros(4 * PS, dtype=np.uint8)[::2], ValueError, "data must be C-contiguous"),
    ],
    ids=["short", "long", "empty", "None", "str", "list", "strided"],
)
def test_recv_normal_pages_bad_data(data: object, exc: type[Exception], match: str) -> None:
    """Data of the wrong length or kind is refused before any page or bit is written."""
    check(lambda w: mz.recv_normal_pages(w.dst, [0, 3 * PS], data), exc, match)


# ---------------------------------------------------------------- RAMBlock


@pytest.mark.parametrize(
    ("idstr", "exc", "match"),
    [
        ("", ValueError, "idstr must be 1 to 255 bytes of UTF-8 without NUL"),
        ("pc\0ram", ValueError, "idstr must be 1 to 255 bytes of UTF-8 without NUL"),
        ("x" * 256, ValueError, "idstr must be 1 to 255 bytes"),
        ("\u00e9" * 128, ValueError, "idstr must be 1 to 255 bytes"),  # 128 chars, 256 bytes
        (b"pc.ram", TypeError, "idstr must be a str, not bytes"),
        (None, TypeError, "idstr must be a str, not NoneType"),
    ],
    ids=["empty", "NUL", "256-bytes", "256-utf8-bytes", "bytes", "None"],
)
def test_ramblock_bad_idstr(idstr: object, exc: type[Exception], match: str) -> None:
    """The name must fit QEMU's 256-byte idstr with its NUL: 1..255 UTF-8 bytes, no NUL."""
    check(lambda w: mz.RAMBlock(idstr, w.dst_mem), exc, match)


def test_ramblock_longest_names_fit() -> None:
    """255 bytes (ASCII or multi-byte UTF-8) are accepted."""
    assert mz.RAMBlock("x" * 255, bytes(PS)).idstr == "x" * 255
    assert mz.RAMBlock("\u00e9" * 127 + "x", bytes(PS)).idstr.endswith("x")


@pytest.mark.parametrize(
    ("host", "page_size", "exc", "match"),
    [
        (bytes(PS + 1024), PS, ValueError, "host holds 5120 bytes, not a multiple of page_size"),
        (bytes(1000), 1024, ValueError, "host holds 1000 bytes, not a multiple of page_size"),
        (None, PS, TypeError, "host must support the buffer protocol"),
        ("x" * PS, PS, TypeError, "host must support the buffer protocol"),
        ([0] * PS, PS, TypeError, "host must support the buffer protocol"),
        (np.zeros(2 * PS, dtype=np.uint8)[::2], 1024, ValueError, "host must be C-contiguous"),
    ],
    ids=["length", "short", "None", "str", "list", "strided"],
)
def test_ramblock_bad_host(host: object, page_size: int, exc: type, match: str) -> None:
    """The host must be a C-contiguous buffer of whole pages."""
    check(lambda w: mz.RAMBlock("pc.ram", host, page_size), exc, match)


def test_ramblock_bad_on_release() -> None:
    """on_release must be callable."""
    check(lambda w: mz.RAMBlock("pc.ram", bytes(PS), on_release=5), TypeError, "callable")


# ------------------------------------------------------------- ReceivedMap


@pytest.mark.parametrize(
    ("offset", "exc", "match"),
    [
        (100, ValueError, "offset 100 is not a multiple of page_size 4096"),
        (PAGES * PS, ValueError, "offset 32768 is outside the block's 32768 bytes"),
        (-PS, ValueError, "offset -4096 is outside"),
        (True, TypeError, "offset must be an int, not bool"),
        (4096.0, TypeError, "offset must be an int, not float"),
        ("0", TypeError, "offset must be an int, not str"),
    ],
    ids=["misaligned", "at-end", "negative", "bool", "float", "str"],
)
def test_receivedmap_bad_offsets(offset: object, exc: type[Exception], match: str) -> None:
    """test/set/clear take a page-aligned byte offset inside the block."""
    for method in ("test", "set", "clear"):
        check(lambda w, m=method: getattr(w.dst.receivedmap, m)(offset), exc, match)
    check(lambda w: w.dst.page(offset), exc, "offset")


@pytest.mark.parametrize("num_pages", [2.0, True, "8", None], ids=repr)
def test_receivedmap_bad_num_pages(num_pages: object) -> None:
    """ReceivedMap's page count must be an int (not bool), and the message names it."""
    check(lambda w: mz.ReceivedMap(num_pages, PS), TypeError, "num_pages")


def test_receivedmap_negative_num_pages() -> None:
    """A negative page count: ValueError naming num_pages."""
    check(lambda w: mz.ReceivedMap(-1, PS), ValueError, "num_pages must not be negative")


# ----------------------------------------------------------- options, stats


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"zero_page_detection": "fast"}, ValueError, "'none', 'legacy' or 'multifd', not 'fast'"),
        ({"zero_page_detection": "MULTIFD"}, ValueError, "not 'MULTIFD'"),
        ({"zero_page_detection": 2}, TypeError, "zero_page_detection must be a ZeroPageDetection"),
        ({"zero_page_detection": None}, TypeError, "not NoneType"),
        ({"postcopy_ram": "yes"}, TypeError, "postcopy_ram must be a bool, not str"),
        ({"postcopy_ram": 1}, TypeError, "postcopy_ram must be a bool, not int"),
        ({"release_ram": None}, TypeError, "release_ram must be a bool, not NoneType"),
    ],
    ids=["unknown", "upper-case", "int", "None", "postcopy-str", "postcopy-int", "release-None"],
)
def test_migration_options_bad(kwargs: dict, exc: type[Exception], match: str) -> None:
    """MigrationOptions accepts only the enum or its exact value, and real bools."""
    check(lambda w: mz.MigrationOptions(**kwargs), exc, match)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"normal_pages": -1}, ValueError, "normal_pages must not be negative, got -1"),
        ({"normal_pages": 1, "zero_pages": -1}, ValueError, "zero_pages must not be negative"),
        ({"zero_pages": 1.5}, TypeError, "zero_pages must be an int, not float"),
        ({"normal_pages": True}, TypeError, "normal_pages must be an int, not bool"),
        ({"normal_pages": 2, "zero_pages": "3"}, TypeError, "zero_pages must be an int, not str"),
    ],
    ids=["negative", "second-negative", "float", "bool", "second-str"],
)
def test_stats_add_bad(kwargs: dict, exc: type[Exception], match: str) -> None:
    """A bad count leaves both counters as they were (no half-applied add)."""
    check(lambda w: w.stats.add(**kwargs), exc, match)
    check(lambda w: mz.MigrationStats(**kwargs), exc, match)


def test_stats_query_migrate_bad_page_size() -> None:
    """query_migrate's page_size must be a non-negative int."""
    check(lambda w: w.stats.query_migrate("4096"), TypeError, "page_size must be an int")
    check(lambda w: w.stats.query_migrate(-1), ValueError, "page_size must not be negative")


def test_set_simd_bad() -> None:
    """set_simd: str only, known names only; the active path stays as it was."""
    active = mz.get_simd()
    check(lambda w: mz.set_simd(3), TypeError, "name must be a str, not int")
    check(lambda w: mz.set_simd("mmx"), ValueError, "unknown SIMD path 'mmx'; known paths: best")
    check(lambda w: mz.set_simd("AVX2"), ValueError, "unknown SIMD path 'AVX2'")
    assert mz.get_simd() == active
