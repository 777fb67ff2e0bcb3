"""``multifd-zero sparsify`` against ``cp --sparse=always`` and ``fallocate --dig-holes``,
and the cost of the SIGBUS guard on mapped reads.

Usage::

    python benchmarks/bench_sparsify.py [--size-mib 1024] [--repeats 3] [--dir DIR]

Builds a file of ``--size-mib`` MiB of 4 KiB pages, half of them zero at random
places, the others random, fully written (no holes). Each run gets the same
conditions: the source's page cache warm, the target written and synced before
the timer starts (not timed). Then, in the same run:

- a sparse copy by ``sparsify SRC DST`` (in this process) and by ``cp
  --sparse=always SRC DST``;
- holes punched in place in a fresh copy by ``sparsify --in-place`` and by
  ``fallocate --dig-holes``;
- after each, ``cmp`` against the source and the data extents
  (``SEEK_DATA``/``SEEK_HOLE``) and ``du`` of the result compared;
- the floor: the same ``pwrite`` calls (one per run of data pages) and the
  same ``fallocate`` punches (one per run of zero pages), with the runs known
  in advance, no detection at all: what the file system costs whoever asks;
- the zero check of the mapped windows with the guard
  (``_kernels.mapped_page_mask``) and without (``zero_page_mask``).

A measurement, not a test: medians of ``--repeats`` runs, the load average
printed with them.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from multifd_zero import _kernels
from multifd_zero.tools.bench import cpu_name
from multifd_zero.tools.sparsify import _runs, sparsify

PS = 4096


def build(path: str, size: int) -> None:
    rng = np.random.default_rng(1)
    pages = size // PS
    zero = rng.random(pages) < 0.5
    with open(path, "wb") as f:
        for i in range(0, pages, 4096):
            block = rng.integers(0, 256, size=(min(4096, pages - i), PS), dtype=np.uint8)
            block[zero[i : i + 4096]] = 0
            f.write(block.tobytes())
        os.fsync(f.fileno())


def warm(path: str) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def data_map(path: str) -> list[tuple[int, int]]:
    out, fd = [], os.open(path, os.O_RDONLY)
    size, pos = os.fstat(fd).st_size, 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        out.append((start, end))
        pos = end
    os.close(fd)
    return out


def du(path: str) -> int:
    return int(subprocess.run(["du", "-k", path], capture_output=True, text=True,
                              check=True).stdout.split()[0])  # fmt: skip


def fresh_copy(src: str, dst: str) -> None:
    subprocess.run(["cp", "--sparse=never", src, dst], check=True)
    subprocess.run(["sync", dst], check=True)
    warm(dst)


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def page_runs(path: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(data runs, zero runs) as byte ranges, found before the floor is timed."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        mask = _kernels.mapped_page_mask(m, PS)
    assert mask is not None
    return (
        [(a * PS, b * PS) for a, b in _runs(mask, False)],
        [(a * PS, b * PS) for a, b in _runs(mask, True)],
    )


def write_floor(src: str, dst: str, data: list[tuple[int, int]]) -> None:
    fd = os.open(src, os.O_RDONLY)
    out = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o644)
    size = os.fstat(fd).st_size
    os.ftruncate(out, size)
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as m, memoryview(m) as view:
        for a, b in data:
            os.pwrite(out, view[a:b], a)
    os.close(out)
    os.close(fd)


def punch_floor(path: str, zero: list[tuple[int, int]]) -> None:
    fd = os.open(path, os.O_RDWR)
    for a, b in zero:
        _kernels.punch_hole(fd, a, b - a)
    os.close(fd)


def guard_cost(path: str, repeats: int) -> tuple[float, float]:
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    window = 64 << 20
    results: dict[str, list[float]] = {"guarded": [], "unguarded": []}
    for _ in range(repeats):
        for name in results:
            start = time.perf_counter()
            for off in range(0, size, window):
                with mmap.mmap(fd, min(window, size - off), access=mmap.ACCESS_READ,
                               offset=off) as m:  # fmt: skip
                    if name == "guarded":
                        _kernels.mapped_page_mask(m, PS)
                    else:
                        _kernels.zero_page_mask(m, PS)
            results[name].append(time.perf_counter() - start)
    os.close(fd)
    return statistics.median(results["guarded"]), statistics.median(results["unguarded"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    size = args.size_mib << 20
    work = tempfile.mkdtemp(prefix="bench-sparsify-", dir=args.dir)
    src, dst, target = (os.path.join(work, n) for n in ("src.img", "dst.img", "inplace.img"))
    build(src, size)
    warm(src)
    load0 = os.getloadavg()[0]
    names = ("sparsify", "cp", "floor: writes", "sparsify -i", "dig-holes", "floor: punches")
    t: dict[str, list[float]] = {k: [] for k in names}
    data_runs, zero_runs = page_runs(src)
    checks: dict[str, tuple[bool, list[tuple[int, int]], int]] = {}
    for _ in range(args.repeats):
        for name, run in (
            ("sparsify", lambda: sparsify(src, dst)),
            ("cp", lambda: subprocess.run(["cp", "--sparse=always", src, dst], check=True)),
            ("floor: writes", lambda: write_floor(src, dst, data_runs)),
        ):
            if os.path.exists(dst):
                os.unlink(dst)
            subprocess.run(["sync"], check=True)
            t[name].append(timed(run))
            same = subprocess.run(["cmp", "-s", src, dst]).returncode == 0
            checks[name] = (same, data_map(dst), du(dst))
        for name, run in (
            ("sparsify -i", lambda: sparsify(target)),
            ("dig-holes", lambda: subprocess.run(["fallocate", "-d", target], check=True)),
            ("floor: punches", lambda: punch_floor(target, zero_runs)),
        ):
            fresh_copy(src, target)
            t[name].append(timed(run))
            same = subprocess.run(["cmp", "-s", src, target]).returncode == 0
            checks[name] = (same, data_map(target), du(target))
    guarded, unguarded = guard_cost(src, max(args.repeats, 5))
    med = {k: statistics.median(v) for k, v in t.items()}
    print(f"sparsify benchmark: {args.size_mib} MiB file in {args.dir}, half of its 4 KiB pages "
          f"zero at random places; {cpu_name()}, {os.cpu_count()} CPUs, "
          f"simd={_kernels.get_simd()}, load {load0:.2f} -> {os.getloadavg()[0]:.2f}; "
          f"medians of {args.repeats} runs")  # fmt: skip
    print()
    print(f"{len(data_runs)} runs of data pages, {len(zero_runs)} runs of zero pages; "
          "ratio: the tool's time over this row's (above 1: this row is faster)")  # fmt: skip
    print()
    print("| tool | median s | GB/s | ratio | cmp | data extents as cp/fallocate | du KiB |")
    print("|---|---:|---:|---:|---|---|---:|")
    for ours, theirs, floor in (("sparsify", "cp", "floor: writes"),
                                ("sparsify -i", "dig-holes", "floor: punches")):  # fmt: skip
        for name in (ours, theirs, floor):
            same, _, kib = checks[name]
            ratio = f"x{med[theirs] / med[name]:.2f}"
            equal = "yes" if checks[ours][1] == checks[theirs][1] else "NO"
            print(f"| {name} | {med[name]:.3f} | {size / med[name] / 1e9:.2f} | {ratio} | "
                  f"{'same' if same else 'DIFFERENT'} | {equal} | {kib} |")  # fmt: skip
    print()
    print(f"SIGBUS guard on 64 MiB mapped windows: {guarded:.4f} s guarded, {unguarded:.4f} s "
          f"unguarded: {100 * (guarded / unguarded - 1):+.1f}% "
          f"({size / guarded / 1e9:.1f} vs {size / unguarded / 1e9:.1f} GB/s)")  # fmt: skip
    for path in (src, dst, target):
        if os.path.exists(path):
            os.unlink(path)
    os.rmdir(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
