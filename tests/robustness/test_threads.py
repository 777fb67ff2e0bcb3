"""Channels on threads: shared receivedmap bits, exact stats, and the GIL released in kernels.

The GIL tests do not time anything. The switch interval is raised so high
that the main thread never hands the GIL over on its own; a helper thread,
woken before the kernel starts, can then only run (and set its Event) if the
kernel releases the GIL. A pure-Python control shows the helper cannot run
otherwise.

Part two, the heavier matrices:

Part one runs 4 channels with a strided page split (multifd only),
two kernels on interleaved bits, and the GIL probe for is_zero,
zero_page_mask, partition/scan and the two receive calls. Here:

- every detection mode (multifd, legacy, none) and postcopy-ram, with a
  *random* disjoint split of the dirty pages over 4 threads, random page order
  in every batch, several dirty rounds into one persistent destination (so
  the "received before" branch runs concurrently), a sentinel destination to
  check that first-arrival zero pages are never written in precopy, exact
  stats and receivedmap; each case makes more than a million page operations;
- the same through the engine (``multifd_zero.migrate``: 4 sender and 4
  receiver threads, 8 dirty rounds, more than a million page operations);
- the receivedmap cleared and set from Python (``ReceivedMap.set/clear``, as
  ``ram_discard_range`` clears bits) while a GIL-free kernel sets the
  neighbouring bits of the same words;
- the GIL released by the calls the other file does not probe:
  ``partition_batches``, ``gather_pages`` / ``MultiFDPages.normal_data``,
  ``recv_legacy_zero_pages``, ``save_zero_pages`` and ``send_zero_page_detect``;
- proof without timing that a kernel runs while another thread holds the GIL
  (the kernel's writes advance while the main thread spins in Python), and
  that two kernels run at the same moment (one kernel copies the same page
  many times while the other kernel writes it: the copies show both contents).

No assertion is about time: each GIL test retries a bounded number of times
until it observes the event, and fails only if it never does.
"""

from __future__ import annotations

import mmap
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from support.receivers import logical, sentinel_pages

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


# ---- part two: every mode, random splits, several rounds, every kernel at once
THREADS = 4


def run_threads(target: Callable[..., None], args_list: list[tuple]) -> None:
    """Start one thread per args tuple behind a barrier; re-raise the first error."""
    barrier = threading.Barrier(len(args_list))
    errors: list[BaseException] = []

    def body(*args: object) -> None:
        try:
            barrier.wait()
            target(*args)
        except BaseException as exc:  # pragma: no cover - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=a) for a in args_list]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# ----------------------------------------------- all modes, random partition


@pytest.mark.parametrize(
    ("mode", "postcopy"),
    [("multifd", False), ("multifd", True), ("legacy", False), ("none", False)],
)
def test_dirty_rounds_on_threads_every_mode(mode: str, postcopy: bool) -> None:
    """4 threads, random disjoint page split, 8 dirty rounds, >= 1M page operations."""
    page_size = 1024
    pages = 1 << 17  # 128 MiB at 1 KiB pages: 2048 receivedmap words
    rounds = 8
    rng = np.random.default_rng(0x5EED + len(mode) + postcopy)
    options = mz.MigrationOptions(zero_page_detection=mode, postcopy_ram=postcopy)
    capacity = mz.multifd_ram_page_count(page_size)

    ram = np.zeros((pages, page_size), dtype=np.uint8)
    src = mz.RAMBlock("pc.ram", ram.reshape(-1), page_size)
    sentinel = sentinel_pages(pages, page_size)
    dst_mem = sentinel.copy()
    dst = mz.RAMBlock("pc.ram", dst_mem.reshape(-1), page_size, fresh=True)  # sentinels show
    stats = mz.MigrationStats()

    arrivals = np.zeros(pages, dtype=np.int64)
    zero_arrivals = np.zeros(pages, dtype=np.int64)
    expect_normal = expect_zero = 0
    operations = 0

    def channel(batches: list[np.ndarray]) -> None:
        for offsets in batches:
            rest, legacy_zero = mz.save_zero_pages(src, offsets, options=options, stats=stats)
            if legacy_zero.size:
                mz.recv_legacy_zero_pages(dst, legacy_zero)
            if rest.size:
                batch = mz.MultiFDPages(src, rest)
                mz.send_zero_page_detect(batch, options=options, stats=stats)
                data = batch.normal_data()
                mz.recv_zero_page_process(dst, batch.zero, options=options)
                mz.recv_normal_pages(dst, batch.normal, data)

    for round_no in range(rounds):
        # The guest: round 0 sends everything; later rounds a random half,
        # with pages turned to zero, to data, or rewritten.
        if round_no == 0:
            dirty = np.arange(pages)
        else:
            # The last eighth of the block is left alone after round 0.
            dirty = np.flatnonzero(rng.random(pages * 7 // 8) < 0.5)
        kinds = rng.integers(0, 3, size=dirty.size)  # 0: zero, 1: one byte, 2: keep
        ram[dirty[kinds == 0]] = 0
        hit = dirty[kinds == 1]
        ram[hit] = 0
        ram[hit, rng.integers(0, page_size, size=hit.size)] = rng.integers(
            1, 256, size=hit.size, dtype=np.uint8
        )
        zero_now = ~ram[dirty].any(axis=1)
        if mode == "none":
            expect_normal += dirty.size
        else:
            expect_zero += int(zero_now.sum())
            expect_normal += int((~zero_now).sum())
        arrivals[dirty] += 1
        zero_arrivals[dirty[zero_now]] += 1

        # Random disjoint split over the threads, random order within batches:
        # neighbouring pages of one bitmap word go to different threads.
        order = rng.permutation(dirty).astype(np.uint64) * np.uint64(page_size)
        owner = rng.integers(0, THREADS, size=order.size)
        work = []
        for t in range(THREADS):
            mine = order[owner == t]
            work.append(([mine[i : i + capacity] for i in range(0, mine.size, capacity)],))
        run_threads(channel, work)
        operations += 2 * dirty.size  # one detection, one receive per page

        # After every round: the receivedmap holds exactly the pages ever sent.
        bits = np.unpackbits(dst.receivedmap.bitmap.view(np.uint8), bitorder="little")
        assert np.array_equal(bits.astype(bool), arrivals > 0), f"round {round_no}: lost bits"
        assert stats.snapshot() == (expect_normal, expect_zero), f"round {round_no}: stats"

    # The destination, read as a guest would, equals the source.
    assert np.array_equal(logical(dst_mem, sentinel), ram)
    untouched = (dst_mem == sentinel).all(axis=1)
    if mode == "multifd" and not postcopy:
        # Zero the only time it was sent: never written (QEMU 9.1's rule).
        once_zero = (arrivals == 1) & (zero_arrivals == 1)
        assert once_zero.sum() > 5000
        assert untouched[once_zero].all()
        assert not untouched[~once_zero].any()
    else:
        # postcopy-ram writes every zero page; legacy reads the (non-zero)
        # sentinel and zeroes it; none sends every page with its data.
        assert not untouched.any()
    assert dst.receivedmap.count() == pages
    assert operations >= 1_000_000, operations
    print(f"\n{mode} postcopy={postcopy}: {operations} page operations, "
          f"{rounds} rounds, {pages} bits, stats {stats}")


# -------------------------------------------------------- the engine's channels


@pytest.mark.parametrize(
    ("mode", "postcopy"), [("multifd", False), ("multifd", True), ("legacy", False)]
)
def test_engine_channels_share_one_receivedmap(mode: str, postcopy: bool) -> None:
    """multifd_zero.migrate: 4 sender and 4 receiver threads, 8 dirty rounds, >= 1M page ops.

    The engine splits each round into batches round-robin over its channels,
    so neighbouring pages of one bitmap word are received by different
    threads at once. The destination starts as sentinel pages: afterwards it
    reads as the source, every bit is set, the stats equal the zero pages
    counted at each round's start, and (multifd precopy) a page that was zero
    the only time it was sent still holds its sentinel.
    """
    page_size = 1024
    pages = 1 << 17
    rng = np.random.default_rng(99 + postcopy + len(mode))
    ram = np.zeros((pages, page_size), dtype=np.uint8)
    ram[np.flatnonzero(rng.random(pages) < 0.5), 5] = 1
    sentinel = sentinel_pages(pages, page_size)
    dst_mem = sentinel.copy()
    src = mz.RAMBlock("pc.ram", ram.reshape(-1), page_size)
    dst = mz.RAMBlock("pc.ram", dst_mem.reshape(-1), page_size, fresh=True)  # sentinels show
    arrivals = np.ones(pages, dtype=np.int64)
    zero_arrivals = (~ram.any(axis=1)).astype(np.int64)
    expected = {"normal": int(pages - zero_arrivals.sum()), "duplicate": int(zero_arrivals.sum())}

    def rounds() -> object:
        for _ in range(7):
            dirty = np.flatnonzero(rng.random(pages * 7 // 8) < 0.5)  # the top 1/8 stays put
            kinds = rng.integers(0, 3, size=dirty.size)
            ram[dirty[kinds == 0]] = 0
            hit = dirty[kinds == 1]
            ram[hit, rng.integers(0, page_size, size=hit.size)] = 9
            zero = ~ram[dirty].any(axis=1)
            arrivals[dirty] += 1
            zero_arrivals[dirty[zero]] += 1
            expected["normal"] += int((~zero).sum())
            expected["duplicate"] += int(zero.sum())
            yield rng.permutation(dirty).astype(np.uint64) * np.uint64(page_size)

    options = mz.MigrationOptions(zero_page_detection=mode, postcopy_ram=postcopy)
    result = mz.migrate(src, dst, channels=4, options=options, dirty=rounds(), timeout=120)
    assert result.rounds == 8
    assert (result.ram["normal"], result.ram["duplicate"]) == (
        expected["normal"], expected["duplicate"]
    )
    assert np.array_equal(logical(dst_mem, sentinel), ram)
    assert dst.receivedmap.count() == pages
    assert (dst.receivedmap.bitmap == np.uint64(2**64 - 1)).all()
    untouched = (dst_mem == sentinel).all(axis=1)
    if mode == "multifd" and not postcopy:
        once_zero = (arrivals == 1) & (zero_arrivals == 1)
        assert once_zero.sum() > 5000
        assert untouched[once_zero].all() and not untouched[~once_zero].any()
    else:
        assert not untouched.any()
    operations = 2 * result.pages_sent
    assert operations >= 1_000_000
    print(f"\nengine {mode} postcopy={postcopy}: {operations} page operations over "
          f"{result.channels} channels, {result.rounds} rounds, {result.ram['normal']} normal, "
          f"{result.ram['duplicate']} zero")


# ------------------------------------------- Python-side bit ops against a kernel


def test_python_set_and_clear_race_a_kernel_in_the_same_words() -> None:
    """ReceivedMap.set/clear of odd pages while recv_normal_pages sets the even ones.

    recv_normal_pages sets every bit with an atomic or, even if the bit is
    already set; a plain read-modify-write in either side would undo the
    other side's change to the same word. After every round the even bits are
    all set and the odd bits are exactly what the Python side left.
    """
    page_size = 1024
    pages = 1 << 15
    host = mmap.mmap(-1, pages * page_size)
    block = mz.RAMBlock("pc.ram", host, page_size)
    rmap = block.receivedmap
    even = np.arange(0, pages, 2, dtype=np.uint64) * np.uint64(page_size)
    data = b"\x01" * (even.size * page_size)
    rng = np.random.default_rng(7)
    rounds = 12
    python_ops = kernel_ops = 0
    try:
        for _ in range(rounds):
            rmap.bitmap[:] = 0
            expected_odd = np.zeros(pages // 2, dtype=bool)
            done = threading.Event()
            ops = [0]

            def toggler(expected_odd: np.ndarray = expected_odd,
                        done: threading.Event = done, ops: list[int] = ops) -> None:
                while not done.is_set():
                    for k in rng.integers(0, pages // 2, size=256):
                        off = (2 * int(k) + 1) * page_size
                        if expected_odd[k]:
                            rmap.clear(off)
                        else:
                            rmap.set(off)
                        expected_odd[k] = not expected_odd[k]
                        ops[0] += 1

            def writer(done: threading.Event = done) -> None:
                try:
                    for _ in range(4):
                        _kernels.recv_normal_pages(host, rmap.bitmap, even, data, page_size)
                finally:
                    done.set()

            run_threads(lambda f: f(), [(toggler,), (writer,)])
            bits = np.unpackbits(rmap.bitmap.view(np.uint8), bitorder="little").astype(bool)
            assert bits[0::2].all(), "a kernel-set bit was lost"
            assert np.array_equal(bits[1::2], expected_odd), "a Python set/clear was lost"
            python_ops += ops[0]
            kernel_ops += 4 * even.size
    finally:
        host.close()
    assert python_ops > 0 and kernel_ops == rounds * 4 * (pages // 2)
    print(f"\n{kernel_ops} kernel bit sets and {python_ops} Python set/clear in {rounds} rounds")


# ----------------------------------------------------------- the GIL released


def helper_runs_during(work: Callable[[], object], attempts: int = 40) -> bool:
    """True if a parked helper thread ran while ``work()`` was executing.

    The switch interval is raised to 1000 s, so the calling thread never hands
    the GIL over on its own: the helper, woken just before ``work``, can only
    run if ``work`` releases the GIL.
    """
    old = sys.getswitchinterval()
    for _ in range(attempts):
        parked, go = threading.Event(), threading.Event()
        ran, release = threading.Event(), threading.Event()

        def helper(parked: threading.Event = parked, go: threading.Event = go,
                   ran: threading.Event = ran, release: threading.Event = release) -> None:
            parked.set()
            go.wait()
            ran.set()
            release.wait()

        thread = threading.Thread(target=helper, daemon=True)
        thread.start()
        assert parked.wait(60)  # the helper is (about to be) blocked on go, not on the GIL
        sys.setswitchinterval(1000.0)
        try:
            go.set()
            work()
            seen = ran.is_set()
        finally:
            sys.setswitchinterval(old)
            release.set()
            thread.join(60)
        if seen:
            return True
    return False


@pytest.mark.skipif(GIL_DISABLED, reason="free-threaded Python has no GIL to hold")
def test_probe_control() -> None:
    """Control: pure-Python work never lets the helper run, so the probe can fail."""

    def spin() -> None:
        total = 0
        for k in range(300_000):
            total += k

    assert helper_runs_during(spin, attempts=10) is False


@pytest.fixture(scope="module")
def zero_host() -> mmap.mmap:
    mm = mmap.mmap(-1, 128 * 1024 * 1024)
    yield mm
    mm.close()


def test_gil_released_by_the_other_calls(zero_host: mmap.mmap) -> None:
    """partition_batches, gather_pages, normal_data, legacy receive and both send facades."""
    ps = 4096
    n = len(zero_host) // ps
    offsets = np.arange(n, dtype=np.uint64) * np.uint64(ps)
    rows = offsets.reshape(-1, 128)
    calls: dict[str, Callable[[], object]] = {
        "partition_batches": lambda: _kernels.partition_batches(zero_host, rows.copy(), ps),
        "gather_pages": lambda: _kernels.gather_pages(
            zero_host, offsets[: n // 2], out, ps
        ),
        "recv_legacy_zero_pages": lambda: mz.recv_legacy_zero_pages(dst, offsets),
        "save_zero_pages": lambda: mz.save_zero_pages(
            src, offsets, options=legacy, stats=mz.MigrationStats()
        ),
        "send_zero_page_detect": lambda: mz.send_zero_page_detect(
            mz.MultiFDPages(src, offsets, page_count=n),
            options=mz.MigrationOptions(),
            stats=mz.MigrationStats(),
        ),
        "normal_data": lambda: normal_batch.normal_data(),
    }
    out = bytearray(n // 2 * ps)
    src = mz.RAMBlock("src", zero_host, ps)
    dst_mem = mmap.mmap(-1, len(zero_host))
    dst = mz.RAMBlock("dst", dst_mem, ps)
    legacy = mz.MigrationOptions(zero_page_detection="legacy")
    data_host = np.ones(len(zero_host) // 4, dtype=np.uint8)
    data_block = mz.RAMBlock("data", data_host, ps)
    normal_batch = mz.MultiFDPages(
        data_block, offsets[: data_host.size // ps], page_count=data_host.size // ps
    )
    mz.send_zero_page_detect(normal_batch, options=mz.MigrationOptions(),
                             stats=mz.MigrationStats())
    assert normal_batch.normal_num == data_host.size // ps
    try:
        if GIL_DISABLED:  # pragma: no cover
            for work in calls.values():
                work()
            return
        missing = [name for name, work in calls.items() if not helper_runs_during(work)]
        assert not missing, f"these calls never let another thread run: {missing}"
    finally:
        dst_mem.close()


def _pages_written(view: np.ndarray, page_size: int) -> int:
    """Pages whose first byte is set (the kernel under test writes 1s in ascending order)."""
    return int(np.count_nonzero(view[::page_size]))


def _start_writer(n: int, ps: int) -> tuple[np.ndarray, threading.Thread]:
    """Start recv_normal_pages writing 1s over n fresh zero pages on a worker thread."""
    host = np.zeros(n * ps, dtype=np.uint8)
    rmap = np.zeros(n // 64, dtype=np.uint64)
    offsets = np.arange(n, dtype=np.uint64) * np.uint64(ps)
    worker = threading.Thread(
        target=_kernels.recv_normal_pages, args=(host, rmap, offsets, b"\x01" * (n * ps), ps)
    )
    worker.start()
    return host, worker


def _spin_and_watch(host: np.ndarray, ps: int, worker: threading.Thread) -> tuple[int, int]:
    """Wait until the worker is writing, spin holding the GIL; return progress before, after."""
    old = sys.getswitchinterval()
    while _pages_written(host, ps) == 0 and worker.is_alive():
        pass
    sys.setswitchinterval(1000.0)
    try:
        before = _pages_written(host, ps)
        total = 0
        for k in range(200_000):  # pure Python: the GIL stays here
            total += k
        return before, _pages_written(host, ps)
    finally:
        sys.setswitchinterval(old)


def test_kernel_progresses_while_another_thread_holds_the_gil() -> None:
    """A kernel's writes advance while the main thread spins in Python holding the GIL.

    The main thread waits until the kernel (recv_normal_pages of 64 MiB on a
    worker thread) is part-way, raises the switch interval to 1000 s, reads
    the kernel's progress, spins in pure Python, and reads it again.

    Why this needs no control: were the GIL held for the whole kernel call,
    the main thread could run only before or after it, and would read 0 or
    all pages, never a count strictly in between that then grows.
    """
    ps = 1024
    n = 1 << 16
    for _ in range(30):
        host, worker = _start_writer(n, ps)
        try:
            before, after = _spin_and_watch(host, ps, worker)
        finally:
            worker.join()
        if 0 < before < after:
            return
    pytest.fail("the kernel never advanced while this thread held the GIL")


def test_two_kernels_run_at_the_same_moment() -> None:
    """gather_pages copies one page 65,536 times while recv_normal_pages writes that page.

    The copies hold the page's old contents first and its new contents later:
    the write happened while the copying kernel was running, so both kernels
    were executing at once (no timing is measured; the test retries until the
    overlap is seen).
    """
    ps = 1024
    n = 1 << 16
    copies = 1 << 16
    out = np.empty(copies * ps, dtype=np.uint8)
    for attempt in range(40):
        host, worker = _start_writer(n, ps)
        try:
            while _pages_written(host, ps) == 0 and worker.is_alive():
                pass
            # A page a little ahead of the writer: still old when the copies start.
            target = min(_pages_written(host, ps) + 256 * (attempt + 1), n - 1)
            same_page = np.full(copies, target * ps, dtype=np.uint64)
            _kernels.gather_pages(host, same_page, out, ps)
        finally:
            worker.join()
        firsts = out[::ps]
        if firsts[0] == 0 and firsts[-1] == 1:
            # Monotone: once the copier saw the new page it never saw the old one again.
            switch = int(np.argmax(firsts == 1))
            assert not (firsts[switch:] == 0).any()
            return
    pytest.fail("never saw one kernel write a page while the other was copying it")


def test_library_threads_leave_termination_signals_to_the_main_thread() -> None:
    """Every thread a migration starts blocks SIGINT and friends; SIGBUS stays open.

    The kernel delivers a Ctrl-C to any thread that does not block it, and a
    worker that took it left ``multifd-zero demo`` deaf to Ctrl-C (7 runs in
    160). A migration's own threads are inspected while it runs, from its
    progress callback.
    """
    import signal

    from multifd_zero._threads import ASYNC_SIGNALS, WorkerThread

    masks: dict[str, set[int]] = {}

    def record() -> None:
        masks[threading.current_thread().name] = set(signal.pthread_sigmask(signal.SIG_BLOCK, []))

    probe = WorkerThread(target=record, name="probe")
    probe.start()
    probe.join()
    assert masks["probe"] >= ASYNC_SIGNALS, masks["probe"]
    assert signal.SIGBUS not in masks["probe"] and signal.SIGSEGV not in masks["probe"]
    # The main thread itself is left alone: it is the one that handles them.
    assert not ASYNC_SIGNALS & set(signal.pthread_sigmask(signal.SIG_BLOCK, []))

    workers: list[threading.Thread] = []

    def progress(*_: int) -> None:
        workers.extend(t for t in threading.enumerate() if t is not threading.main_thread())

    guest = bytearray(64 * 4096)
    guest[::8192] = b"\x01" * 32
    mz.migrate(mz.RAMBlock("pc.ram", bytes(guest)), channels=2, progress=progress)
    names = {t.name for t in workers}
    assert any(n.startswith("multifd-send-") for n in names), names
    assert any(n.startswith("multifd-recv-") for n in names), names
    assert all(isinstance(t, WorkerThread) for t in workers), [
        (t.name, type(t).__name__) for t in workers if not isinstance(t, WorkerThread)
    ]
