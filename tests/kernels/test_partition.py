"""The source side: ``partition_zero_pages``, ``send_zero_page_detect``, ``save_zero_pages``.

The order after detection is compared element for element with the model's
literal port of QEMU's two-pointer loop, and the release rule (which offsets,
in which order, when) with ``ram_release_page``'s.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.builders import PAGE_SIZES, Batch, batches, build_host, page_specs, u64
from support.qemu_model import (
    LEGACY,
    MODES,
    MULTIFD,
    NONE,
    RefStats,
    ref_page_is_zero,
    ref_partition,
    ref_save_zero_pages,
    ref_send_zero_page_detect,
)

import multifd_zero as mz
from multifd_zero import _kernels

PS = 4096


def labelled_host(labels: list[str], page_size: int = PS) -> tuple[bytearray, list[int]]:
    """A host with one page per label: labels starting with "Z" are zero pages, others not."""
    specs = [("zero" if label.startswith("Z") else "middle", 7, 0, 0) for label in labels]
    host = build_host(specs, page_size)
    return host, [i * page_size for i in range(len(labels))]


def partitioned_labels(labels: list[str]) -> tuple[list[str], int]:
    """Run the kernel on labelled pages and return the resulting label order."""
    host, offsets = labelled_host(labels)
    arr = u64(offsets)
    n = mz.partition_zero_pages(host, arr, PS)
    return [labels[int(o) // PS] for o in arr], n


def recorder() -> tuple[list[list[int]], object]:
    """An ``on_release`` callback that records each call's offsets."""
    calls: list[list[int]] = []

    def on_release(offsets: np.ndarray) -> None:
        assert offsets.dtype == np.uint64
        calls.append([int(o) for o in offsets])

    return calls, on_release


# ------------------------------------------------------------ the documented cases


@pytest.mark.parametrize(
    ("labels", "expected", "normal_num"),
    [
        (["Z1", "N1", "Z2", "N2", "Z3"], ["N2", "N1", "Z2", "Z3", "Z1"], 2),
        (["Z", "N1", "N2"], ["N2", "N1", "Z"], 2),
        (["Z0", "Z1", "Z2", "Z3", "Z4"], ["Z1", "Z2", "Z3", "Z4", "Z0"], 0),  # rotate left by one
        (["Z0", "Z1"], ["Z1", "Z0"], 0),
        (["Z0"], ["Z0"], 0),
        (["N0", "N1", "N2"], ["N0", "N1", "N2"], 3),  # all normal: untouched
        (["N0", "Z1", "N2", "N3"], ["N0", "N3", "N2", "Z1"], 3),  # single zero: swap with last
        (["N0", "N1", "Z2"], ["N0", "N1", "Z2"], 2),  # single zero at the end: nothing moves
        ([], [], 0),
        (["N0", "Z1", "Z2", "N3", "Z4", "N5"], ["N0", "N5", "N3", "Z4", "Z2", "Z1"], 3),
    ],
)
def test_documented_orders(labels: list[str], expected: list[str], normal_num: int) -> None:
    """QEMU's order for the documented cases, for both the kernel and the model."""
    assert partitioned_labels(labels) == (expected, normal_num)
    host, offsets = labelled_host(labels)
    model = ref_partition(host, offsets, PS)
    assert [labels[o // PS] for o in model.offsets] == expected
    assert model.normal_num == normal_num


def test_all_zero_batch_of_full_packet_rotates_left_by_one() -> None:
    """A full 128-page all-zero batch comes out rotated left by one, not reversed or sorted."""
    host = bytes(128 * PS)
    offsets = u64([i * PS for i in range(128)])
    assert mz.partition_zero_pages(host, offsets, PS) == 0
    assert offsets.tolist() == [i * PS for i in range(1, 128)] + [0]


def test_normal_order_is_not_stable() -> None:
    """Normal pages taken from the tail fill holes in descending position order."""
    labels = ["Z0", "Z1", "Z2", "N3", "N4", "N5"]
    assert partitioned_labels(labels) == (["N5", "N4", "N3", "Z2", "Z1", "Z0"], 3)


# ------------------------------------------------------------- hypothesis vs model


@given(batches())
def test_partition_matches_model_element_for_element(batch: Batch) -> None:
    """Random batches (random kinds, order, duplicates): same order and normal_num as QEMU."""
    arr = u64(batch.offsets)
    host_before = bytes(batch.host)
    n = mz.partition_zero_pages(batch.host, arr, batch.page_size)
    assert batch.host == host_before  # the host is only read
    model = ref_partition(batch.host, batch.offsets, batch.page_size)
    assert type(n) is int
    assert n == model.normal_num
    assert arr.tolist() == model.offsets


@settings(max_examples=15)
@given(batches(page_sizes=PAGE_SIZES, max_pages=4, max_batch=12))
def test_partition_matches_model_every_page_size(batch: Batch) -> None:
    """Page sizes up to 2 MiB (few pages for the big ones): same order as QEMU."""
    arr = u64(batch.offsets)
    n = mz.partition_zero_pages(batch.host, arr, batch.page_size)
    model = ref_partition(batch.host, batch.offsets, batch.page_size)
    assert (n, arr.tolist()) == (model.normal_num, model.offsets)


@given(batches(max_pages=40))
def test_partition_properties(batch: Batch) -> None:
    """A permutation; normal pages first, zero pages after; in-place normals keep their slot."""
    arr = u64(batch.offsets)
    n = mz.partition_zero_pages(batch.host, arr, batch.page_size)
    out = arr.tolist()
    assert sorted(out) == sorted(batch.offsets)
    for k, off in enumerate(out):
        assert ref_page_is_zero(batch.host, off, batch.page_size) == (k >= n)
    for k in range(n):
        if not ref_page_is_zero(batch.host, batch.offsets[k], batch.page_size):
            assert out[k] == batch.offsets[k]


def test_partition_through_array_array_buffer() -> None:
    """Offsets may be any writable 1-D uint64 buffer, such as array.array('Q')."""
    import array

    labels = ["Z1", "N1", "Z2", "N2", "Z3"]
    host, offsets = labelled_host(labels)
    arr = array.array("Q", offsets)
    assert mz.partition_zero_pages(bytes(host), arr, PS) == 2
    assert [labels[o // PS] for o in arr] == ["N2", "N1", "Z2", "Z3", "Z1"]


class _Offsets(np.ndarray):
    """An ndarray subclass: the kernels take it through the buffer protocol."""


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda a: a, id="ndarray (read directly)"),
        pytest.param(lambda a: a.view(_Offsets), id="ndarray subclass"),
        pytest.param(lambda a: memoryview(a), id="memoryview"),
        pytest.param(lambda a: a.view(np.dtype("=u8")), id="equal dtype, other object"),
    ],
)
def test_offsets_read_directly_or_through_a_buffer_agree(wrap: object) -> None:
    """Exact uint64 ndarrays skip the buffer request; other containers give the same order."""
    # The import probe must accept this numpy's arrays, or the fast entry is lost unnoticed.
    assert _kernels._reads_ndarrays_directly()
    labels = ["Z1", "N1", "Z2", "N2", "Z3", "N3"]
    host, offsets = labelled_host(labels)
    arr = u64(offsets)
    model = ref_partition(bytes(host), offsets, PS)
    assert mz.partition_zero_pages(bytes(host), wrap(arr), PS) == model.normal_num  # type: ignore[operator]
    assert arr.tolist() == model.offsets
    grid = np.array([offsets, offsets[::-1]], dtype=np.uint64)
    rows = [ref_partition(bytes(host), list(r), PS) for r in grid.tolist()]
    assert mz.partition_batches(bytes(host), wrap(grid), PS).tolist() == [  # type: ignore[operator]
        r.normal_num for r in rows
    ]
    assert grid.tolist() == [r.offsets for r in rows]


def test_partition_default_page_size_is_4096() -> None:
    """Without ``page_size`` the pages are 4 KiB."""
    host, offsets = labelled_host(["Z", "N"])
    arr = u64(offsets)
    assert mz.partition_zero_pages(host, arr) == 1
    assert arr.tolist() == [PS, 0]


# -------------------------------------------------------- send_zero_page_detect


def run_send(
    batch: Batch,
    mode: str,
    *,
    release_ram: bool = False,
    in_postcopy: bool = False,
    stats: mz.MigrationStats | None = None,
) -> tuple[mz.MultiFDPages, int, mz.MigrationStats, list[list[int]]]:
    calls, on_release = recorder()
    block = mz.RAMBlock("pc.ram", bytes(batch.host), batch.page_size, on_release=on_release)
    pages = mz.MultiFDPages(block, batch.offsets)
    stats = stats if stats is not None else mz.MigrationStats()
    options = mz.MigrationOptions(zero_page_detection=mode, release_ram=release_ram)
    n = mz.send_zero_page_detect(pages, options=options, stats=stats, in_postcopy=in_postcopy)
    return pages, n, stats, calls


@given(
    batches(),
    st.sampled_from(MODES),
    st.booleans(),
    st.booleans(),
)
def test_send_zero_page_detect_matches_model(
    batch: Batch, mode: str, release_ram: bool, in_postcopy: bool
) -> None:
    """Order, normal_num, stats and released offsets equal the model's, in every mode."""
    pages, n, stats, calls = run_send(
        batch, mode, release_ram=release_ram, in_postcopy=in_postcopy
    )
    ref_stats = RefStats()
    model = ref_send_zero_page_detect(
        batch.host,
        batch.offsets,
        batch.page_size,
        ref_stats,
        mode=mode,
        release_ram=release_ram,
        in_postcopy=in_postcopy,
    )
    assert n == pages.normal_num == model.normal_num
    assert pages.offset.tolist() == model.offsets
    assert pages.normal.tolist() == model.offsets[: model.normal_num]
    assert pages.zero.tolist() == model.offsets[model.normal_num :]
    assert pages.zero_num == len(batch.offsets) - model.normal_num
    assert (stats.normal_pages, stats.zero_pages) == (ref_stats.normal_pages, ref_stats.zero_pages)
    released = [off for call in calls for off in call]
    assert released == model.released
    assert len(calls) <= 1
    if model.released:
        assert len(calls) == 1


@pytest.mark.parametrize("mode", [NONE, LEGACY])
def test_none_and_legacy_count_every_page_normal(mode: str) -> None:
    """With none/legacy the channel tests nothing: all pages normal, order untouched."""
    labels = ["Z1", "N1", "Z2", "N2", "Z3"]
    host, offsets = labelled_host(labels)
    batch = Batch(PS, host, labels, offsets)
    pages, n, stats, calls = run_send(batch, mode, release_ram=True, in_postcopy=True)
    assert n == 5
    assert pages.offset.tolist() == offsets
    assert pages.zero.tolist() == []
    assert stats.snapshot() == (5, 0)
    assert calls == []


def test_stats_accumulate_over_batches() -> None:
    """Stats add up over batches, in every mode, and match query-migrate's names."""
    labels = ["Z1", "N1", "Z2", "N2", "Z3"]
    host, offsets = labelled_host(labels)
    batch = Batch(PS, host, labels, offsets)
    stats = mz.MigrationStats()
    for mode in (MULTIFD, MULTIFD, NONE, LEGACY):
        run_send(batch, mode, stats=stats)
    assert stats.snapshot() == (2 + 2 + 5 + 5, 3 + 3)
    assert stats.query_migrate(PS) == {
        "normal": 14,
        "duplicate": 6,
        "normal-bytes": 14 * PS,
        "page-size": PS,
    }


def test_detection_before_and_after() -> None:
    """``normal``/``zero`` raise before detection, and normal_num is 0 then (as in QEMU)."""
    host, offsets = labelled_host(["Z", "N"])
    pages = mz.MultiFDPages(mz.RAMBlock("pc.ram", host), offsets)
    assert pages.normal_num == 0
    assert not pages.detected
    for name in ("normal", "zero", "zero_num"):
        with pytest.raises(RuntimeError, match="detection has not run"):
            getattr(pages, name)
    mz.send_zero_page_detect(pages, options=mz.MigrationOptions(), stats=mz.MigrationStats())
    assert pages.detected
    assert (pages.normal.tolist(), pages.zero.tolist()) == ([PS], [0])
    assert not pages.normal.flags.writeable
    assert not pages.zero.flags.writeable


@given(batches(min_batch=1))
def test_normal_data_is_the_normal_pages_in_order(batch: Batch) -> None:
    """``normal_data()`` is the normal pages' bytes in ``normal`` order (nocomp's payload)."""
    pages, _, _, _ = run_send(batch, MULTIFD)
    data = pages.normal_data()
    expected = b"".join(bytes(batch.host[o : o + batch.page_size]) for o in pages.normal.tolist())
    assert bytes(data) == expected


# ----------------------------------------------------------------- release rule


@pytest.mark.parametrize("release_ram", [False, True])
@pytest.mark.parametrize("in_postcopy", [False, True])
def test_release_only_with_release_ram_in_postcopy(release_ram: bool, in_postcopy: bool) -> None:
    """``on_release`` runs once per batch, in QEMU's release order, only with both flags."""
    labels = ["Z1", "N1", "Z2", "N2", "Z3"]
    host, offsets = labelled_host(labels)
    pages, _, _, calls = run_send(
        Batch(PS, host, labels, offsets),
        MULTIFD,
        release_ram=release_ram,
        in_postcopy=in_postcopy,
    )
    if release_ram and in_postcopy:
        # Discovery order: Z1 (slot 0), then Z3 swapped in at slot 0, then Z2.
        assert [[labels[o // PS] for o in call] for call in calls] == [["Z1", "Z3", "Z2"]]
        assert calls[0] == pages.zero.tolist()[::-1]
    else:
        assert calls == []


def test_release_all_zero_batch_order() -> None:
    """All-zero batch: released a0, a(n-1), a(n-2), ..., a1 (model and kernel agree)."""
    host = bytes(6 * PS)
    offsets = [i * PS for i in range(6)]
    _, _, _, calls = run_send(
        Batch(PS, bytearray(host), ["Z"] * 6, offsets),
        MULTIFD,
        release_ram=True,
        in_postcopy=True,
    )
    assert calls == [[0, 5 * PS, 4 * PS, 3 * PS, 2 * PS, PS]]
    assert ref_partition(host, offsets, PS).released == calls[0]


def test_no_release_call_without_zero_pages() -> None:
    """A batch without zero pages releases nothing."""
    labels = ["N0", "N1"]
    host, offsets = labelled_host(labels)
    _, _, _, calls = run_send(
        Batch(PS, host, labels, offsets), MULTIFD, release_ram=True, in_postcopy=True
    )
    assert calls == []


# ------------------------------------------------------------- legacy main thread


@given(batches(), st.sampled_from(MODES), st.booleans(), st.booleans())
def test_save_zero_pages_matches_model(
    batch: Batch, mode: str, release_ram: bool, in_postcopy: bool
) -> None:
    """Legacy check: zero pages out in queue order, counted, released under the rule."""
    calls, on_release = recorder()
    block = mz.RAMBlock("pc.ram", bytes(batch.host), batch.page_size, on_release=on_release)
    stats = mz.MigrationStats()
    options = mz.MigrationOptions(zero_page_detection=mode, release_ram=release_ram)
    normal, zero = mz.save_zero_pages(
        block, batch.offsets, options=options, stats=stats, in_postcopy=in_postcopy
    )
    ref_stats = RefStats()
    r_normal, r_zero, r_released = ref_save_zero_pages(
        batch.host,
        batch.offsets,
        batch.page_size,
        ref_stats,
        mode=mode,
        release_ram=release_ram,
        in_postcopy=in_postcopy,
    )
    assert normal.dtype == zero.dtype == np.uint64
    assert normal.tolist() == r_normal
    assert zero.tolist() == r_zero
    assert stats.snapshot() == (ref_stats.normal_pages, ref_stats.zero_pages)
    assert [o for call in calls for o in call] == r_released
    assert len(calls) <= 1


@pytest.mark.parametrize("page_size", [1024, 4096, 65536])
def test_partition_full_packets_from_seeded_rng(page_size: int) -> None:
    """Full packets (page_count pages, duplicates, all kinds) from 25 seeds: QEMU's order."""
    capacity = mz.multifd_ram_page_count(page_size)
    for seed in range(25):
        rng = np.random.default_rng(seed)
        num_pages = int(rng.integers(1, 2 * capacity))
        kinds = rng.choice(["zero", "random", "first", "last", "middle", "pos"], size=num_pages)
        specs = [
            (
                str(kind),
                int(rng.integers(1, 256)),
                int(rng.integers(0, page_size)),
                seed * 1000 + k,
            )
            for k, kind in enumerate(kinds)
        ]
        host = build_host(specs, page_size)
        offsets = [int(i) * page_size for i in rng.integers(0, num_pages, size=capacity)]
        arr = u64(offsets)
        n = mz.partition_zero_pages(host, arr, page_size)
        model = ref_partition(host, offsets, page_size)
        assert (n, arr.tolist()) == (model.normal_num, model.offsets), seed


# ---------------------------------------------------------- partition_batches


@st.composite
def batch_grids(draw: st.DrawFn) -> tuple[int, bytearray, list[list[int]]]:
    """A host and a rows x cols grid of offsets into it (every row one batch)."""
    page_size = draw(st.sampled_from([1024, 4096, 65536]))
    specs = draw(st.lists(page_specs(), min_size=1, max_size=16))
    rows = draw(st.integers(0, 6))
    cols = draw(st.integers(0, 40))
    index = st.integers(0, len(specs) - 1)
    grid = draw(st.lists(st.lists(index, min_size=cols, max_size=cols), min_size=rows,
                         max_size=rows))  # fmt: skip
    host = build_host(specs, page_size)
    return page_size, host, [[i * page_size for i in row] for row in grid]


@given(batch_grids())
def test_partition_batches_matches_model_row_by_row(
    case: tuple[int, bytearray, list[list[int]]],
) -> None:
    """Each row of the 2-D array ends as QEMU's loop leaves that batch; counts per row."""
    page_size, host, grid = case
    cols = len(grid[0]) if grid else 0
    arr = np.array(grid, dtype=np.uint64).reshape(len(grid), cols)
    normals = mz.partition_batches(host, arr, page_size)
    assert normals.dtype == np.int64
    assert normals.shape == (len(grid),)
    for r, row in enumerate(grid):
        model = ref_partition(host, row, page_size)
        assert arr[r].tolist() == model.offsets, r
        assert normals[r] == model.normal_num, r


def test_partition_batches_equals_partition_zero_pages() -> None:
    """Full 128-page packets: partition_batches gives what partition_zero_pages gives per row."""
    rng = np.random.default_rng(99)
    pages = 512
    ram = np.zeros((pages, PS), dtype=np.uint8)
    hit = np.flatnonzero(rng.random(pages) < 0.5)
    ram[hit, rng.integers(0, PS, size=hit.size)] = 1
    host = ram.reshape(-1)
    grid = rng.integers(0, pages, size=(16, 128)).astype(np.uint64) * np.uint64(PS)
    one_by_one = grid.copy()
    counts = [mz.partition_zero_pages(host, one_by_one[r], PS) for r in range(16)]
    normals = mz.partition_batches(host, grid, PS)
    assert normals.tolist() == counts
    np.testing.assert_array_equal(grid, one_by_one)
