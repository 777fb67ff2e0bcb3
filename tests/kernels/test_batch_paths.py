"""The batch kernels on every SIMD path: one marker byte at every position of a page.

``zero_page_mask``, ``scan_zero_pages`` and ``partition_zero_pages`` run one
compiled loop per path, with the page check inlined and separate loops for
4 KiB pages and for other sizes, and for consecutive pages and for offsets.
Each loop is checked here against the model, at host starts that put the
page edges anywhere inside a cache line.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.qemu_model import ref_page_is_zero, ref_partition, ref_zero_page_mask

import multifd_zero as mz
from multifd_zero import _bench_kernels

SHIFTS = (0, 1, 8, 16, 32, 63)


def _marked_pages(page_size: int, shift: int, step: int) -> memoryview:
    """Page ``k`` has its one non-zero byte at ``k * step``; two zero pages close the host.

    The host is a view that starts ``shift`` bytes into its backing bytearray.
    """
    positions = range(0, page_size, step)
    pages = len(positions) + 2
    backing = bytearray(shift + pages * page_size)
    for k, pos in enumerate(positions):
        backing[shift + k * page_size + pos] = 1 + k % 255
    return memoryview(backing)[shift:]


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize(("page_size", "step"), [(1024, 1), (4096, 1), (8192, 7)])
def test_mask_scan_and_partition_see_every_marker(
    simd_path: str, page_size: int, step: int, shift: int
) -> None:
    """Every page with a marker is normal, the closing pages are zero, on this path."""
    host = _marked_pages(page_size, shift, step)
    expected = ref_zero_page_mask(bytes(host), page_size)
    assert expected.count(True) == 2

    assert mz.zero_page_mask(host, page_size).tolist() == expected

    pages = len(expected)
    offsets = (np.arange(pages, dtype=np.uint64) * np.uint64(page_size))[::-1].copy()
    assert mz.scan_zero_pages(host, offsets, page_size).tolist() == expected[::-1]

    model = ref_partition(bytes(host), offsets.tolist(), page_size)
    assert mz.partition_zero_pages(host, offsets, page_size) == model.normal_num
    assert offsets.tolist() == model.offsets
    assert mz.get_simd() == simd_path


@pytest.mark.parametrize("page_size", [1024, 4096, 65536])
def test_small_and_large_batches_agree(simd_path: str, page_size: int) -> None:
    """Batches that fit the stack buffers and batches that do not give the model's order."""
    rng = np.random.default_rng(page_size)
    pages = 1100 if page_size <= 4096 else 40
    ram = np.zeros((pages, page_size), dtype=np.uint8)
    normal = rng.random(pages) < 0.5
    ram[normal, rng.integers(0, page_size, size=int(normal.sum()))] = 0x80
    host = ram.tobytes()
    for count in (1, 511, 512, 513, pages):
        offsets = rng.permutation(pages)[:count].astype(np.uint64) * np.uint64(page_size)
        model = ref_partition(host, offsets.tolist(), page_size)
        assert mz.partition_zero_pages(host, offsets, page_size) == model.normal_num, count
        assert offsets.tolist() == model.offsets, count


@pytest.mark.parametrize("count", [1, 2, 3, 128, 513])
@pytest.mark.parametrize("kind", ["all zero", "all normal"])
def test_uniform_batches_take_qemus_order(simd_path: str, count: int, kind: str) -> None:
    """All-zero and all-normal batches (a shortcut skips the replay) still end in QEMU's order."""
    page_size = 4096
    ram = np.zeros((count + 3, page_size), dtype=np.uint8)
    if kind == "all normal":
        ram[:, 100] = 7
    host = ram.tobytes()
    offsets = np.random.default_rng(count).permutation(count + 3)[:count].astype(np.uint64)
    offsets *= np.uint64(page_size)
    model = ref_partition(host, offsets.tolist(), page_size)
    assert mz.partition_zero_pages(host, offsets, page_size) == model.normal_num
    assert offsets.tolist() == model.offsets
    assert model.normal_num == (count if kind == "all normal" else 0)


@pytest.mark.parametrize("shift", [0, 1, 32, 63])
@pytest.mark.parametrize("length", [0, 1, 63, 64, 65, 511, 512, 513, 1100, 4096 + 77])
def test_read_all_limit_loop_sees_every_byte(shift: int, length: int) -> None:
    """The benchmark's read-limit loop ORs every byte: a marker anywhere shows."""
    backing = bytearray(shift + length)
    view = memoryview(backing)[shift:]
    assert _bench_kernels._read_all(view) == 0
    for pos in range(length):
        backing[shift + pos] = 0x80
        assert _bench_kernels._read_all(view) != 0, pos
        backing[shift + pos] = 0


@pytest.mark.parametrize("shift", [0, 16, 63])
def test_zero_all_limit_loop_zeroes_exactly_the_buffer(shift: int) -> None:
    """The write-limit loop zeroes its buffer and not a byte around it; read-only is refused."""
    backing = bytearray(b"\xff" * (shift + 70_000 + 64))
    _bench_kernels._zero_all(memoryview(backing)[shift : shift + 70_000])
    assert backing[shift : shift + 70_000] == bytes(70_000)
    assert set(backing[:shift]) <= {0xFF} and set(backing[shift + 70_000 :]) == {0xFF}
    with pytest.raises(ValueError, match="read-only"):
        _bench_kernels._zero_all(bytes(4096))


# Page kinds for the batch loop's three ways through a page (csrc/batch.h):
# rejected by its sampled byte, read alone, or read in a group of eight side
# by side, with runs of adjacent pages that switch it to one stream.
_KINDS = ("zero", "first byte", "late byte", "last byte", "dense")


@st.composite
def _mixed_batches(draw: st.DrawFn) -> tuple[int, bytes, list[int]]:
    page_size = draw(st.sampled_from([1024, 4096]))
    kinds = draw(st.lists(st.sampled_from(_KINDS), min_size=1, max_size=48))
    ram = bytearray(len(kinds) * page_size)
    for k, kind in enumerate(kinds):
        if kind == "first byte":
            ram[k * page_size] = 1
        elif kind == "late byte":
            ram[k * page_size + draw(st.integers(1, page_size - 1))] = 0x40
        elif kind == "last byte":
            ram[(k + 1) * page_size - 1] = 2
        elif kind == "dense":
            ram[k * page_size : (k + 1) * page_size] = b"\x5a" * page_size
    pages = st.integers(0, len(kinds) - 1)
    runs = st.tuples(pages, st.integers(1, 12)).map(
        lambda run: list(range(run[0], min(run[0] + run[1], len(kinds))))
    )
    order = draw(st.lists(st.one_of(pages.map(lambda p: [p]), runs), max_size=12))
    offsets = [p * page_size for chunk in order for p in chunk]
    return page_size, bytes(ram), offsets


@settings(max_examples=150, deadline=None)
@given(_mixed_batches())
def test_hypothesis_mixed_batches_on_every_path(case: tuple[int, bytes, list[int]]) -> None:
    """Groups, streams of adjacent pages and their fallbacks give the model's answers."""
    page_size, host, offsets = case
    expected = [ref_page_is_zero(host, off, page_size) for off in offsets]
    model = ref_partition(host, offsets, page_size)
    active = mz.get_simd()
    try:
        for path in mz.simd_paths():
            mz.set_simd(path)
            offs = np.array(offsets, dtype=np.uint64)
            assert mz.scan_zero_pages(host, offs, page_size).tolist() == expected, path
            assert mz.partition_zero_pages(host, offs, page_size) == model.normal_num, path
            assert offs.tolist() == model.offsets, path
            assert mz.zero_page_mask(host, page_size).tolist() == ref_zero_page_mask(
                host, page_size
            ), path
    finally:
        mz.set_simd(active)


@pytest.mark.parametrize("page_size", [1024, 4096])
def test_one_normal_page_anywhere_in_zero_memory(simd_path: str, page_size: int) -> None:
    """Contiguous zero pages switch the loop to runs read as one region: one non-zero byte
    in any page of the region, at its start, middle or end, still makes only that page normal."""
    pages = 60
    base = bytearray(pages * page_size)
    offsets = np.arange(pages, dtype=np.uint64) * np.uint64(page_size)
    for page in range(pages):
        for pos in (0, 129, page_size // 2 + 64, page_size - 1):
            at = page * page_size + pos
            base[at] = 0x10
            host = bytes(base)
            base[at] = 0
            expected = [k != page for k in range(pages)]
            assert mz.zero_page_mask(host, page_size).tolist() == expected, (page, pos)
            assert mz.scan_zero_pages(host, offsets, page_size).tolist() == expected, (page, pos)


def test_benchmark_floor_loops_read_what_they_say() -> None:
    """The floors of `bench`: one sampled load per page, and zero pages read eight at a time."""
    ps = 4096
    host = bytearray(16 * ps)
    offsets = np.arange(16, dtype=np.uint64) * np.uint64(ps)
    out = bytearray(16)
    _bench_kernels._touch_heads(bytes(host), offsets, out)
    assert list(out) == [1] * 16
    assert _bench_kernels._read_known(bytes(host), offsets, ps) == 2 * ps  # two groups of 8
    host[9 * ps + 3000] = 1  # in the second group, in the step starting at 2944
    assert _bench_kernels._read_known(bytes(host), offsets, ps) == ps + 2944
    with pytest.raises(ValueError, match="leaves host"):
        _bench_kernels._read_known(bytes(host), offsets + np.uint64(ps), ps)
