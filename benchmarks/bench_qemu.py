"""Baseline figures: QEMU -> QEMU, QEMU -> save, restore -> QEMU, QEMU's mapped-ram file.

Run from the checkout, with the package installed and QEMU 10:
``python benchmarks/bench_qemu.py`` (``--size-mib``, ``--repeats``,
``--channels``). It drives QEMU with the tests' QMP harness
(``tests/support/qemu_vm.py``). Every row is the median of
``--repeats`` runs measured in this run; ratios compare rows of the same run.
Times are wall-clock from ``migrate`` to ``completed`` (QEMU's own
``total-time`` is printed beside it for QEMU sources). ``max-bandwidth`` is set
to 1 TiB/s: QEMU's default 128 MiB/s would be the figure otherwise.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.qemu_vm import (
    PAGE_SIZE,
    QemuVM,
    fill_ram,
    migrate,
    migrate_incoming,
    qemu_version,
    set_migration,
    wait_migration,
)

from multifd_zero import snapshot as snap


def empty(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def disk_bytes(path: Path) -> int:
    """Allocated bytes on disk (st_blocks), a file or a directory tree."""
    if path.is_file():
        return os.stat(path).st_blocks * 512
    return sum(os.stat(p).st_blocks * 512 for p in path.rglob("*") if p.is_file())


def qemu_to_qemu(src: Path, dst: Path, size: int, channels: int, sock: Path) -> float:
    empty(dst, size)
    with QemuVM(src) as a, QemuVM(dst, incoming_defer=True) as b:
        for vm in (a, b):
            set_migration(vm, channels, "multifd")
        migrate_incoming(b, f"unix:{sock}")
        start = time.perf_counter()
        migrate(a, f"unix:{sock}")
        wait_migration(b, 600)
        seconds = time.perf_counter() - start
        wait_migration(a, 600)
    sock.unlink(missing_ok=True)
    return seconds


def qemu_to_save(src: Path, directory: Path, channels: int, sock: Path) -> tuple[float, int]:
    assert snap is not None
    shutil.rmtree(directory, ignore_errors=True)
    with QemuVM(src) as vm:
        set_migration(vm, channels, "multifd")
        saver = snap.SnapshotSaver(directory, f"unix:{sock}", channels, timeout=600)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            start = time.perf_counter()
            future = pool.submit(saver.wait)
            migrate(vm, saver.uri)
            wait_migration(vm, 600)
            future.result(timeout=600)
            seconds = time.perf_counter() - start
        saver.close()
    return seconds, disk_bytes(directory)


def restore_to_qemu(directory: Path, dst: Path, size: int, channels: int, sock: Path) -> float:
    assert snap is not None
    empty(dst, size)
    with QemuVM(dst, incoming_defer=True) as b:
        set_migration(b, channels, "multifd")
        migrate_incoming(b, f"unix:{sock}")
        start = time.perf_counter()
        snap.restore(directory, f"unix:{sock}", channels, zero_page_detection="multifd")
        wait_migration(b, 600)
        seconds = time.perf_counter() - start
    sock.unlink(missing_ok=True)
    return seconds


def mapped_ram(src: Path, out: Path, channels: int) -> tuple[float, int]:
    out.unlink(missing_ok=True)
    with QemuVM(src) as vm:
        set_migration(vm, channels, "multifd", capabilities={"mapped-ram": True})
        start = time.perf_counter()
        migrate(vm, f"file:{out}")
        wait_migration(vm, 600)
        seconds = time.perf_counter() - start
    return seconds, disk_bytes(out)


def median(fn: Callable[[], float], repeats: int) -> float:
    return statistics.median(fn() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--zero", type=float, nargs="+", default=[0.5, 0.9])
    parser.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    args = parser.parse_args()
    size = args.size_mib << 20
    gb = size / 1e9
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if "Model name" in ln), "?"
    )
    print(f"QEMU {qemu_version()}, {os.cpu_count()} CPUs ({model}); guest {args.size_mib} MiB,")
    print(
        f"{args.channels} multifd channels, zero-page-detection multifd, median of {args.repeats}"
    )
    with tempfile.TemporaryDirectory(prefix="bq-", dir=args.dir or "/tmp") as name:
        work = Path(name)
        sock = work / "m.sock"
        src, dst = work / "src.ram", work / "dst.ram"
        for zero in args.zero:
            fill_ram(src, size, zero_fraction=zero, seed=1)
            data_bytes = disk_bytes(src)
            print(f"\n== {zero:.0%} zero pages ({data_bytes / 2**20:.0f} MiB of data) ==")
            print(f"{'row':40} {'s':>8} {'GB/s':>7} {'ratio':>7} {'disk MiB':>9}")
            qq = median(lambda: qemu_to_qemu(src, dst, size, args.channels, sock), args.repeats)
            print(f"{'QEMU -> QEMU':40} {qq:8.3f} {gb / qq:7.2f} {1.0:7.2f}")
            mr_runs = [
                mapped_ram(src, work / "mr.bin", args.channels) for _ in range(args.repeats)
            ]
            mr = statistics.median(t for t, _ in mr_runs)
            mr_disk = mr_runs[-1][1]
            print(
                f"{'QEMU migrate file: mapped-ram':40} {mr:8.3f} {gb / mr:7.2f} "
                f"{qq / mr:7.2f} {mr_disk / 2**20:9.1f}"
            )
            runs = [
                qemu_to_save(src, work / "snap", args.channels, sock) for _ in range(args.repeats)
            ]
            qs = statistics.median(t for t, _ in runs)
            snap_disk = runs[-1][1]
            print(
                f"{'QEMU -> save':40} {qs:8.3f} {gb / qs:7.2f} {qq / qs:7.2f} "
                f"{snap_disk / 2**20:9.1f}"
            )
            rq = median(
                lambda: restore_to_qemu(work / "snap", dst, size, args.channels, sock),
                args.repeats,
            )
            print(f"{'restore -> QEMU':40} {rq:8.3f} {gb / rq:7.2f} {qq / rq:7.2f}")
            print(
                f"snapshot / mapped-ram size on disk: {snap_disk / max(mr_disk, 1):.3f} "
                f"(RAM data {data_bytes / 2**20:.0f} MiB, page {PAGE_SIZE})"
            )
    print("\nratio = (QEMU -> QEMU time) / (row time): > 1 is faster than QEMU -> QEMU")


if __name__ == "__main__":
    main()
