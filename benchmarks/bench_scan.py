"""``scan`` GB/s against ``cp --sparse=always`` and ``fallocate --dig-holes`` on one file.

Usage::

    python benchmarks/bench_scan.py [--size-mib 1024] [--repeats 5] [--quick]
                                    [--dir DIR] [--json FILE]

Builds a file of ``--size-mib`` MiB (default 1 GiB) of 4 KiB pages, half of them
zero (in long runs and alone), the other half random, fully written (no holes,
so that every tool has to read every byte), in ``--dir`` (default: the system
temporary directory; it must support holes). The page cache is warmed and
each tool then runs ``--repeats`` times; the table gives the median wall time
and GB/s (10**9 bytes of the file per second):

- ``scan_file`` in this process, through ``mmap`` windows and through ``readinto``;
- ``multifd-zero scan --json`` as a user runs it (a new interpreter each time,
  so its start-up, about 0.1 s, is included);
- ``cp --sparse=always SRC DST``: reads the file and writes a sparse copy
  (holes for zero blocks), so it also writes the non-zero half;
- ``fallocate --dig-holes COPY``: reads a copy and punches a hole for each zero
  block in place; each run gets a fresh non-sparse copy (not timed), because a
  second run would skip the holes of the first.

All of them find the same zero 4 KiB blocks; only ``scan`` stops there, the two
others also change a file. This is a measurement, not a test; other processes
on the machine change the figures, so the load average is printed with them.
``--quick`` runs 64 MiB twice, to check that it works.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import multifd_zero
from multifd_zero.tools.bench import write_json
from multifd_zero.tools.scan import scan_file

MIB = 1024 * 1024
PAGE = 4096


def build_file(path: Path, size: int, seed: int = 7) -> int:
    """Write the mixed file; return its number of zero pages."""
    rng = np.random.default_rng(seed)
    pages = size // PAGE
    zero = rng.random(pages) < 0.25  # scattered zero pages...
    for start in rng.integers(0, pages, size=max(1, pages // 4096)):  # ...and zero runs
        zero[start : start + rng.integers(256, 2048)] = True
    # Top up (or trim) to half zero pages, so the figures do not depend on the seed.
    want = pages // 2
    have = int(zero.sum())
    if have < want:
        zero[rng.choice(np.flatnonzero(~zero), want - have, replace=False)] = True
    elif have > want:
        zero[rng.choice(np.flatnonzero(zero), have - want, replace=False)] = False
    chunk = 16384
    with open(path, "wb") as f:
        for first in range(0, pages, chunk):
            z = zero[first : first + chunk]
            block = rng.integers(0, 256, size=(z.size, PAGE), dtype=np.uint8)
            block[:, 0] |= 1  # never all zero by chance
            block[z] = 0
            f.write(block.tobytes())
        f.flush()
        os.fsync(f.fileno())
    return int(zero.sum())


def warm(path: Path) -> None:
    """Read the file once so that it sits in the page cache."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(8 * MIB)
        while f.readinto(buf):
            pass


def timed(
    run: Callable[[], object], prepare: Callable[[], object] | None, repeats: int
) -> list[float]:
    times = []
    for _ in range(repeats):
        if prepare is not None:
            prepare()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def run_benchmarks(size: int, repeats: int, directory: str | None) -> dict[str, Any]:
    cp = shutil.which("cp")
    fallocate = shutil.which("fallocate")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-scan-", dir=directory) as name:
        work = Path(name)
        src = work / "mixed.img"
        zero_pages = build_file(src, size)
        warm(src)
        expected = scan_file(src)
        assert expected.zero_pages == zero_pages, (expected.zero_pages, zero_pages)

        rows: list[dict[str, Any]] = []

        def add(tool: str, what: str, times: list[float]) -> None:
            median = statistics.median(times)
            rows.append(
                {
                    "tool": tool,
                    "what": what,
                    "median_s": median,
                    "best_s": min(times),
                    "gb_per_s": size / median / 1e9,
                    "runs": len(times),
                }
            )

        def check_scan(method: str) -> Callable[[], object]:
            def go() -> None:
                r = scan_file(src, method=method)  # type: ignore[arg-type]
                assert r.zero_pages == zero_pages

            return go

        add(
            "scan (mmap)",
            "scan_file, 64 MiB mmap windows",
            timed(check_scan("mmap"), None, repeats),
        )
        add("scan (read)", "scan_file, readinto 1 MiB", timed(check_scan("read"), None, repeats))

        env = {k: v for k, v in os.environ.items() if k != "MULTIFD_ZERO_SIMD"}

        def cli() -> None:
            proc = subprocess.run(
                [sys.executable, "-m", "multifd_zero", "scan", "--json", str(src)],
                capture_output=True,
                text=True,
                check=True,
                cwd=work,
                env=env,
            )
            assert json.loads(proc.stdout)["files"][0]["zero_pages"] == zero_pages

        add(
            "multifd-zero scan",
            "the command, interpreter start-up included",
            timed(cli, None, repeats),
        )

        dst = work / "copy.img"
        if cp is not None:

            def clear_dst() -> None:
                dst.unlink(missing_ok=True)

            def cp_sparse() -> None:
                subprocess.run([cp, "--sparse=always", str(src), str(dst)], check=True)

            add(
                "cp --sparse=always",
                "reads, writes a sparse copy",
                timed(cp_sparse, clear_dst, repeats),
            )
            holes = size - os.stat(dst).st_blocks * 512
            assert holes >= zero_pages * PAGE * 0.9, "cp did not make the zero pages holes"

        if fallocate is not None:
            dig = work / "dig.img"

            def fresh_copy() -> None:
                dig.unlink(missing_ok=True)
                with open(src, "rb") as fin, open(dig, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 8 * MIB)
                    fout.flush()
                    os.fsync(fout.fileno())

            def dig_holes() -> None:
                subprocess.run([fallocate, "--dig-holes", str(dig)], check=True)

            add(
                "fallocate --dig-holes",
                "reads a fresh copy, punches holes in place",
                timed(dig_holes, fresh_copy, repeats),
            )
            holes = size - os.stat(dig).st_blocks * 512
            assert holes >= zero_pages * PAGE * 0.9, "fallocate did not punch the zero pages"

    scan_median = rows[0]["median_s"]
    for row in rows:
        row["vs_scan_mmap"] = row["median_s"] / scan_median
    return {
        "multifd_zero": multifd_zero.__version__,
        "simd": multifd_zero.get_simd(),
        "size_bytes": size,
        "zero_pages": zero_pages,
        "pages": size // PAGE,
        "repeats": repeats,
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "rows": rows,
    }


def format_table(results: dict[str, Any]) -> str:
    size_mib = results["size_bytes"] // MIB
    lines = [
        f"scan benchmark: {size_mib} MiB file, {results['zero_pages']} of {results['pages']} "
        f"4 KiB pages zero, page cache warm, median of {results['repeats']} runs, "
        f"simd={results['simd']}, {results['cpus']} CPUs, load "
        f"{results['load_before'][0]:.2f} -> {results['load_after'][0]:.2f}",
        "",
        f"| {'tool':<22} | {'median s':>9} | {'GB/s':>6} | {'x scan time':>11} | what |",
        f"|{'-' * 24}|{'-' * 11}:|{'-' * 7}:|{'-' * 12}:|------|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['tool']:<22} | {row['median_s']:>9.3f} | {row['gb_per_s']:>6.2f} | "
            f"{row['vs_scan_mmap']:>11.2f} | {row['what']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=1024, help="file size (default 1024)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per tool (default 5)")
    parser.add_argument("--quick", action="store_true", help="64 MiB, 2 runs: check that it works")
    parser.add_argument("--dir", help="where to put the files (default: the temporary directory)")
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE as JSON")
    args = parser.parse_args(argv)
    size_mib, repeats = (64, 2) if args.quick else (args.size_mib, args.repeats)
    if size_mib < 1 or repeats < 1:
        parser.error("--size-mib and --repeats must be at least 1")
    results = run_benchmarks(size_mib * MIB, repeats, args.dir)
    print(format_table(results))
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
