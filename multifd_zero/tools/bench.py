"""Benchmarks: multifd_zero's kernels against the baselines a user would reach for.

Every row is measured in one process, in one run, against numpy and against a
``bytes ==`` comparison with a zero page, and reported in ns per page and GB/s
with the ratios. Medians of repeated runs. This is a measurement, never a test.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import _bench_kernels, _kernels
from .._threads import WorkerThread
from ..guest import make_guest_ram
from .bench_goals import evaluate_goals, format_goals

__all__ = ["BenchRow", "cpu_name", "format_table", "machine", "run_benchmarks", "write_json"]

PAGE = 4096
BATCH = 128


@dataclass
class BenchRow:
    """One benchmark row: ns per page for each contender."""

    name: str
    pages: int
    ns_per_page: dict[str, float] = field(default_factory=dict)
    note: str = ""

    def measure(
        self, contenders: dict[str, Callable[[], object]], repeats: int, min_time: float
    ) -> None:
        """Time each contender over this row's pages, in order (see ``_median_ns``)."""
        for who, fn in contenders.items():
            self.ns_per_page[who] = _median_ns(fn, self.pages, repeats, min_time)

    def gb_per_s(self, who: str) -> float:
        """Guest memory scanned per second, in GB/s (1e9 bytes)."""
        return PAGE / self.ns_per_page[who]

    def ratio(self, who: str, base: str = "multifd_zero") -> float:
        """How many times faster ``base`` is than ``who``."""
        return self.ns_per_page[who] / self.ns_per_page[base]


def cpu_name() -> str:
    """The CPU model, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _median_ns(fn: Callable[[], object], units: int, repeats: int, min_time: float) -> float:
    """Median over ``repeats`` runs of the time per unit, each run at least ``min_time`` s."""
    fn()
    loops = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            break
        loops *= 2
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter() - t0) / loops / units * 1e9)
    return statistics.median(samples)


def _pages(n: int, zero_share: float, seed: int) -> npt.NDArray[np.uint8]:
    """``n`` pages of the synthetic guest: a ``zero_share`` of them zero, the rest random."""
    return make_guest_ram(
        n * PAGE, page_size=PAGE, zero_ratio=zero_share, seed=seed, sparse_share=0.0
    )


def _numpy_partition(words: npt.NDArray[np.uint64], offsets: npt.NDArray[np.uint64]) -> Any:
    zero = np.bitwise_or.reduce(words, axis=1) == 0
    return offsets[~zero], offsets[zero]


def _bytes_partition(
    host: bytes, offsets: list[int], zero_page: bytes
) -> tuple[list[int], list[int]]:
    normal: list[int] = []
    zero: list[int] = []
    for off in offsets:
        (zero if host[off : off + PAGE] == zero_page else normal).append(off)
    return normal, zero


def _batch_host(kind: str) -> bytes:
    """One 128-page batch: ``kind`` is a share of zero pages, or "byte 3800"."""
    if kind == "byte 3800":
        # Half zero, half zero but for one byte late in the page: the sampled
        # bytes and the first word all pass, so every page is read far.
        ram = np.zeros((BATCH, PAGE), dtype=np.uint8)
        ram[1::2, 3800] = 1
        return ram.tobytes()
    return _pages(BATCH, float(kind), seed=1).tobytes()


def _batch_row(name: str, kind: str, repeats: int, min_time: float) -> BenchRow:
    host = _batch_host(kind)
    offsets = np.arange(BATCH, dtype=np.uint64) * np.uint64(PAGE)
    words = np.frombuffer(host, dtype=np.uint64).reshape(BATCH, PAGE // 8)
    off_list = offsets.tolist()
    zero_page = bytes(PAGE)
    row = BenchRow(name, BATCH)
    partition = _kernels.partition_zero_pages
    row.measure(
        {
            "multifd_zero": lambda: partition(host, offsets, PAGE),
            "numpy": lambda: _numpy_partition(words, offsets),
            "bytes ==": lambda: _bytes_partition(host, off_list, zero_page),
            "read limit": lambda: _bench_kernels._read_all(host),
        },
        repeats,
        min_time,
    )
    row.note = (
        "one 512 KiB batch (128 x 4 KiB), in L2, one call per batch; numpy: "
        "bitwise_or.reduce(axis=1) + split; read limit: one streaming OR over the same "
        "512 KiB, no early exit (the L2 read limit)"
    )
    return row


def _random_batch_row(repeats: int, min_time: float) -> BenchRow:
    """All pages normal: the first byte decides, so the fixed costs show."""
    host = _batch_host("0.0")
    offsets = np.arange(BATCH, dtype=np.uint64) * np.uint64(PAGE)
    reps = 64
    grid = np.tile(offsets, (reps, 1))
    flat = grid.reshape(-1).copy()
    out = bytearray(flat.size)
    words = np.frombuffer(host, dtype=np.uint64).reshape(BATCH, PAGE // 8)
    partition = _kernels.partition_zero_pages
    row = BenchRow("batch partition, all pages random (the first byte decides)", BATCH)
    row.measure(
        {
            "multifd_zero": lambda: partition(host, offsets, PAGE),
            "numpy": lambda: _numpy_partition(words, offsets),
        },
        repeats,
        min_time,
    )
    units = BATCH * reps
    row.ns_per_page["64 batches a call"] = _median_ns(
        lambda: _kernels.partition_batches(host, grid, PAGE), units, repeats, min_time
    )
    row.ns_per_page["heads floor"] = _median_ns(
        lambda: _bench_kernels._touch_heads(host, flat, out), units, repeats, min_time
    )
    row.note = (
        "one 512 KiB batch in L2; multifd_zero: one call per batch; 64 batches a call: "
        "partition_batches; heads floor: a C loop that only loads each page's first byte "
        "(no call, no check): the least any batch loop costs here"
    )
    return row


def _region_row(
    name: str,
    ram: npt.NDArray[np.uint8],
    repeats: int,
    min_time: float,
    *,
    all_zero: bool = False,
) -> BenchRow:
    """The scan of a whole region; ``all_zero`` also times one ``is_zero`` over all of it."""
    n = ram.size // PAGE
    words = ram.view(np.uint64).reshape(n, PAGE // 8)
    host = ram.data
    zero_page = bytes(PAGE)
    row = BenchRow(name, n)
    row.ns_per_page["multifd_zero"] = _median_ns(
        lambda: _kernels.zero_page_mask(host, PAGE), n, repeats, min_time
    )
    row.ns_per_page["numpy"] = _median_ns(
        lambda: np.logical_not(words.any(axis=1)), n, max(1, repeats // 2), min_time
    )

    raw = ram.tobytes()

    def by_bytes() -> int:
        return sum(raw[o : o + PAGE] == zero_page for o in range(0, len(raw), PAGE))

    row.ns_per_page["bytes =="] = _median_ns(by_bytes, n, max(1, repeats // 3), min_time)
    _add_partition_and_read_limit(row, ram, repeats, min_time)
    row.note = (
        f"{ram.size >> 20} MiB region, out of cache; multifd_zero: zero_page_mask; "
        "partition: partition_batches over every 128-page batch; numpy: any(axis=1)"
    )
    if all_zero:
        # Only a zero region makes is_zero read every byte.
        row.measure({"is_zero": lambda: _kernels.is_zero(host)}, repeats, min_time)
        row.note += "; is_zero: one call on the whole region"
    return row


def _add_partition_and_read_limit(
    row: BenchRow, ram: npt.NDArray[np.uint8], repeats: int, min_time: float
) -> None:
    """Add two contenders over a whole region: every 128-page batch partitioned, and one read."""
    offsets = (np.arange(row.pages, dtype=np.uint64) * np.uint64(PAGE)).reshape(-1, BATCH)
    row.measure(
        {
            "partition": lambda: _kernels.partition_batches(ram, offsets, PAGE),
            "read limit": lambda: _bench_kernels._read_all(ram),
        },
        repeats,
        min_time,
    )


def _threads_ns(fn: Callable[[int], object], nthreads: int, units: int, repeats: int) -> float:
    """Median ns per unit when ``nthreads`` threads each run ``fn(index)`` once."""
    samples = []
    for _ in range(repeats):
        barrier = threading.Barrier(nthreads + 1)

        def work(i: int, barrier: threading.Barrier = barrier) -> None:
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                return  # the run was interrupted
            fn(i)

        # Daemon threads and an aborted barrier: a Ctrl-C here must not leave
        # threads waiting at the barrier, which would hold the interpreter's exit.
        threads = [WorkerThread(target=work, args=(i,), daemon=True) for i in range(nthreads)]
        try:
            for t in threads:
                t.start()
            barrier.wait()
            t0 = time.perf_counter()
            for t in threads:
                t.join()
        except BaseException:
            barrier.abort()
            raise
        samples.append((time.perf_counter() - t0) / units * 1e9)
    return statistics.median(samples)


def _both_on_one(fn: Callable[[int], None]) -> Callable[[int], None]:
    """Both threads' work, done by one thread."""

    def both(_: int) -> None:
        fn(0)
        fn(1)

    return both


def _scaling_rows(ram: npt.NDArray[np.uint8], repeats: int) -> list[BenchRow]:
    rows = []
    n = ram.size // PAGE
    half = ram.size // 2
    halves = [ram.data[:half], ram.data[half:]]
    row = BenchRow("out of cache, 1 vs 2 threads (zero_page_mask on halves)", n)
    mask = _kernels.zero_page_mask
    row.ns_per_page["1 thread"] = _threads_ns(
        lambda i: (mask(halves[0], PAGE), mask(halves[1], PAGE)), 1, n, repeats
    )
    row.ns_per_page["2 threads"] = _threads_ns(
        lambda i: _kernels.zero_page_mask(halves[i], PAGE), 2, n, repeats
    )
    rows.append(row)
    # In cache: each thread partitions its own L2-resident batch again and
    # again, 64 batches a call (partition_batches) and one batch a call.
    reps = 64
    regions = [_pages(BATCH, 1.0, seed=3 + i) for i in range(2)]
    grids = [
        np.tile(np.arange(BATCH, dtype=np.uint64) * np.uint64(PAGE), (reps, 1)) for _ in range(2)
    ]
    singles = [np.arange(BATCH, dtype=np.uint64) * np.uint64(PAGE) for _ in range(2)]
    calls = 40

    def batched(i: int) -> None:
        for _ in range(calls):
            _kernels.partition_batches(regions[i], grids[i], PAGE)

    def single(i: int) -> None:
        for _ in range(calls * reps):
            _kernels.partition_zero_pages(regions[i], singles[i], PAGE)

    units = BATCH * reps * calls * 2
    for label, fn in (("64 batches a call", batched), ("one batch a call", single)):
        row = BenchRow(f"in L2, 1 vs 2 threads (partition, 100% zero, {label})", units)
        row.ns_per_page["1 thread"] = _threads_ns(_both_on_one(fn), 1, units, repeats)
        row.ns_per_page["2 threads"] = _threads_ns(fn, 2, units, repeats)
        rows.append(row)
    # The ceiling: calls as long as one batch's, that only spin without the GIL.
    call_ns = rows[-1].ns_per_page["1 thread"] * BATCH
    busy = _bench_kernels._busy

    def spin(i: int) -> None:
        for _ in range(calls * reps):
            busy(call_ns)

    # The hardware's ceiling: the read-limit loop over each thread's own batch,
    # as many calls, with the GIL released; two vCPUs that share a core or its
    # caches on the host scale less than two whole cores.
    read_all = _bench_kernels._read_all

    def read(i: int) -> None:
        for _ in range(calls * reps):
            read_all(regions[i])

    row = BenchRow(
        "L2 ceiling, 1 vs 2 threads (the read-limit loop on each thread's batch)", units
    )
    row.ns_per_page["1 thread"] = _threads_ns(_both_on_one(read), 1, units, repeats)
    row.ns_per_page["2 threads"] = _threads_ns(read, 2, units, repeats)
    rows.append(row)
    row = BenchRow(
        "GIL ceiling, 1 vs 2 threads (a no-work nogil call as long as one batch)", units
    )
    row.ns_per_page["1 thread"] = _threads_ns(_both_on_one(spin), 1, units, repeats)
    row.ns_per_page["2 threads"] = _threads_ns(spin, 2, units, repeats)
    row.note = f"{call_ns:.0f} ns a call, the one-thread time of one batch above"
    rows.append(row)
    return rows


def _per_path(
    name: str, fn: Callable[[], object], units: int, repeats: int, min_time: float
) -> BenchRow:
    """One contender per SIMD path this CPU has, running ``fn``; the note names the default."""
    active = _kernels.get_simd()
    row = BenchRow(f"per SIMD path: {name}", units, note=f"default path: {active}")
    try:
        for path in reversed(_kernels.simd_paths()):
            _kernels.set_simd(path)
            row.ns_per_page[path] = _median_ns(fn, units, repeats, min_time)
    finally:
        _kernels.set_simd(active)
    return row


def _batch_path_rows(repeats: int, min_time: float) -> list[BenchRow]:
    offsets = np.arange(BATCH, dtype=np.uint64) * np.uint64(PAGE)
    rows = []
    for label, kind in (
        ("L2 batch partition, 100% zero", "1.0"),
        ("L2 batch partition, 50% zero, others random", "0.5"),
        ("L2 batch partition, all random", "0.0"),
        ("L2 batch partition, 50% zero, others non-zero at byte 3800", "byte 3800"),
    ):
        host = _batch_host(kind)
        rows.append(
            _per_path(
                label,
                functools.partial(_kernels.partition_zero_pages, host, offsets, PAGE),
                BATCH,
                repeats,
                min_time,
            )
        )
    buf = np.zeros(1 << 20, dtype=np.uint8)
    rows.append(
        _per_path("is_zero on 1 MiB (L2)", lambda: _kernels.is_zero(buf), 256, repeats, min_time)
    )
    return rows


def _region_path_rows(
    label: str, ram: npt.NDArray[np.uint8], repeats: int, min_time: float
) -> list[BenchRow]:
    n = ram.size // PAGE
    grid = (np.arange(n, dtype=np.uint64) * np.uint64(PAGE)).reshape(-1, BATCH)
    rows = [
        _per_path(
            f"{label}, partition",
            lambda: _kernels.partition_batches(ram, grid, PAGE),
            n,
            max(1, repeats // 2),
            min_time,
        )
    ]
    if label.endswith("100% zero"):
        offsets = grid.reshape(-1)
        bitmap = np.full((n + 63) // 64, np.uint64(0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
        rows.append(
            _per_path(
                f"{label}, destination zeroing (pages received before)",
                lambda: _kernels.recv_zero_pages(ram, bitmap, offsets, PAGE, _kernels.ZERO_ALWAYS),
                n,
                max(1, repeats // 2),
                min_time,
            )
        )
    return rows


def _one_page_contenders(
    page: bytes, zero_page: bytes, is_zero: Callable[[bytes], bool]
) -> dict[str, Callable[[], object]]:
    """The three ways to test one page, each one Python call on a ready object."""
    arr = np.frombuffer(page, dtype=np.uint64)
    return {
        "multifd_zero": lambda: is_zero(page),
        "bytes ==": lambda: page == zero_page,
        "numpy": lambda: not arr.any(),
    }


def _single_page_rows(repeats: int, min_time: float) -> list[BenchRow]:
    """``is_zero(page)`` against ``page == ZERO``, each timed through the same kind of lambda."""
    zero_page = bytes(PAGE)
    late = bytearray(PAGE)
    late[3800] = 1
    rows = []
    is_zero = _kernels.is_zero
    for label, page in (
        ("zero", bytes(PAGE)),
        ("first byte non-zero", b"\x01" + bytes(PAGE - 1)),
        ("non-zero only at byte 3800", bytes(late)),
    ):
        row = BenchRow(f"one 4 KiB page, one Python call: {label}", 1)
        row.measure(_one_page_contenders(page, zero_page, is_zero), repeats, min_time)
        row.note = "is_zero(page) vs page == ZERO on bytes; numpy: not arr.any() on a ready array"
        rows.append(row)
    return rows


def _big_is_zero_row(repeats: int, min_time: float) -> BenchRow:
    buf = np.zeros(1 << 20, dtype=np.uint8)
    buf.fill(0)
    n = buf.size // PAGE
    host = buf.data
    row = BenchRow("is_zero on 1 MiB (L2) vs zero_page_mask", n)
    row.ns_per_page["multifd_zero"] = _median_ns(
        lambda: _kernels.is_zero(host), n, repeats, min_time
    )
    row.ns_per_page["zero_page_mask"] = _median_ns(
        lambda: _kernels.zero_page_mask(host, PAGE), n, repeats, min_time
    )
    words = buf.view(np.uint64)
    row.ns_per_page["numpy"] = _median_ns(lambda: not words.any(), n, repeats, min_time)
    zero = bytes(buf.size)
    raw = bytes(buf)
    row.ns_per_page["bytes =="] = _median_ns(lambda: raw == zero, n, repeats, min_time)
    return row


def _recv_inputs(
    ram: npt.NDArray[np.uint8],
) -> tuple[int, npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """Pages, every page's offset and an empty receivedmap for the receiver rows."""
    n = ram.size // PAGE
    offsets = np.arange(n, dtype=np.uint64) * np.uint64(PAGE)
    return n, offsets, np.zeros((n + 63) // 64, dtype=np.uint64)


def _recv_row(ram: npt.NDArray[np.uint8], repeats: int, min_time: float) -> BenchRow:
    n, offsets, bitmap = _recv_inputs(ram)
    row = BenchRow("destination zero-page process, pages received before (memset)", n)
    bitmap[:] = np.uint64(0xFFFFFFFFFFFFFFFF)
    words = ram.view(np.uint64)
    row.measure(
        {
            "multifd_zero": lambda: _kernels.recv_zero_pages(
                ram, bitmap, offsets, PAGE, _kernels.ZERO_ALWAYS
            ),
            "numpy": lambda: words.fill(0),
            "write limit": lambda: _bench_kernels._zero_all(ram),
        },
        repeats,
        min_time,
    )
    row.note = (
        f"{ram.size >> 20} MiB; numpy: ndarray.fill(0) of the same memory; "
        "write limit: the same streaming stores over the whole region in one call"
    )
    return row


def _recv_legacy_row(ram: npt.NDArray[np.uint8], repeats: int, min_time: float) -> BenchRow:
    """The legacy receiver reads each zero page and writes only those that are not zero."""
    n, offsets, bitmap = _recv_inputs(ram)
    row = BenchRow("destination zero-page process, legacy stream (read, write if not zero)", n)
    row.measure(
        {
            "multifd_zero": lambda: _kernels.recv_zero_pages(
                ram, bitmap, offsets, PAGE, _kernels.ZERO_IF_NONZERO
            )
        },
        repeats,
        min_time,
    )
    _add_partition_and_read_limit(row, ram, repeats, min_time)
    row.note = (
        f"{ram.size >> 20} MiB of zero pages, out of cache: nothing to write, so the "
        "receiver reads at the partition's speed"
    )
    return row


def run_benchmarks(
    *, region_mib: int = 1024, repeats: int = 7, min_time: float = 0.05, quick: bool = False
) -> dict[str, Any]:
    """Run every row and return the results as plain data.

    Parameters
    ----------
    region_mib : int
        Size of the out-of-cache region (default 1 GiB).
    repeats : int
        Runs per median.
    min_time : float
        Seconds each run lasts at least.
    quick : bool
        Few repeats and at most 64 MiB, to check that the script works.
    """
    if quick:
        region_mib, repeats, min_time = min(region_mib, 64), 3, 0.005
    load_before = _loadavg()
    rows: list[BenchRow] = []
    rows.append(_batch_row("batch partition, 100% zero pages", "1.0", repeats, min_time))
    rows.append(
        _batch_row("batch partition, 50% zero, other pages random", "0.5", repeats, min_time)
    )
    rows.append(
        _batch_row(
            "batch partition, 50% zero, others non-zero only at byte 3800",
            "byte 3800",
            repeats,
            min_time,
        )
    )
    rows.append(_random_batch_row(repeats, min_time))
    rows.extend(_single_page_rows(repeats, min_time))
    rows.append(_big_is_zero_row(repeats, min_time))
    rows.extend(_batch_path_rows(repeats, min_time))
    # The threads rows first, on a machine as quiet as this run leaves it.
    big_zero = _pages(region_mib * 256, 1.0, seed=5)
    huge = _huge_page_mib()
    rows.extend(_scaling_rows(big_zero, repeats))
    rows.append(
        _region_row(
            f"{region_mib} MiB region, 100% zero", big_zero, repeats, min_time, all_zero=True
        )
    )
    rows[-1].note += f"; {huge} MiB of this process in transparent huge pages"
    rows.append(_recv_row(big_zero, repeats, min_time))
    rows.append(_recv_legacy_row(big_zero, repeats, min_time))
    rows.extend(_region_path_rows(f"{region_mib} MiB, 100% zero", big_zero, repeats, min_time))
    del big_zero
    mixed = _pages(region_mib * 256, 0.5, seed=6)
    huge = _huge_page_mib()
    rows.append(
        _region_row(f"{region_mib} MiB region, 50% zero random mix", mixed, repeats, min_time)
    )
    rows[-1].note += f"; {huge} MiB of this process in transparent huge pages"
    words = mixed.view(np.uint64).reshape(-1, PAGE // 8)
    known = np.flatnonzero(~words.any(axis=1)).astype(np.uint64) * np.uint64(PAGE)
    rows[-1].ns_per_page["zero pages only"] = _median_ns(
        functools.partial(_bench_kernels._read_known, mixed, known, PAGE),
        mixed.size // PAGE,
        repeats,
        min_time,
    )
    rows[-1].note += (
        "; zero pages only: the zero pages alone, read eight side by side with the answer "
        "known in advance (the bytes any exact check must read, in the fastest way measured)"
    )
    rows.extend(
        _region_path_rows(f"{region_mib} MiB, 50% zero random mix", mixed, repeats, min_time)
    )
    del mixed
    result: dict[str, Any] = {
        **machine(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "repeats": repeats,
        "load_before": load_before,
        "load_after": _loadavg(),
        "rows": [
            {
                **asdict(r),
                "gb_per_s": {k: PAGE / v for k, v in r.ns_per_page.items()},
            }
            for r in rows
        ],
    }
    result["goals"] = evaluate_goals(result)
    return result


def _loadavg() -> float:
    """The one-minute load average, or -1 where there is none."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return -1.0


def _huge_page_mib() -> int:
    """MiB of this process's memory in transparent huge pages (-1 if unknown)."""
    try:
        with open("/proc/self/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return -1


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU model and vendor, CPUs, SIMD paths."""
    info = {"vendor": platform.machine(), "family": ""}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "vendor_id":
                    info["vendor"] = value.strip()
                elif key == "cpu family" and not info["family"]:
                    info["family"] = value.strip()
    except OSError:
        pass
    return {
        "cpu": cpu_name(),
        "vendor": info["vendor"],
        "family": info["family"],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "simd": _kernels.get_simd(),
        "simd_paths": list(_kernels.simd_paths()),
    }


def write_json(path: str, result: object) -> None:
    """Write a benchmark result to ``path`` as indented JSON with a final newline."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")


def format_table(result: dict[str, Any]) -> str:
    """Render the result as a text table with ratios, then the goals and whether they are met."""
    family = f" family {result['family']}" if result.get("family") else ""
    lines = [
        f"CPU: {result['cpu']} ({result.get('vendor', '?')}{family}, {result['cpus']} CPUs); "
        f"SIMD path: {result['simd']} (available: {', '.join(result['simd_paths'])}); "
        f"numpy {result['numpy']}; Python {result['python']}; medians of "
        f"{result['repeats']} runs; load average {result.get('load_before', -1):.2f} before, "
        f"{result.get('load_after', -1):.2f} after",
        "",
    ]
    for row in result["rows"]:
        lines.append(row["name"] + (f"  [{row['note']}]" if row["note"] else ""))
        ns = row["ns_per_page"]
        first = next(iter(ns))
        base = ns[first]
        best = min(ns.values())
        per_path = row["name"].startswith("per SIMD path")
        for who, value in ns.items():
            text = f"  {who:<17} {value:10.1f} ns/page {row['gb_per_s'][who]:8.2f} GB/s"
            if per_path:
                text += "  fastest" if value == best else f"  x{value / best:.2f} the fastest"
            elif who != first and first == "1 thread":
                text += f"  speed-up x{base / value:.2f}"
            elif who != first and first == "multifd_zero":
                ratio = value / base
                text += (
                    f"  multifd_zero is x{ratio:.2f} faster"
                    if ratio >= 1
                    else f"  multifd_zero takes x{1 / ratio:.2f} its time"
                )
            elif who != first:
                text += f"  x{value / base:.2f} the time of {first}"
            lines.append(text)
        lines.append("")
    lines.append(format_goals(result.get("goals") or evaluate_goals(result)))
    return "\n".join(lines)
