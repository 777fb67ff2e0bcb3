"""Memory that stays sparse: resident-set figures from ``/proc/self/statm`` in a child.

Each case runs in a fresh child interpreter (``support.receivers.run_child``)
on 256 MiB of fresh anonymous memory, and reads the process's resident memory
before and after the call under test (everything the call needs, such as the
offsets array, is allocated before the first reading). Cases:

- destination, multifd precopy: zero pages never received before are not
  written, so resident memory does not grow (QEMU 9.1's receivedmap rule);
  checked on ``mmap.mmap(-1, n)`` (``MAP_SHARED``, shmem) and on a
  ``MAP_PRIVATE`` mapping, and page by page with ``mincore(2)``;
- destination, postcopy-ram: the same pages are written, so they are all
  populated (QEMU 10.1: a page marked received must exist);
- destination, figures only: the legacy receiver (which reads each page
  first) and a second zero arrival in precopy (which is written);
- source, ``release-ram`` in postcopy: the zero pages found by multifd and
  legacy detection are discarded (``MADV_REMOVE``, or ``MADV_DONTNEED`` for a
  private mapping) and resident memory falls by their size; outside postcopy,
  or with pages smaller than a host page, nothing is released.

The figures measured are printed (``pytest -s``) and the assertions allow a
few MiB of noise against the 256 MiB at stake.
"""

from __future__ import annotations

import mmap
import sys
from typing import Any

import numpy as np
import pytest
from support.receivers import MiB, check_child, statm

import multifd_zero as mz

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="/proc/self/statm and madvise are Linux-only"
)

SIZE = 256 * MiB
NOISE = 4 * MiB  # allocator and interpreter noise allowed in "unchanged"
HOST_PAGE = mmap.PAGESIZE

_MODULE = "model.test_sparse"  # where a child interpreter finds the functions below


def _mapping(kind: str, size: int = SIZE) -> mmap.mmap:
    if kind == "shared":
        return mmap.mmap(-1, size)  # MAP_SHARED | MAP_ANONYMOUS: shmem
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _resident_pages(mm: mmap.mmap, page_size: int) -> int:
    """Pages of ``mm`` whose first host page is resident (mincore)."""
    from support.builders import resident

    return sum(resident(mm, len(mm) // page_size, page_size))


def child_destination(kind: str, how: str, page_size: int) -> dict[str, Any]:
    """Receive every page of a fresh block as a zero page; resident memory before/after."""
    mm = _mapping(kind)
    block = mz.RAMBlock("pc.ram", mm, page_size, fresh=True)  # a new mapping: known zero
    n = SIZE // page_size
    offsets = np.arange(n, dtype=np.uint64) * np.uint64(page_size)
    precopy = mz.MigrationOptions()
    postcopy = mz.MigrationOptions(postcopy_ram=True)
    before = statm()["resident"]
    if how == "multifd-precopy":
        written = mz.recv_zero_page_process(block, offsets, options=precopy)
    elif how == "multifd-postcopy":
        written = mz.recv_zero_page_process(block, offsets, options=postcopy)
    elif how == "legacy":
        written = mz.recv_legacy_zero_pages(block, offsets)
    elif how == "multifd-precopy-twice":
        # First arrival leaves the page alone; the second (received before) zeroes it.
        mz.recv_zero_page_process(block, offsets, options=precopy)
        written = mz.recv_zero_page_process(block, offsets, options=precopy)
    else:  # pragma: no cover
        raise AssertionError(how)
    after = statm()["resident"]
    report = {
        "kind": kind,
        "how": how,
        "page_size": page_size,
        "pages": n,
        "written": int(written),
        "received": block.receivedmap.count(),
        "resident_before": before,
        "resident_after": after,
        "delta": after - before,
    }
    if page_size >= HOST_PAGE:
        report["mincore_resident_pages"] = _resident_pages(mm, page_size)
    mm.close()
    return report


def _fmt(r: dict[str, Any]) -> str:
    return (
        f"{r['kind']:>7} {r['how']:<22} ps={r['page_size']:>7}: resident "
        f"{r['resident_before'] / MiB:7.1f} -> {r['resident_after'] / MiB:7.1f} MiB "
        f"(delta {r['delta'] / MiB:+7.1f} MiB), {r['written']} pages written"
    )


@pytest.mark.parametrize("kind", ["shared", "private"])
@pytest.mark.parametrize("page_size", [4096, 64 * 1024, 2 * MiB])
def test_precopy_zero_pages_leave_fresh_memory_unpopulated(kind: str, page_size: int) -> None:
    """256 MiB of first-arrival zero pages: resident memory unchanged, nothing written."""
    r = check_child("child_destination", kind, "multifd-precopy", page_size, module=_MODULE)
    print("\n" + _fmt(r))
    assert r["written"] == 0 and r["received"] == r["pages"]
    assert abs(r["delta"]) <= NOISE, _fmt(r)
    assert r["mincore_resident_pages"] == 0


@pytest.mark.parametrize("kind", ["shared", "private"])
def test_postcopy_zero_pages_are_populated(kind: str) -> None:
    """With postcopy-ram the same 256 MiB of zero pages are written: all resident."""
    r = check_child("child_destination", kind, "multifd-postcopy", 4096, module=_MODULE)
    print("\n" + _fmt(r))
    assert r["written"] == r["pages"] == r["received"]
    assert r["delta"] >= SIZE - NOISE, _fmt(r)
    assert r["mincore_resident_pages"] == r["pages"]


@pytest.mark.parametrize("kind", ["shared", "private"])
def test_repeat_zero_arrival_is_written(kind: str) -> None:
    """A zero page received twice in precopy is zeroed the second time: it gets populated."""
    r = check_child(
        "child_destination", kind, "multifd-precopy-twice", 4096, module=_MODULE
    )
    print("\n" + _fmt(r))
    assert r["written"] == r["pages"]
    assert r["delta"] >= SIZE - NOISE, _fmt(r)


@pytest.mark.parametrize("kind", ["shared", "private"])
def test_legacy_zero_records_read_but_do_not_write(kind: str) -> None:
    """The legacy receiver reads each page first and writes none of these zero pages.

    Reading a hole of private anonymous memory maps the shared zero page (not
    resident memory); reading a hole of shmem allocates a page, so a
    ``MAP_SHARED`` destination does grow: QEMU's ``ram_handle_zero`` has the
    same cost, which is why multifd's receiver does not read.
    """
    r = check_child("child_destination", kind, "legacy", 4096, module=_MODULE)
    print("\n" + _fmt(r))
    assert r["written"] == 0 and r["received"] == r["pages"]
    if kind == "private":
        assert abs(r["delta"]) <= NOISE, _fmt(r)


# ------------------------------------------------------------- the source


def child_source_release(
    kind: str, how: str, page_size: int, in_postcopy: bool
) -> dict[str, Any]:
    """A populated source whose pages are 3/4 zero; detect them with release-ram."""
    mm = _mapping(kind)
    n = SIZE // page_size
    arr = np.frombuffer(mm, dtype=np.uint8).reshape(n, page_size)
    arr[:, 0] = 1  # populate every host page ...
    arr[:, page_size // 2 :: HOST_PAGE] = 1
    arr[:] = 0  # ... and make every page zero again (still resident)
    arr[::4, 7] = 9  # one page in four holds data
    del arr
    offsets = np.arange(n, dtype=np.uint64) * np.uint64(page_size)
    options = mz.MigrationOptions(
        zero_page_detection="legacy" if how == "legacy" else "multifd", release_ram=True
    )
    block = mz.RAMBlock("pc.ram", mm, page_size)
    stats = mz.MigrationStats()
    capacity = mz.multifd_ram_page_count(page_size)
    batches = [mz.MultiFDPages(block, offsets[i : i + capacity])
               for i in range(0, n, capacity)]
    before = statm()["resident"]
    if how == "legacy":
        for i in range(0, n, capacity):
            mz.save_zero_pages(
                block, offsets[i : i + capacity], options=options, stats=stats,
                in_postcopy=in_postcopy,
            )
    else:
        for batch in batches:
            mz.send_zero_page_detect(batch, options=options, stats=stats, in_postcopy=in_postcopy)
    after = statm()["resident"]
    # The data pages are intact; released pages read as zero.
    view = np.frombuffer(mm, dtype=np.uint8).reshape(n, page_size)
    intact = bool((view[::4, 7] == 9).all()) and int(np.count_nonzero(view)) == len(view[::4])
    del view
    mm.close()
    return {
        "kind": kind,
        "how": f"release {how}{' in postcopy' if in_postcopy else ''}",
        "page_size": page_size,
        "pages": n,
        "zero_pages": stats.zero_pages,
        "written": 0,
        "resident_before": before,
        "resident_after": after,
        "delta": after - before,
        "intact": intact,
    }


@pytest.mark.parametrize("kind", ["shared", "private"])
@pytest.mark.parametrize("how", ["multifd", "legacy"])
@pytest.mark.parametrize("page_size", [4096, 2 * MiB])
def test_release_ram_in_postcopy_returns_memory(kind: str, how: str, page_size: int) -> None:
    """release-ram + postcopy: resident memory falls by the zero pages' 192 MiB."""
    r = check_child("child_source_release", kind, how, page_size, True, module=_MODULE)
    print("\n" + _fmt(r))
    zero_bytes = r["zero_pages"] * page_size
    assert zero_bytes == SIZE * 3 // 4
    assert r["intact"]
    assert -r["delta"] >= zero_bytes - NOISE, _fmt(r)


@pytest.mark.parametrize(("page_size", "in_postcopy"), [(4096, False), (1024, True)])
def test_no_release_outside_postcopy_or_below_the_host_page(
    page_size: int, in_postcopy: bool
) -> None:
    """Outside postcopy nothing is released; 1 KiB pages cannot be discarded (QEMU's check)."""
    r = check_child(
        "child_source_release", "shared", "multifd", page_size, in_postcopy, module=_MODULE
    )
    print("\n" + _fmt(r))
    assert r["intact"]
    assert abs(r["delta"]) <= NOISE, _fmt(r)


def test_statm_reads_this_process() -> None:
    """The figures above come from a reader that sees memory being populated."""
    before = statm()
    mm = mmap.mmap(-1, 64 * MiB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        np.frombuffer(mm, dtype=np.uint8)[::HOST_PAGE] = 1
        after = statm()
        assert after["resident"] - before["resident"] >= 60 * MiB
        assert after["size"] >= before["size"] + 64 * MiB
    finally:
        mm.close()
