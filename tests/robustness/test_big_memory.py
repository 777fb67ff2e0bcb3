"""Big and odd memory: offsets past 4 GiB, every page size, every kind of host,
and hosts closed or resized while a kernel holds them.

- A sparse 6 GiB file, mapped with ``mmap`` (only the pages the test touches
  take memory or disk), is a source block and another one a destination:
  offsets on both sides of 4 GiB and up to the last page are detected,
  gathered, received and released correctly, and nothing lands on the page
  32 bits lower (a truncated offset would put it there).
- Page sizes 1 KiB to 2 MiB on ``mmap``, numpy (``uint8`` and ``uint64``
  items), ``bytearray``, ``memoryview`` (also one starting at an odd address)
  and read-only ``bytes`` sources: a migration in each detection mode ends
  with destination == source.
- A host closed or resized while a kernel holds it: the kernels keep a buffer
  export for the whole call, so ``mmap.close``/``resize``,
  ``bytearray`` resizing, ``memoryview.release`` and numpy ``resize`` raise
  (``BufferError``/``ValueError``) instead of freeing memory under the kernel.
  Before and after the call, a closed or resized host is a ``ValueError``
  from the kernels, never a crash. These run in a child process, so that a
  crash fails the test rather than pytest.
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.qemu_model import RefStats, ref_partition, ref_send_zero_page_detect
from support.receivers import check_child

import multifd_zero as mz
from multifd_zero import _kernels

GiB = 1 << 30
MiB = 1 << 20
BIG = 6 * GiB
PAGE_SIZES = tuple(1 << k for k in range(10, 22))

pytestmark = pytest.mark.skipif(
    sys.maxsize < 2**32 or not sys.platform.startswith("linux"),
    reason="needs a 64-bit Linux address space",
)


# ------------------------------------------------------------ past 4 GiB


def sparse_mapping(path: Path, size: int) -> tuple[Any, mmap.mmap]:
    """A sparse file of ``size`` bytes and a shared mapping of it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.ftruncate(fd, size)
    return fd, mmap.mmap(fd, size, flags=mmap.MAP_SHARED)


def allocated(fd: int) -> int:
    """Bytes of disk the file really uses."""
    return os.fstat(fd).st_blocks * 512


@pytest.mark.parametrize("page_size", [4096, 2 * MiB])
def test_offsets_past_4_gib(tmp_path: Path, page_size: int) -> None:
    """Detect, gather, receive and release pages of a 6 GiB sparse mapping, past 4 GiB."""
    src_fd, src_mm = sparse_mapping(tmp_path / "src.ram", BIG)
    dst_fd, dst_mm = sparse_mapping(tmp_path / "dst.ram", BIG)
    try:
        ps = page_size
        # Data pages on both sides of 4 GiB and the very last page; zero pages
        # among them; and "alias" pages 4 GiB lower, which must stay untouched.
        data_pages = [4 * GiB - ps, 4 * GiB, 4 * GiB + 3 * ps, 5 * GiB + 7 * ps, BIG - ps]
        zero_pages = [4 * GiB + ps, 4 * GiB + 2 * ps, 5 * GiB, BIG - 2 * ps, 0]
        for k, off in enumerate(data_pages):
            src_mm[off + (k * 997) % ps] = 0x40 + k
        queue = [
            data_pages[0],
            zero_pages[0],
            data_pages[1],
            zero_pages[1],
            data_pages[2],
            zero_pages[2],
            data_pages[3],
            zero_pages[3],
            data_pages[4],
            zero_pages[4],
        ]

        released: list[int] = []
        src = mz.RAMBlock("big", src_mm, ps)
        assert src.num_pages == BIG // ps
        pages = mz.MultiFDPages(src, queue, page_count=len(queue))
        stats = mz.MigrationStats()
        mz.send_zero_page_detect(pages, options=mz.MigrationOptions(), stats=stats)
        model = ref_partition(src_mm, queue, ps)  # the model reads the mmap page by page
        assert pages.offset.tolist() == model.offsets
        assert pages.normal_num == model.normal_num == len(data_pages)
        assert stats.snapshot() == (5, 5)
        assert _kernels.scan_zero_pages(src_mm, np.array(queue, np.uint64), ps).tolist() == [
            off in zero_pages for off in queue
        ]
        payload = pages.normal_data()
        for k, off in enumerate(pages.normal.tolist()):
            assert payload[k * ps : (k + 1) * ps] == src_mm[off : off + ps]

        # The destination: the alias pages (offset - 4 GiB) hold a marker that must survive.
        aliases = [off - 4 * GiB for off in data_pages + zero_pages if off >= 4 * GiB]
        for off in aliases:
            dst_mm[off : off + 8] = b"ALIASED!"
        dst = mz.RAMBlock("big", dst_mm, ps)
        postcopy = mz.MigrationOptions(postcopy_ram=True)
        dst_mm[5 * GiB] = 0x77  # a stale page: postcopy must zero it
        assert mz.recv_zero_page_process(dst, pages.zero, options=postcopy) == 5
        assert mz.recv_normal_pages(dst, pages.normal, payload) == 5
        for off in data_pages:
            assert dst_mm[off : off + ps] == src_mm[off : off + ps]
        for off in zero_pages:
            assert mz.is_zero(memoryview(dst_mm)[off : off + ps])
        for off in aliases:
            if off not in zero_pages:
                assert dst_mm[off : off + 8] == b"ALIASED!", f"a write landed 4 GiB low at {off}"
        received = dst.receivedmap.received_offsets().tolist()
        assert received == sorted(data_pages + zero_pages)
        assert dst.receivedmap.test(BIG - ps) and not dst.receivedmap.test(BIG - 3 * ps)

        # Legacy records and zero_page_mask past 4 GiB.
        dst_mm[4 * GiB + 2 * ps] = 1
        assert mz.recv_legacy_zero_pages(dst, [4 * GiB + 2 * ps, 4 * GiB + ps]) == 1
        window = memoryview(src_mm)[4 * GiB - 2 * ps : 4 * GiB + 4 * ps]
        assert mz.zero_page_mask(window, ps).tolist() == [True, False, False, True, True, False]
        window.release()

        # release-ram in postcopy punches the zero pages out of the source file.
        for off in zero_pages:
            src_mm[off] = 1
            src_mm[off] = 0  # allocated on disk, zero again
        src_mm.flush()
        before = allocated(src_fd)
        rel = mz.RAMBlock("big", src_mm, ps, on_release=None)
        batch = mz.MultiFDPages(rel, zero_pages, page_count=len(zero_pages))
        mz.send_zero_page_detect(
            batch,
            options=mz.MigrationOptions(postcopy_ram=True, release_ram=True),
            stats=mz.MigrationStats(),
            in_postcopy=True,
        )
        released = batch.zero.tolist()
        after = allocated(src_fd)
        assert sorted(released) == sorted(zero_pages)
        assert before - after >= len(zero_pages) * min(ps, 4096), (before, after)
        for off in data_pages:
            assert src_mm[off + (data_pages.index(off) * 997) % ps] == 0x40 + data_pages.index(off)
    finally:
        src_mm.close()
        dst_mm.close()
        os.close(src_fd)
        os.close(dst_fd)


def test_receivedmap_bits_past_2_pow_32_bytes() -> None:
    """A receivedmap for 6 GiB of 1 KiB pages: 6M bits, set and tested near the top."""
    rmap = mz.ReceivedMap(BIG // 1024, 1024)
    for off in (4 * GiB - 1024, 4 * GiB, BIG - 1024):
        assert rmap.set(off) is False
        assert rmap.test(off)
        assert not rmap.test(off - 4 * GiB) if off >= 4 * GiB else True
    assert rmap.count() == 3
    assert rmap.received_offsets().tolist() == [4 * GiB - 1024, 4 * GiB, BIG - 1024]


# ------------------------------------------------------- page sizes x hosts


def make_host(kind: str, size: int, fill: bytes | None = None) -> tuple[Any, memoryview]:
    """A host of ``size`` bytes of the given kind, and a writable byte view of it."""
    if kind == "mmap":
        host: Any = mmap.mmap(-1, size)
        view = memoryview(host)
    elif kind == "numpy-u8":
        host = np.zeros(size, dtype=np.uint8)
        view = memoryview(host).cast("B")
    elif kind == "numpy-u64":
        host = np.zeros(size // 8, dtype=np.uint64)
        view = memoryview(host).cast("B")
    elif kind == "bytearray":
        host = bytearray(size)
        view = memoryview(host)
    elif kind == "memoryview":
        host = memoryview(bytearray(size))
        view = host
    elif kind == "memoryview-odd":
        # A view starting one byte into its buffer: pages start at odd addresses.
        host = memoryview(bytearray(size + 1))[1:]
        view = host
    else:  # pragma: no cover
        raise AssertionError(kind)
    if fill is not None:
        view[:] = fill
    return host, view


HOST_KINDS = ("mmap", "numpy-u8", "numpy-u64", "bytearray", "memoryview", "memoryview-odd")


@pytest.mark.parametrize("page_size", PAGE_SIZES, ids=[f"{p // 1024}K" for p in PAGE_SIZES])
def test_every_page_size_on_every_host(page_size: int) -> None:
    """Each page size x host kind x detection mode: a migration ends with dst == src."""
    ps = page_size
    pages = 6
    image = bytearray(pages * ps)
    image[0] = 1  # first byte
    image[2 * ps + ps - 1] = 2  # last byte
    image[4 * ps + ps // 2] = 3  # middle byte
    # pages 1, 3, 5 are zero
    for kind in HOST_KINDS:
        for mode in ("multifd", "legacy", "none"):
            src_host, src_view = make_host(kind, pages * ps, bytes(image))
            for source in (src_host, bytes(image)) if kind == "bytearray" else (src_host,):
                dst_host, dst_view = make_host(kind, pages * ps)
                src = mz.RAMBlock("pc.ram", source, ps)
                dst = mz.RAMBlock("pc.ram", dst_host, ps)
                options = mz.MigrationOptions(zero_page_detection=mode)
                stats = mz.MigrationStats()
                queue = [5 * ps, 0, 3 * ps, 2 * ps, ps, 4 * ps]
                rest, legacy_zero = mz.save_zero_pages(src, queue, options=options, stats=stats)
                batch = mz.MultiFDPages(src, rest, page_count=pages)
                mz.send_zero_page_detect(batch, options=options, stats=stats)
                model_stats = RefStats()
                if mode == "legacy":
                    model_stats.zero_pages += 3
                    model = ref_send_zero_page_detect(
                        image, rest.tolist(), ps, model_stats, mode="legacy"
                    )
                else:
                    model = ref_send_zero_page_detect(image, queue, ps, model_stats, mode=mode)
                assert batch.offset.tolist() == model.offsets, (kind, mode)
                data = batch.normal_data()
                mz.recv_legacy_zero_pages(dst, legacy_zero)
                mz.recv_zero_page_process(dst, batch.zero, options=options)
                mz.recv_normal_pages(dst, batch.normal, data)
                assert dst_view.tobytes() == bytes(image), (kind, mode, ps)
                assert dst.receivedmap.count() == pages
                assert stats.snapshot() == (model_stats.normal_pages, model_stats.zero_pages)
                assert mz.zero_page_mask(source, ps).tolist() == [
                    False,
                    True,
                    False,
                    True,
                    False,
                    True,
                ]
                dst_view.release()
                if kind == "mmap":
                    dst_host.close()
            src_view.release()
            if kind == "mmap":
                src_host.close()


def test_page_size_larger_than_the_block() -> None:
    """A block smaller than one page is refused; a single-page block works at 2 MiB."""
    with pytest.raises(ValueError, match="multiple of page_size"):
        mz.RAMBlock("pc.ram", bytearray(MiB), 2 * MiB)
    with pytest.raises(ValueError, match="out of range"):
        _kernels.partition_zero_pages(bytes(MiB), np.zeros(1, np.uint64), 2 * MiB)
    block = mz.RAMBlock("pc.ram", bytearray(2 * MiB), 2 * MiB)
    assert mz.recv_zero_page_process(block, [0], options=mz.MigrationOptions()) == 0
    assert block.receivedmap.count() == 1


# ------------------------------------------- closed or resized while held


def _while_writing(
    host: Any, attempt: Any, size: int, ps: int = 1024, renew: Any = None
) -> dict[str, int]:
    """Run recv_normal_pages into ``host`` on a thread; call ``attempt()`` while it is part-way.

    Progress is read from the receivedmap (the kernel sets page k's bit, then
    writes page k, in order), so the test itself holds no export of the host.
    An attempt counts as "mid-call" when the kernel was part-way both before
    and after it. Returns the counts and what the attempts raised; stops at
    the first attempt that succeeds (the host is then gone), reporting whether
    the kernel was still part-way then. An attempt that lands just after the
    kernel returned tests nothing: with ``renew`` (which puts the host back as
    it was) it is undone and not counted, so a descheduled test thread cannot
    end the search before it caught the kernel part-way.
    """
    n = size // ps
    offsets = np.arange(n, dtype=np.uint64) * np.uint64(ps)
    data = b"\x01" * (n * ps)
    rmap = np.zeros((n + 63) // 64, dtype=np.uint64)
    out: dict[str, int] = {"mid-call": 0, "attempts": 0}
    errors: list[BaseException] = []

    current = [host]  # renew may hand back a new host (a closed mmap cannot reopen)

    def work() -> None:
        try:
            _kernels.recv_normal_pages(current[0], rmap, offsets, data, ps)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def progress() -> int:
        return int(_kernels.bitmap_count(rmap))

    for _ in range(50):
        rmap[:] = 0
        worker = threading.Thread(target=work)
        worker.start()
        gone = False
        while worker.is_alive() and not gone:
            if not 0 < progress() < n:
                continue
            out["attempts"] += 1
            try:
                attempt()
            except BaseException as exc:
                name = type(exc).__name__
                out[name] = out.get(name, 0) + 1
                if progress() < n and worker.is_alive():
                    out["mid-call"] += 1
            else:
                gone = True
                late = progress() < n and worker.is_alive()
                if not late and renew is not None and out["mid-call"] == 0:
                    worker.join()
                    fresh = renew()
                    if fresh is not None:
                        current[0] = fresh
                    out["attempts"] -= 1
                    gone = False
                    break
                key = "succeeded mid-call" if late else "succeeded after the writes"
                out[key] = out.get(key, 0) + 1
        worker.join()
        if errors:
            raise errors[0]
        if gone:
            break
        assert progress() == n
        if out["mid-call"] >= 3:
            break
    return out


def child_close_or_resize_while_held() -> dict[str, Any]:
    """In a child process: every way to close or resize a host under a running kernel."""
    ps = 1024
    size = 64 * MiB
    report: dict[str, Any] = {}

    # mmap: close and resize raise BufferError while the kernel holds the export.
    mm = mmap.mmap(-1, size)
    report["mmap.resize"] = _while_writing(mm, lambda: mm.resize(size * 2), size)
    box = {"mm": mm}

    def reopen() -> mmap.mmap:
        box["mm"] = mmap.mmap(-1, size)
        return box["mm"]

    report["mmap.close"] = _while_writing(mm, lambda: box["mm"].close(), size, renew=reopen)
    if not mm.closed:
        assert mm[::ps] == b"\x01" * (size // ps)
        mm.close()  # afterwards it closes
    try:
        _kernels.recv_zero_pages(mm, np.zeros(1024, np.uint64), np.zeros(1, np.uint64), ps, 1)
    except ValueError as exc:
        report["closed mmap, then a kernel"] = type(exc).__name__ + ": " + str(exc)
    try:
        mz.RAMBlock("pc.ram", mm, ps)
    except (TypeError, ValueError) as exc:
        report["closed mmap, then RAMBlock"] = type(exc).__name__ + ": " + str(exc)

    # bytearray: no resize while exported. A fresh buffer for each case: an
    # attempt that lands just after the kernel returns does resize it.
    grown, shrunk, cleared = bytearray(size), bytearray(size), bytearray(size)
    report["bytearray.extend"] = _while_writing(
        grown,
        lambda: grown.extend(b"\0" * ps),
        size,
        renew=lambda: grown.__delitem__(slice(size, None)),
    )
    report["bytearray.del"] = _while_writing(
        shrunk,
        lambda: shrunk.__delitem__(slice(-ps, None)),
        size,
        renew=lambda: shrunk.extend(b"\0" * ps),
    )
    report["bytearray.clear"] = _while_writing(
        cleared, cleared.clear, size, renew=lambda: cleared.extend(bytes(size))
    )

    # A RAMBlock over a bytearray that shrinks afterwards: the kernels check the
    # buffer as it is now, so a page past the new end is refused, not written.
    small = bytearray(8 * ps)
    block = mz.RAMBlock("pc.ram", small, ps)
    del small[4 * ps :]
    outcomes = []
    for call in (
        lambda: mz.recv_zero_page_process(
            block, [6 * ps], options=mz.MigrationOptions(postcopy_ram=True)
        ),
        lambda: mz.recv_normal_pages(block, [7 * ps], bytes(ps)),
        lambda: mz.recv_legacy_zero_pages(block, [5 * ps]),
        lambda: mz.send_zero_page_detect(
            mz.MultiFDPages(block, [6 * ps]),
            options=mz.MigrationOptions(),
            stats=mz.MigrationStats(),
        ),
    ):
        try:
            call()
            outcomes.append("no error")
        except ValueError as exc:
            outcomes.append("ValueError: " + str(exc))
    report["bytearray shrunk under a RAMBlock"] = outcomes
    assert block.receivedmap.count() == 0 and bytes(small) == bytes(4 * ps)
    # Grown past what its receivedmap covers: a page of the old range is either
    # received normally or refused (the map no longer covers the host); a page
    # of the new range is refused (past the block's used_length).
    small.extend(b"\x33" * (200 * ps))
    grown = []
    for offsets in ([0], [100 * ps]):
        try:
            mz.recv_zero_page_process(
                block, offsets, options=mz.MigrationOptions(postcopy_ram=True)
            )
            grown.append("no error")
        except ValueError as exc:
            grown.append("ValueError: " + str(exc))
    report["bytearray grown under a RAMBlock"] = grown
    assert bytes(small[4 * ps :]) == b"\x33" * (200 * ps)
    assert block.receivedmap.count() == (grown[0] == "no error")

    # memoryview: release() refuses while the kernel holds an export of it.
    base = bytearray(size)
    views = {"mv": memoryview(base)}

    def review() -> memoryview:
        # A released view cannot come back: a release that landed after the
        # kernel returned (the test thread descheduled) is undone with a new one.
        views["mv"] = memoryview(base)
        return views["mv"]

    report["memoryview.release"] = _while_writing(
        views["mv"], lambda: views["mv"].release(), size, renew=review
    )
    mv = views["mv"]
    mv.release()
    try:
        mz.is_zero(mv)
    except ValueError as exc:
        report["released memoryview, then a kernel"] = "ValueError: " + str(exc)

    # numpy: resize (with its reference check) refuses while held.
    arr = np.zeros(size, dtype=np.uint8)
    report["numpy.resize"] = _while_writing(arr, lambda: arr.resize(size * 2), size)

    # A read-only kernel (is_zero over 512 MiB) raced by close from another
    # thread: whichever wins, an error or a clean result, never a crash.
    outcomes2: dict[str, int] = {}
    for _ in range(30):
        big = mmap.mmap(-1, 512 * MiB)
        started = threading.Event()
        result: list[str] = []

        def scan(
            big: mmap.mmap = big, started: threading.Event = started, result: list[str] = result
        ) -> None:
            started.set()
            try:
                result.append(f"is_zero={mz.is_zero(big)}")
            except ValueError as exc:
                result.append("scan ValueError " + str(exc)[:30])

        t = threading.Thread(target=scan)
        t.start()
        started.wait()
        try:
            big.close()
            closer = "closed"
        except BufferError:
            closer = "close BufferError"
        t.join()
        key = f"{closer} / {result[0]}"
        outcomes2[key] = outcomes2.get(key, 0) + 1
        if not big.closed:
            big.close()
    report["is_zero raced by close"] = outcomes2
    return report


def test_host_closed_or_resized_while_a_kernel_holds_it() -> None:
    """Close/resize under a running kernel is an error (BufferError/ValueError), never a crash."""
    report = check_child("child_close_or_resize_while_held", module="robustness.test_big_memory")
    print("\n" + "\n".join(f"{k}: {v}" for k, v in report.items()))
    expected = {
        "mmap.close": "BufferError",
        "mmap.resize": "BufferError",
        "bytearray.extend": "BufferError",
        "bytearray.del": "BufferError",
        "bytearray.clear": "BufferError",
        "memoryview.release": "BufferError",
        "numpy.resize": "ValueError",
    }
    for name, error in expected.items():
        seen = report[name]
        assert seen["mid-call"] >= 1, f"{name}: never caught the kernel part-way: {seen}"
        assert "succeeded mid-call" not in seen, f"{name} succeeded under a running kernel: {seen}"
        # Every attempt raised, except at most a last one made after the kernel's writes.
        late = seen.get("succeeded after the writes", 0)
        assert seen.get(error, 0) + late == seen["attempts"] and late <= 1, f"{name}: {seen}"
    assert report["closed mmap, then a kernel"].startswith("ValueError")
    assert report["closed mmap, then RAMBlock"].startswith("ValueError")
    assert report["released memoryview, then a kernel"].startswith("ValueError")
    assert all(o.startswith("ValueError") for o in report["bytearray shrunk under a RAMBlock"])
    old_page, new_page = report["bytearray grown under a RAMBlock"]
    assert old_page == "no error" or old_page.startswith("ValueError: receivedmap")
    assert new_page.startswith("ValueError") and "out of range" in new_page
    for key in report["is_zero raced by close"]:
        assert key in {"close BufferError / is_zero=True"} or key.startswith("closed / scan "), key
