"""Channels on threads: shared receivedmap bits, exact stats, and the GIL released in kernels.

The GIL tests do not time anything. The switch interval is raised so high
that the main thread never hands the GIL over on its own; a helper thread,
woken before the kernel starts, can then only run (and set its Event) if the
kernel releases the GIL. A pure-Python control shows the helper cannot run
otherwise.
"""

from __future__ import annotations

import mmap
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest

import multifd_zero as mz
from multifd_zero import _kernels

GIL_DISABLED = hasattr(sys, "_is_gil_enabled") and not sys._is_gil_enabled()


# --------------------------------------------------------- channels on threads


def channel(
    src: mz.RAMBlock,
    dst: mz.RAMBlock,
    offsets: np.ndarray,
    options: mz.MigrationOptions,
    stats: mz.MigrationStats,
    start: threading.Barrier,
    errors: list[BaseException],
) -> None:
    """One multifd channel: detect, then apply each batch to the shared destination."""
    try:
        start.wait()
        batch = mz.multifd_ram_page_count(src.page_size)
        for first in range(0, offsets.size, batch):
            pages = mz.MultiFDPages(src, offsets[first : first + batch])
            mz.send_zero_page_detect(pages, options=options, stats=stats)
            data = pages.normal_data()
            mz.recv_zero_page_process(dst, pages.zero, options=options)
            mz.recv_normal_pages(dst, pages.normal, data)
    except BaseException as exc:  # pragma: no cover - reported by the main thread
        errors.append(exc)


def test_channels_share_one_receivedmap_without_losing_bits() -> None:
    """4 channels, page t to thread t mod 4 (neighbours in one word), >= 1M page operations.

    Each round migrates every page to a fresh destination (precopy into zeros,
    or postcopy into garbage); afterwards every bit is set, the destination
    equals the source and the shared stats are exact.
    """
    threads = 4
    page_size = 1024
    pages = 65536  # 64 MiB source
    rounds = 8
    rng = np.random.default_rng(1234)
    ram = np.zeros((pages, page_size), dtype=np.uint8)
    stats = mz.MigrationStats()
    src = mz.RAMBlock("pc.ram", ram.reshape(-1), page_size)
    all_offsets = np.arange(pages, dtype=np.uint64) * np.uint64(page_size)
    operations = 0
    for round_no in range(rounds):
        # The guest changes memory between rounds: about half the pages hold data.
        touched = rng.random(pages) < 0.5
        ram[touched] = 0
        hit = np.flatnonzero(rng.random(pages) < 0.5)
        ram[hit, rng.integers(0, page_size, size=hit.size)] = rng.integers(
            1, 256, size=hit.size, dtype=np.uint8
        )
        expected_zero = int(np.count_nonzero(~ram.any(axis=1)))
        postcopy = round_no % 2 == 1
        options = mz.MigrationOptions(postcopy_ram=postcopy)
        dst_mem = bytearray(b"\xee" * ram.size) if postcopy else bytearray(ram.size)
        dst = mz.RAMBlock("pc.ram", dst_mem, page_size)
        before = stats.snapshot()
        barrier = threading.Barrier(threads)
        errors: list[BaseException] = []
        workers = [
            threading.Thread(
                target=channel,
                args=(src, dst, all_offsets[t::threads], options, stats, barrier, errors),
            )
            for t in range(threads)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert errors == []
        assert dst.receivedmap.count() == pages
        assert (dst.receivedmap.bitmap == np.uint64(2**64 - 1)).all()
        assert dst_mem == ram.tobytes()
        normal, zero = stats.snapshot()
        assert (normal - before[0], zero - before[1]) == (pages - expected_zero, expected_zero)
        operations += 2 * pages  # one detection and one receive per page
    assert operations >= 1_000_000


@pytest.mark.parametrize("mode", ["precopy", "postcopy", "normal"])
def test_receive_kernels_set_neighbouring_bits_concurrently(mode: str) -> None:
    """Two threads, one long GIL-free kernel call each, interleaved pages: no lost bit.

    Pages 0, 2, 4, ... go to one thread and 1, 3, 5, ... to the other, so every
    bitmap word is written by both at once; a non-atomic read-modify-write
    would lose bits.
    """
    page_size = 1024
    pages = 1 << 20 if mode == "precopy" else 1 << 16  # precopy writes no page
    host = mmap.mmap(-1, pages * page_size)  # untouched unless a page is written
    bitmap = np.zeros(pages // 64, dtype=np.uint64)
    offsets = np.arange(pages, dtype=np.uint64) * np.uint64(page_size)
    data = bytes(page_size * (pages // 2))
    try:
        for _ in range(3):
            bitmap[:] = 0
            barrier = threading.Barrier(2)

            def work(part: np.ndarray, barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                if mode == "normal":
                    _kernels.recv_normal_pages(host, bitmap, part, data, page_size)
                else:
                    kernel_mode = _kernels.ZERO_ALWAYS if mode == "postcopy" else 0
                    _kernels.recv_zero_pages(host, bitmap, part, page_size, kernel_mode)

            workers = [
                threading.Thread(target=work, args=(np.ascontiguousarray(offsets[t::2]),))
                for t in range(2)
            ]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            assert _kernels.bitmap_count(bitmap) == pages
            assert (bitmap == np.uint64(2**64 - 1)).all()
    finally:
        host.close()


def test_stats_add_from_many_threads_is_exact() -> None:
    """MigrationStats.add from 8 threads, 20,000 adds each: no lost update."""
    stats = mz.MigrationStats()
    barrier = threading.Barrier(8)

    def adder() -> None:
        barrier.wait()
        for _ in range(20_000):
            stats.add(normal_pages=1, zero_pages=3)

    workers = [threading.Thread(target=adder) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert stats.snapshot() == (160_000, 480_000)


# ------------------------------------------------------------- the GIL released


@contextmanager
def gil_probe() -> Iterator[Callable[[Callable[[], object], int], bool]]:
    """Yield ``runs_alongside(work, attempts)``: did a woken helper thread get the GIL?

    The helper is parked on an Event; the main thread wakes it with the switch
    interval at 1000 s, so the helper can only take the GIL (and set ``ran``)
    when the main thread gives it up itself. ``work`` is called up to
    ``attempts`` times, stopping as soon as the helper has run.
    """
    old_interval = sys.getswitchinterval()
    ready = threading.Event()
    go = threading.Event()
    ran = threading.Event()
    done = threading.Event()

    def helper() -> None:
        ready.set()
        go.wait()
        ran.set()
        done.wait()

    thread = threading.Thread(target=helper, daemon=True)
    thread.start()
    assert ready.wait(60)

    def runs_alongside(work: Callable[[], object], attempts: int) -> bool:
        sys.setswitchinterval(1000.0)
        try:
            go.set()
            assert not ran.is_set(), "the helper ran before the kernel did"
            for _ in range(attempts):
                work()
                if ran.is_set():
                    return True
            return False
        finally:
            sys.setswitchinterval(old_interval)

    try:
        yield runs_alongside
    finally:
        done.set()
        sys.setswitchinterval(old_interval)
        thread.join(60)


def _pure_python_work() -> int:
    total = 0
    for k in range(200_000):
        total += k
    return total


@pytest.mark.skipif(GIL_DISABLED, reason="free-threaded Python has no GIL to hold")
def test_gil_probe_control_pure_python_holds_the_gil() -> None:
    """Control: pure-Python work never lets the helper run, so the probe can fail."""
    with gil_probe() as runs_alongside:
        assert runs_alongside(_pure_python_work, 20) is False


BIG = 256 * 1024 * 1024


@pytest.fixture(scope="module")
def big_zero() -> Iterator[mmap.mmap]:
    """256 MiB of untouched anonymous memory (reads as zeros)."""
    mm = mmap.mmap(-1, BIG)
    yield mm
    mm.close()


def test_is_zero_releases_the_gil(big_zero: mmap.mmap) -> None:
    """While is_zero scans 256 MiB of zeros, another thread runs Python code."""
    with gil_probe() as runs_alongside:
        assert runs_alongside(lambda: mz.is_zero(big_zero), 50)


def test_zero_page_mask_releases_the_gil(big_zero: mmap.mmap) -> None:
    """zero_page_mask over 256 MiB lets another thread run."""
    with gil_probe() as runs_alongside:
        assert runs_alongside(lambda: mz.zero_page_mask(big_zero, 4096), 50)


def test_partition_and_scan_release_the_gil(big_zero: mmap.mmap) -> None:
    """partition_zero_pages, scan_zero_pages, partition_batches over 65,536 zero pages: the
    helper runs."""
    offsets = np.arange(BIG // 4096, dtype=np.uint64) * np.uint64(4096)
    with gil_probe() as runs_alongside:
        assert runs_alongside(lambda: mz.partition_zero_pages(big_zero, offsets, 4096), 50)
    with gil_probe() as runs_alongside:
        assert runs_alongside(lambda: mz.scan_zero_pages(big_zero, offsets, 4096), 50)
    grid = offsets.reshape(-1, 128)
    with gil_probe() as runs_alongside:
        assert runs_alongside(lambda: mz.partition_batches(big_zero, grid, 4096), 50)


def test_send_and_receive_release_the_gil() -> None:
    """A full receive of 65,536 zero pages (postcopy writes them) lets another thread run."""
    mem = mmap.mmap(-1, 64 * 1024 * 1024)
    try:
        dst = mz.RAMBlock("pc.ram", mem, 1024)
        offsets = np.arange(65536, dtype=np.uint64) * np.uint64(1024)
        options = mz.MigrationOptions(postcopy_ram=True)
        with gil_probe() as runs_alongside:
            assert runs_alongside(
                lambda: mz.recv_zero_page_process(dst, offsets, options=options), 50
            )
        data = bytes(16 * 1024 * 1024)
        with gil_probe() as runs_alongside:
            assert runs_alongside(lambda: mz.recv_normal_pages(dst, offsets[:16384], data), 50)
    finally:
        mem.close()
