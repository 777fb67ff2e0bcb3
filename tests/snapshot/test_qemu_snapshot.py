"""Save a real QEMU 10 guest with the snapshot library, restore it into another QEMU.

Every QEMU here is ``-M pc -nodefaults -S`` with its RAM in a file made by the
test (``memory-backend-file``, ``share=on``), so the test reads guest memory
through the file at any time (see ``support/qemu_vm.py``).

What the tests rely on, from QEMU's sources:

- A ``-S`` guest runs no code, so a migration without qtest writes sends every
  page exactly once: ``normal + duplicate`` is the number of pages of all RAM
  blocks, and ``duplicate`` is the number of zero pages unless
  ``zero-page-detection`` is ``none`` (``migration/ram.c``: ``save_zero_page``
  returns early for ``none``; ``migration/multifd-zero-page.c``:
  ``multifd_send_zero_page_detect`` counts every page as normal for ``none``).
- ``pause-before-switchover`` (``migration/migration.c``,
  ``migration_maybe_pause``) stops the source after the VM is stopped and
  before the final RAM pass, until ``migrate-continue``; the final pass
  (``ram_save_complete`` in ``migration/ram.c``) syncs the dirty bitmap once
  more, so qtest writes made before ``migrate-continue`` are all migrated, and
  after completion the (paused) source's RAM is the switchover state.
- ``downtime-limit`` 0 makes the switchover threshold 0: QEMU switches over
  only when nothing is pending (``migration_iteration_run``).
- On a fresh destination a zero page that arrives as a zero page (multifd
  offsets or the legacy 9-byte record) is not written
  (``multifd_recv_zero_page_process`` in ``migration/multifd-zero-page.c``,
  ``ram_handle_zero`` in ``migration/ram.c``), so the destination's RAM file
  stays sparse; with ``none`` the zero pages arrive as data and are written.

No test depends on timing: writes during migration are ordered against QEMU's
``dirty-sync-count`` and the ``pre-switchover`` state, never against a clock.
The timeouts are safety nets against a hung QEMU only.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.qemu_vm import (
    PAGE_SIZE,
    QemuVM,
    allocated_pages,
    cont,
    fill_ram,
    migrate,
    migrate_continue,
    migrate_incoming,
    nonzero_pages,
    query_migrate,
    query_status,
    ram_blocks,
    read_ram,
    require_qemu,
    set_migration,
    wait_migration,
)

import multifd_zero.snapshot as snap
from multifd_zero.errors import SnapshotError

pytestmark = pytest.mark.qemu

MiB = 1 << 20
GUEST = 32 * MiB
PAGES = GUEST // PAGE_SIZE
CHANNELS = (0, 1, 2, 4)
MODES = ("multifd", "legacy", "none")
BLOCK = "ram0"  # the memory backend's id names the RAM block


@pytest.fixture(scope="module", autouse=True)
def qemu() -> str:
    """QEMU 10 or a visible skip (a failure with MULTIFD_ZERO_REQUIRE_QEMU=1)."""
    return require_qemu(10)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for Unix sockets (sun_path is 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="snap-", dir="/tmp") as name:
        yield Path(name)


def make_guest(path: Path, seed: int, size: int = GUEST, zero_fraction: float = 0.5) -> None:
    """Random and zero pages, plus zero-but-one-byte pages a sloppy check would miss."""
    fill_ram(path, size, zero_fraction=zero_fraction, seed=seed)
    rng = np.random.default_rng(seed + 1)
    zero = np.flatnonzero(~nonzero_pages(path))
    picks = rng.choice(zero, size=min(64, zero.size), replace=False)
    with open(path, "r+b") as f:
        for i, page in enumerate(picks):
            pos = (0, PAGE_SIZE - 1, PAGE_SIZE // 2, int(rng.integers(PAGE_SIZE)))[i % 4]
            f.seek(int(page) * PAGE_SIZE + pos)
            f.write(bytes([int(rng.integers(1, 256))]))


def empty_ram(path: Path, size: int = GUEST) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


@dataclass
class Saved:
    result: snap.SaveResult
    info: dict[str, Any]  # the source's query-migrate at completion
    blocks: dict[str, int]  # the source's info ramblock: name -> used length


def start_save(
    vm: QemuVM, directory: Path, sockdir: Path, channels: int, listen: str | None = None
) -> tuple[snap.SnapshotSaver, concurrent.futures.Future[snap.SaveResult]]:
    """Listen with a SnapshotSaver, run its wait() in a thread, and migrate ``vm`` to it.

    ``listen`` defaults to a Unix socket in ``sockdir``; ``tcp:127.0.0.1:0`` lets
    the saver pick a port (``saver.uri`` names it).
    """
    listen = listen or f"unix:{sockdir / 'save.sock'}"
    saver = snap.SnapshotSaver(directory, listen, channels, timeout=120)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(saver.wait)
    pool.shutdown(wait=False)
    migrate(vm, saver.uri)
    return saver, future


def save_vm(
    vm: QemuVM,
    directory: Path,
    sockdir: Path,
    channels: int,
    mode: str,
    listen: str | None = None,
    **kwargs: Any,
) -> Saved:
    set_migration(vm, channels, mode, **kwargs)
    blocks = {name: b.used for name, b in ram_blocks(vm).items()}
    saver, future = start_save(vm, directory, sockdir, channels, listen)
    try:
        info = wait_migration(vm, 300)
        result = future.result(timeout=300)
    finally:
        saver.close()
    assert not (sockdir / "save.sock").exists()  # the saver removes its socket file
    return Saved(result, info, blocks)


def image_of(saved: Saved, idstr: str) -> Path:
    (info,) = [b for b in saved.result.manifest.blocks if b.idstr == idstr]
    return Path(saved.result.directory) / str(info.file)


def check_snapshot(saved: Saved, channels: int) -> None:
    """Blocks as QEMU has them; counts as QEMU's; every image sparse exactly where zero."""
    manifest = saved.result.manifest
    ram = saved.info["ram"]
    assert manifest.complete
    assert manifest.channels == channels
    # What QEMU's -M pc source announced (configuration, RAM section header, handshakes).
    assert manifest.machine_type.startswith("pc-i440fx-")
    assert manifest.uuid == bytes(16)  # no -uuid on the source
    assert (manifest.ram_section_id, manifest.ram_instance_id, manifest.ram_version_id) == (
        1,
        0,
        4,
    )
    assert manifest.blocks[0].idstr == BLOCK
    assert len({b.file for b in manifest.blocks}) == len(manifest.blocks)
    assert all("/" not in b.file for b in manifest.blocks)
    assert not list(Path(saved.result.directory).glob("*.tmp"))
    assert manifest.page_size == PAGE_SIZE == ram["page-size"]
    assert {b.idstr: b.length for b in manifest.blocks} == saved.blocks
    assert manifest.ram_bytes == sum(saved.blocks.values()) == ram["total"]
    # The counts are QEMU's.
    assert (manifest.normal, manifest.duplicate) == (ram["normal"], ram["duplicate"])
    assert (saved.result.normal, saved.result.duplicate) == (ram["normal"], ram["duplicate"])
    assert saved.result.normal_bytes == ram["normal-bytes"]
    assert saved.result.transferred == ram["transferred"]
    assert sum(b.normal for b in manifest.blocks) == manifest.normal
    assert sum(b.duplicate for b in manifest.blocks) == manifest.duplicate
    # Every image holds data exactly in its non-zero pages.
    for block in manifest.blocks:
        path = Path(saved.result.directory) / block.file
        assert path.stat().st_size == block.length
        data = nonzero_pages(path)
        allocated = allocated_pages(path)
        assert block.data_pages == int(data.sum()), block
        extra = np.flatnonzero(allocated & ~data)
        missing = np.flatnonzero(data & ~allocated)
        assert extra.size == 0, f"{block.idstr}: zero pages allocated: {extra[:10]}"
        assert missing.size == 0, f"{block.idstr}: data pages not allocated: {missing[:10]}"
        # Sparse: only the non-zero pages take space (a little slack for metadata).
        assert os.stat(path).st_blocks * 512 <= block.data_pages * PAGE_SIZE + (64 << 10)


def zero_pages_total(saved: Saved) -> int:
    return sum(
        int((~nonzero_pages(image_of(saved, b.idstr))).sum()) for b in saved.result.manifest.blocks
    )


# ------------------------------------------------------------- QEMU -> save


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("channels", CHANNELS)
def test_save_matrix(workdir: Path, sockdir: Path, channels: int, mode: str) -> None:
    """Images equal guest RAM; counts equal QEMU's; images allocated where non-zero only.

    With 4 channels the saver listens on TCP (a port it picks), else on a Unix socket.
    """
    ram_file = workdir / "src.ram"
    make_guest(ram_file, seed=100 + channels)
    listen = "tcp:127.0.0.1:0" if channels == 4 else None
    with QemuVM(ram_file) as vm:
        saved = save_vm(vm, workdir / "snap", sockdir, channels, mode, listen)
        assert query_status(vm) == "postmigrate"
    check_snapshot(saved, channels)
    assert np.array_equal(read_ram(image_of(saved, BLOCK)), read_ram(ram_file))
    # A -S guest: every page once; zero pages are "duplicate" unless detection is off.
    ram = saved.info["ram"]
    total_pages = sum(saved.blocks.values()) // PAGE_SIZE
    assert ram["normal"] + ram["duplicate"] == total_pages
    assert ram["duplicate"] == (0 if mode == "none" else zero_pages_total(saved))


def test_save_refuses_existing_snapshot(workdir: Path, sockdir: Path) -> None:
    """API.md: SnapshotSaver raises SnapshotError if directory/manifest.json exists."""
    ram_file = workdir / "src.ram"
    make_guest(ram_file, seed=7)
    with QemuVM(ram_file) as vm:
        save_vm(vm, workdir / "snap", sockdir, 2, "multifd")
    before = (workdir / "snap" / "manifest.json").read_bytes()
    with pytest.raises(SnapshotError):
        snap.SnapshotSaver(workdir / "snap", f"unix:{sockdir / 'again.sock'}", 2)
    assert (workdir / "snap" / "manifest.json").read_bytes() == before


# ------------------------------------------------- a guest changing while saved


def wait_for(vm: QemuVM, predicate: Any, what: str, timeout: float = 300) -> dict[str, Any]:
    """Poll query-migrate until ``predicate(info)``; a safety timeout only."""
    deadline = time.monotonic() + timeout
    while True:
        info = query_migrate(vm)
        if predicate(info):
            return info
        if info.get("status") in ("failed", "cancelled", "completed"):
            raise AssertionError(
                f"migration {info.get('status')} while waiting for {what}: {info}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: {info}")
        time.sleep(0.005)


def sync_count(info: dict[str, Any]) -> int:
    return int(info.get("ram", {}).get("dirty-sync-count", 0))


def first_pass_beyond(vm: QemuVM, pages: int) -> dict[str, Any]:
    """Return once QEMU has sent (not only queued) the first ``pages`` pages of RAM.

    In the first pass (``dirty-sync-count`` 1) QEMU walks the bitmap, in which
    every page is dirty after setup, in address order, RAM blocks largest
    first (``ram_block_add`` in ``system/physmem.c`` keeps that order; ram0
    is the largest), and ``remaining`` counts the dirty bits not yet cleared.
    A page queued to multifd is on the wire before the main thread gets more
    than (channels + 1) batches of 128 pages further (a batch is handed only
    to an idle channel, ``multifd_send`` in ``migration/multifd.c``), one on
    the main stream before 64 more pages (``MAX_IOV_SIZE`` in
    ``migration/qemu-file.c``); ``SLACK`` covers both. A later sync means the
    first pass is over, ``pre-switchover`` that all passes are.
    """

    def beyond(info: dict[str, Any]) -> bool:
        ram = info.get("ram", {})
        if info.get("status") == "pre-switchover" or sync_count(info) >= 2:
            return True
        if info.get("status") != "active" or "remaining" not in ram:
            return False
        sent = ram["total"] // PAGE_SIZE - ram["remaining"] // PAGE_SIZE
        return bool(sent >= pages + SLACK)

    return wait_for(vm, beyond, f"first pass beyond page {pages}")


SLACK = 6 * 128


def next_round(vm: QemuVM) -> None:
    """Return once QEMU has synced its dirty bitmap again, or paused before switchover."""
    c = sync_count(query_migrate(vm))
    wait_for(
        vm,
        lambda i: sync_count(i) > c or i.get("status") == "pre-switchover",
        f"dirty sync {c + 1}",
    )


@pytest.mark.parametrize(("channels", "mode"), [(2, "multifd"), (0, "legacy"), (4, "none")])
def test_save_while_guest_changes(workdir: Path, sockdir: Path, channels: int, mode: str) -> None:
    """qtest writes while QEMU migrates: the snapshot is RAM at switchover.

    Low ``max-bandwidth`` and a 1 ms ``downtime-limit`` make QEMU run dirty
    rounds while the writes go on; the assertions hold for any number of
    rounds. Pages in the low region are sent in the first pass before they
    change (``first_pass_beyond``), so the pages that turn zero there
    certainly went out as data before.
    """
    ram_file = workdir / "src.ram"
    make_guest(ram_file, seed=300 + channels)
    data0 = nonzero_pages(ram_file)
    rng = np.random.default_rng(channels)
    # Guest-physical == ram0 offset below 0xa0000 and from 1 MiB to the end of
    # ram0 (< 4 GiB): the 0xa0000-0xfffff window belongs to VGA and the BIOS.
    low = np.arange(256, 2048)
    high = np.arange(2048, PAGES)
    low_data = rng.permutation(low[data0[low]])
    low_zero = rng.permutation(low[~data0[low]])
    high_data = rng.permutation(high[data0[high]])
    high_zero = rng.permutation(high[~data0[high]])
    sent_then_zero = low_data[:60]  # data, sent in pass 1, then zero
    sent_then_changed = low_data[60:100]  # data, sent, then other data every phase
    dirty_zero = np.concatenate([low_zero[:40], high_zero[:40]])  # zero, zero-written often
    born_dead = low_zero[40:80]  # zero -> data (phase 0) -> zero (phase 1)
    flapping = high_data[:40]  # data -> zero (phase 0) -> data (phase 1) -> zero (phase 2)
    late = high_zero[40:60]  # zero -> data in the last phase only
    one_byte = high_zero[60:80]  # zero -> one non-zero byte at the very end of the page

    def addr(page: Any) -> int:
        return int(page) * PAGE_SIZE

    with QemuVM(ram_file, qtest=True) as vm:
        assert vm.qtest is not None
        qt = vm.qtest
        set_migration(
            vm,
            channels,
            mode,
            max_bandwidth=16 * MiB,
            downtime_limit=1,
            capabilities={"pause-before-switchover": True},
        )
        blocks = {name: b.used for name, b in ram_blocks(vm).items()}
        saver, future = start_save(vm, workdir / "snap", sockdir, channels)
        try:
            first_pass_beyond(vm, 2048)
            for phase in range(3):
                for page in sent_then_changed:
                    qt.write(addr(page) + 64 * phase, rng.bytes(64))
                for page in dirty_zero:
                    qt.memset(addr(page), PAGE_SIZE, 0)
                for page in flapping:
                    if phase == 1:
                        qt.writeq(addr(page) + 8 * phase, 0xFEEDFACE)
                    else:
                        qt.memset(addr(page), PAGE_SIZE, 0)
                if phase == 0:
                    for page in sent_then_zero:
                        qt.memset(addr(page), PAGE_SIZE, 0)
                    for page in born_dead:
                        qt.write(addr(page) + 1000, rng.bytes(15) + b"\x01")
                elif phase == 1:
                    for page in born_dead:
                        qt.memset(addr(page), PAGE_SIZE, 0)
                    for page in one_byte:
                        qt.writeq(addr(page) + PAGE_SIZE - 8, 0x5A << 56)
                else:
                    for page in late:
                        qt.writeq(addr(page), 0x0123456789ABCDEF)
                    break
                next_round(vm)
            wait_for(vm, lambda i: i.get("status") == "pre-switchover", "pre-switchover")
            migrate_continue(vm)
            info = wait_migration(vm, 300)
            result = future.result(timeout=300)
        finally:
            saver.close()
        assert query_status(vm) == "postmigrate"  # paused: its RAM is the switchover state
        final = np.array(read_ram(ram_file))
    saved = Saved(result, info, blocks)
    check_snapshot(saved, channels)
    image = read_ram(image_of(saved, BLOCK))
    assert np.array_equal(image, final)
    # The writes landed (so the comparison above covers them).
    final_data: np.ndarray = np.asarray(final.any(axis=1))
    assert final_data[late].all() and (final[one_byte, -1] == 0x5A).all()
    assert not final_data[np.concatenate([sent_then_zero, born_dead, flapping, dirty_zero])].any()
    # Zero in every round (dirtied or not) or zero at the end: no block in the image.
    allocated = allocated_pages(image_of(saved, BLOCK))
    assert not allocated[~final_data].any(), np.flatnonzero(allocated & ~final_data)[:10]
    # Pages sent again are counted again, as QEMU counts them: sent_then_zero went
    # out as data in the first pass and as zero pages after.
    ram = info["ram"]
    assert ram["normal"] + ram["duplicate"] >= sum(blocks.values()) // PAGE_SIZE + 60
    assert sync_count(info) >= 2


@pytest.mark.parametrize(("channels", "mode"), [(2, "legacy")])
def test_dirty_rounds(workdir: Path, sockdir: Path, channels: int, mode: str) -> None:
    """Pages rewritten (data to zero, zero to data) over at least 4 dirty rounds.

    The guest is paused; the test writes its memory through qtest while QEMU
    migrates with a low bandwidth, so QEMU sends those pages again in later
    rounds, each ended by a MULTIFD_FLUSH, until it has synced the dirty bitmap
    4 times; then it lets QEMU converge (no ``pause-before-switchover``). The
    snapshot must equal the memory at the end, which only holds if every
    round's pages are applied before the next round's
    (``multifd_recv_sync_main``). With ``legacy`` detection and multifd on, the
    zero pages go as ZERO records on the main channel and the data pages over
    multifd, so the rounds interleave across channels (the other pairs are in
    :func:`test_save_while_guest_changes`).
    """
    ram_file = workdir / "src.ram"
    make_guest(ram_file, seed=11)
    rng = np.random.default_rng(5)
    with QemuVM(ram_file, qtest=True) as vm:
        assert vm.qtest is not None
        qt = vm.qtest
        # 4 MiB/s: the 64 pages a pass of the loop below dirties take QEMU about
        # 60 ms to send, several times what the pass takes even on a loaded
        # machine, so QEMU cannot run out of dirty pages and converge before
        # the 4 rounds (at 16 MiB/s it sometimes did).
        set_migration(vm, channels, mode, max_bandwidth=4 * MiB, downtime_limit=1)
        blocks = {name: b.used for name, b in ram_blocks(vm).items()}
        saver, future = start_save(vm, workdir / "snap", sockdir, channels)
        try:
            rounds = 0
            deadline = time.monotonic() + 300  # a safety net against a hung QEMU only
            while rounds < 4:  # keep dirtying until QEMU has synced the dirty bitmap 4 times
                assert time.monotonic() < deadline, f"only {rounds} dirty syncs"
                for _ in range(64):
                    page = int(rng.integers(256, PAGES))  # above 1 MiB: plain RAM
                    value = int(rng.integers(0, 3))
                    # 0: a page becomes zero; else data (a zero page becomes non-zero).
                    byte = 0 if value == 0 else int(rng.integers(1, 256))
                    qt.memset(page * PAGE_SIZE, PAGE_SIZE, byte)
                info = query_migrate(vm)
                assert info["status"] in ("setup", "active"), info
                rounds = sync_count(info)
            vm.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40, "downtime-limit": 300})
            final = wait_migration(vm, 300)
            result = future.result(timeout=300)
        finally:
            saver.close()
        memory = np.array(read_ram(ram_file))
    assert final["status"] == "completed"
    assert final["ram"]["dirty-sync-count"] >= 4
    assert (result.normal, result.duplicate) == (final["ram"]["normal"], final["ram"]["duplicate"])
    check_snapshot(Saved(result, final, blocks), channels)
    assert np.array_equal(read_ram(image_of(Saved(result, final, blocks), BLOCK)), memory)


# ------------------------------------------------------------ save -> restore


def restore_into(
    snapdir: Path,
    ram_file: Path,
    sockdir: Path,
    channels: int,
    mode: str,
    uri: str | None = None,
    **vm_args: Any,
) -> tuple[snap.RestoreResult, dict[str, Any], np.ndarray, np.ndarray]:
    """Restore into a fresh ``-incoming defer`` QEMU; return its RAM (before and after cont).

    ``uri`` (the destination's ``migrate-incoming``) defaults to a Unix socket in ``sockdir``.
    """
    empty_ram(ram_file)
    with QemuVM(ram_file, incoming_defer=True, **vm_args) as dst:
        assert query_status(dst) == "inmigrate"
        set_migration(dst, channels, mode)
        uri = uri or f"unix:{sockdir / 'restore.sock'}"
        migrate_incoming(dst, uri)
        uuid = bytes.fromhex(vm_args["uuid"].replace("-", "")) if "uuid" in vm_args else bytes(16)
        result = snap.restore(snapdir, uri, channels, zero_page_detection=mode, uuid=uuid)
        info = wait_migration(dst, 300)
        assert info["status"] == "completed"
        ram = np.array(read_ram(ram_file))  # before the guest runs and changes it
        allocated = allocated_pages(ram_file)
        assert query_status(dst) in ("prelaunch", "paused")  # the source was -S
        cont(dst)
        assert query_status(dst) == "running"
    return result, info, ram, allocated


def check_restore(
    result: snap.RestoreResult, mode: str, channels: int, ram: np.ndarray, alloc: np.ndarray
) -> None:
    data = ram.any(axis=1)
    assert result.channels == channels and result.zero_page_detection == mode
    total = PAGES + sum(b.length for b in result.blocks if b.idstr != BLOCK) // PAGE_SIZE
    # As a QEMU source with this detection mode counts (hole pages are zero pages).
    if mode == "none":
        assert result.duplicate == 0 and result.normal == total
    else:
        nonzero = int(data.sum()) + sum(b.data_pages for b in result.blocks if b.idstr != BLOCK)
        assert (result.normal, result.duplicate) == (nonzero, total - nonzero)
    # The destination's RAM file: QEMU 10 itself allocates every page of it on an
    # incoming migration (QEMU -> QEMU does the same), so only its content counts.
    assert alloc.size == ram.shape[0]


@pytest.mark.parametrize("mode", MODES)
def test_save_then_restore(workdir: Path, sockdir: Path, mode: str) -> None:
    """QEMU -> save -> restore into QEMU: completed, RAM equal, cont -> running."""
    src_file = workdir / "src.ram"
    make_guest(src_file, seed=500)
    with QemuVM(src_file) as vm:
        save_vm(vm, workdir / "snap", sockdir, 2, "multifd")
    result, _, ram, alloc = restore_into(workdir / "snap", workdir / "dst.ram", sockdir, 2, mode)
    assert np.array_equal(ram, read_ram(src_file))
    check_restore(result, mode, 2, ram, alloc)


@pytest.mark.parametrize(
    ("save_channels", "restore_channels", "mode"),
    [(4, 1, "multifd"), (0, 2, "legacy"), (1, 0, "none"), (2, 4, "legacy"), (0, 4, "multifd")],
)
def test_round_trip(
    workdir: Path, sockdir: Path, save_channels: int, restore_channels: int, mode: str
) -> None:
    """QEMU -> save (m channels) -> restore (n channels) -> QEMU, then QEMU -> QEMU again."""
    src_file = workdir / "src.ram"
    make_guest(src_file, seed=600 + save_channels, zero_fraction=0.7)
    with QemuVM(src_file) as vm:
        saved = save_vm(vm, workdir / "snap", sockdir, save_channels, "multifd")
    check_snapshot(saved, save_channels)
    uuid = "5f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b"
    result, _, ram, alloc = restore_into(
        workdir / "snap", workdir / "dst.ram", sockdir, restore_channels, mode, uuid=uuid
    )
    assert np.array_equal(ram, read_ram(src_file))
    check_restore(result, mode, restore_channels, ram, alloc)
    # The restored guest's RAM file now is guest RAM: save it again and compare.
    restored = workdir / "restored.ram"  # the restored RAM as it was before cont
    empty_ram(restored)
    with open(restored, "r+b") as f:
        for page in np.flatnonzero(ram.any(axis=1)):
            f.seek(int(page) * PAGE_SIZE)
            f.write(ram[page].tobytes())
    with QemuVM(restored) as vm2:
        again = save_vm(vm2, workdir / "snap2", sockdir, restore_channels, "legacy")
    check_snapshot(again, restore_channels)
    assert np.array_equal(read_ram(image_of(again, BLOCK)), read_ram(src_file))
    assert {b.idstr: b.data_pages for b in again.result.manifest.blocks} == {
        b.idstr: b.data_pages for b in saved.result.manifest.blocks
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


SOURCES = [(2, "multifd"), (2, "legacy"), (0, "legacy"), (1, "none"), (4, "multifd")]


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``snapshots(channels, mode)``: (Saved, source RAM file), saved once per module."""
    cache: dict[tuple[int, str], tuple[Saved, Path]] = {}

    def get(channels: int, mode: str) -> tuple[Saved, Path]:
        if (channels, mode) not in cache:
            work = tmp_path_factory.mktemp(f"save{channels}{mode}")
            ram_file = work / "src.ram"
            make_guest(ram_file, seed=800 + channels)
            with tempfile.TemporaryDirectory(prefix="snap-", dir="/tmp") as name:
                listen = "tcp:127.0.0.1:0" if channels == 4 else None
                with QemuVM(ram_file) as vm:
                    saved = save_vm(vm, work / "snap", Path(name), channels, mode, listen)
            cache[(channels, mode)] = (saved, ram_file)
        return cache[(channels, mode)]

    return get


@pytest.mark.parametrize(
    ("source", "channels", "mode"),
    [
        ((2, "legacy"), 2, "legacy"),
        ((0, "legacy"), 0, "legacy"),
        ((1, "none"), 1, "none"),
        ((4, "multifd"), 3, "multifd"),
        ((2, "multifd"), 0, "none"),
        ((2, "multifd"), 1, "legacy"),
    ],
)
def test_restore_matrix(
    snapshots: Any,
    workdir: Path,
    sockdir: Path,
    source: tuple[int, str],
    channels: int,
    mode: str,
) -> None:
    """Snapshots saved with other channel counts and modes, restored with others.

    The pairs :func:`test_save_then_restore` and :func:`test_round_trip` do not
    have: snapshots saved with ``legacy`` or ``none`` detection or 0 channels,
    restores with 0, 1 or 3 channels (3 over TCP). Counts are as a QEMU source
    with this memory would report them: with detection on at both ends, the
    saving QEMU's own.
    """
    saved, src_file = snapshots(*source)
    manifest = snap.load_manifest(saved.result.directory)
    uri = f"tcp:127.0.0.1:{free_port()}" if channels == 3 else None
    restored, _, ram, alloc = restore_into(
        Path(saved.result.directory), workdir / "dst.ram", sockdir, channels, mode, uri
    )
    # Guest RAM before the guest runs: exactly the snapshot (restore_into ran cont after).
    assert np.array_equal(ram, read_ram(src_file))
    check_restore(restored, mode, channels, ram, alloc)
    pages = manifest.ram_bytes // PAGE_SIZE
    data_pages = sum(b.data_pages for b in manifest.blocks)
    assert restored.normal + restored.duplicate == pages
    if mode == "none":
        assert restored.duplicate == 0
    else:
        assert restored.normal == data_pages
    if source[1] != "none" and mode != "none":
        info = saved.info
        assert (restored.normal, restored.duplicate) == (
            info["ram"]["normal"],
            info["ram"]["duplicate"],
        )
    assert restored.hole_pages >= pages - data_pages - 64


def test_restore_with_wrong_uuid_fails(workdir: Path, sockdir: Path) -> None:
    """The multifd handshake carries the destination's -uuid; QEMU refuses another one."""
    src_file = workdir / "src.ram"
    make_guest(src_file, seed=700)
    with QemuVM(src_file) as vm:
        save_vm(vm, workdir / "snap", sockdir, 2, "multifd")
    empty_ram(workdir / "dst.ram")
    uuid = "11111111-2222-3333-4444-555555555555"
    with QemuVM(workdir / "dst.ram", incoming_defer=True, uuid=uuid) as dst:
        set_migration(dst, 2, "multifd")
        uri = f"unix:{sockdir / 'restore.sock'}"
        migrate_incoming(dst, uri)
        with pytest.raises(Exception):  # noqa: B017 - any error: the channel is refused
            snap.restore(workdir / "snap", uri, 2, uuid=bytes(16), timeout=30)
        # A failed incoming migration ends the destination QEMU, with the reason.
        assert dst.proc.wait(timeout=60) != 0
        assert "uuid" in dst.stderr_text().lower(), dst.stderr_text()
