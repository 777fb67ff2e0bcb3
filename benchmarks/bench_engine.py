"""Engine throughput: GB/s of guest RAM migrated, multifd vs legacy detection.

Usage::

    python benchmarks/bench_engine.py [--size-mib 1024] [--repeats 5] [--quick]
                                      [--transports inprocess,tcp] [--channels 1,2,4]
                                      [--zero-ratios 0,0.5,0.9] [--json FILE]

For each zero-page ratio a synthetic guest RAM block of ``--size-mib`` MiB is
built (``demo.make_guest_ram``: random pages and single-byte pages between
the zero ones). It is then migrated with :func:`multifd_zero.migrate` in one
round (every page once) for each transport, channel count and detection mode
(``multifd``: zero pages found by the sender channels; ``legacy``: by the
queueing thread, sent as 9-byte records on the main channel), ``--repeats``
times, the two modes alternating run by run; the table gives the median GB/s
(10**9 bytes of guest RAM per second, from the first byte sent to the
destination's completion). Detection alone (no transfer) is measured too:
``send_zero_page_detect`` per batch on one and two threads, and
``save_zero_pages`` per batch on one.

The destination is fresh private anonymous memory, as QEMU's guest RAM: in
this process for ``inprocess``, in a separate destination process reached
over loopback for ``tcp``. The first run of every configuration is verified:
the destination's SHA-256 (computed where it lives, after the timed part)
must equal the source's.

At the end the multifd/legacy ratio at 2 channels on the 90%-zero block is
printed for each transport. This is a measurement, not a test; other
processes on the machine change the figures, so the load average is printed
with them. ``--quick`` runs 32 MiB once per configuration, to check that it
works.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import threading
import time
from typing import Any

import numpy as np

import multifd_zero
from multifd_zero import (
    MigrationOptions,
    MigrationStats,
    MultiFDPages,
    RAMBlock,
    ZeroPageDetection,
    migrate,
    save_zero_pages,
    send_zero_page_detect,
)
from multifd_zero.guest import make_guest_ram
from multifd_zero.tools.bench import write_json

MIB = 1024 * 1024
MODES = ("multifd", "legacy")


def _csv(kind: type, text: str) -> list[Any]:
    return [kind(item) for item in text.split(",") if item]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="block size (default 1024)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per median (default 5)")
    parser.add_argument("--transports", default="inprocess,tcp", help="comma-separated")
    parser.add_argument("--channels", default="1,2,4", help="comma-separated channel counts")
    parser.add_argument("--zero-ratios", default="0,0.5,0.9", help="comma-separated ratios")
    parser.add_argument("--quick", action="store_true", help="32 MiB, one run: a smoke run")
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE")
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mib, args.repeats = 32, 1
    return args


def run_one(
    block: RAMBlock, transport: str, mode: str, channels: int, verify: str | None
) -> float:
    """One migration; returns GB/s. With ``verify`` (the source's SHA-256), checks the copy."""
    result = migrate(
        block,
        None,
        channels=channels,
        options=MigrationOptions(zero_page_detection=ZeroPageDetection(mode)),
        transport=transport,
        checksum=verify is not None,
        timeout=120,
    )
    if verify is not None and result.destination_sha256 != verify:
        raise SystemExit(f"destination differs from the source ({transport}, {mode}, {channels})")
    return result.gb_per_s


def detect_only(block: RAMBlock, threads: int, mode: str, page_count: int = 128) -> float:
    """Detection alone, GB/s: every batch through the mode's detection call, no transfer.

    ``multifd``: ``send_zero_page_detect`` on each batch, the batches split over
    ``threads`` threads (as the sender channels do). ``legacy``:
    ``save_zero_pages`` on each batch in one thread (the queueing thread).
    """
    offsets = np.arange(block.num_pages, dtype=np.uint64) * np.uint64(block.page_size)
    batches = [offsets[i : i + page_count] for i in range(0, offsets.size, page_count)]
    options = MigrationOptions(zero_page_detection=ZeroPageDetection(mode))
    stats = MigrationStats()

    def work(part: list[Any]) -> None:
        for batch in part:
            if mode == "legacy":
                save_zero_pages(block, batch, options=options, stats=stats)
            else:
                send_zero_page_detect(MultiFDPages(block, batch), options=options, stats=stats)

    workers = [threading.Thread(target=work, args=(batches[k::threads],)) for k in range(threads)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return block.used_length / (time.perf_counter() - start) / 1e9


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every configuration; one result dict each."""
    results = []
    size = args.size_mib * MIB
    for ratio in _csv(float, args.zero_ratios):
        start = time.perf_counter()
        ram = make_guest_ram(size, zero_ratio=ratio, seed=1)
        block = RAMBlock("pc.ram", ram)
        digest = hashlib.sha256(ram.data).hexdigest()
        print(
            f"# {args.size_mib} MiB block, {ratio:.0%} zero pages, built in "
            f"{time.perf_counter() - start:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        for mode, threads in (("multifd", 1), ("multifd", 2), ("legacy", 1)):
            speeds = [detect_only(block, threads, mode) for _ in range(args.repeats)]
            results.append(
                {
                    "zero_ratio": ratio,
                    "transport": "detection only",
                    "channels": threads,
                    "mode": mode,
                    "gb_per_s": statistics.median(speeds),
                    "runs": speeds,
                }
            )
        for transport in _csv(str, args.transports):
            for channels in _csv(int, args.channels):
                # The modes alternate run by run, so that a change in the machine's
                # load hits both alike and their ratio stays meaningful.
                by_mode: dict[str, list[float]] = {mode: [] for mode in MODES}
                for i in range(args.repeats):
                    for mode in MODES:
                        check = digest if i == 0 else None
                        by_mode[mode].append(run_one(block, transport, mode, channels, check))
                for mode in MODES:
                    results.append(
                        {
                            "zero_ratio": ratio,
                            "transport": transport,
                            "channels": channels,
                            "mode": mode,
                            "gb_per_s": statistics.median(by_mode[mode]),
                            "runs": by_mode[mode],
                        }
                    )
                    print(
                        f"#   {transport:9s} {channels} ch {mode:7s} "
                        + " ".join(f"{x:.2f}" for x in by_mode[mode]),
                        file=sys.stderr,
                        flush=True,
                    )
        del block, ram
    return results


def _find(results: list[dict[str, Any]], **key: Any) -> float | None:
    for item in results:
        if all(item[k] == v for k, v in key.items()):
            return float(item["gb_per_s"])
    return None


def format_table(results: list[dict[str, Any]], size_mib: int) -> str:
    """The results as a text table, then the multifd/legacy ratios at 2 channels, 90% zero."""
    lines = [
        f"multifd_zero {multifd_zero.__version__} engine, {size_mib} MiB block, "
        f"{os.cpu_count()} CPUs, simd={multifd_zero.get_simd()}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        "GB/s of guest RAM (median); ratio = multifd / legacy",
        "",
        f"{'zero':>5} {'transport':>9} {'ch':>3} {'multifd':>8} {'legacy':>8} {'ratio':>6}",
    ]
    keys = sorted(
        {
            (r["zero_ratio"], r["transport"], r["channels"])
            for r in results
            if r["transport"] != "detection only"
        },
        key=lambda k: (k[1] != "inprocess", k[1], k[0], k[2]),
    )
    for ratio, transport, channels in keys:
        multifd = _find(
            results, zero_ratio=ratio, transport=transport, channels=channels, mode="multifd"
        )
        legacy = _find(
            results, zero_ratio=ratio, transport=transport, channels=channels, mode="legacy"
        )
        quotient = f"{multifd / legacy:6.2f}" if multifd and legacy else f"{'-':>6}"
        lines.append(
            f"{ratio:>5.0%} {transport:>9} {channels:>3} {multifd or 0:>8.2f} "
            f"{legacy or 0:>8.2f} {quotient}"
        )
    lines.append("")
    lines.append("Detection alone (no transfer), GB/s: multifd = send_zero_page_detect per batch")
    lines.append("on 1 or 2 threads, legacy = save_zero_pages per batch on one thread")
    lines.append(f"{'zero':>5} {'multifd 1':>10} {'multifd 2':>10} {'2/1':>5} {'legacy':>8}")
    for ratio in sorted({r["zero_ratio"] for r in results if r["transport"] == "detection only"}):
        one = (
            _find(
                results, zero_ratio=ratio, transport="detection only", channels=1, mode="multifd"
            )
            or 0.0
        )
        two = (
            _find(
                results, zero_ratio=ratio, transport="detection only", channels=2, mode="multifd"
            )
            or 0.0
        )
        legacy = (
            _find(results, zero_ratio=ratio, transport="detection only", channels=1, mode="legacy")
            or 0.0
        )
        scale = f"{two / one:5.2f}" if one else f"{'-':>5}"
        lines.append(f"{ratio:>5.0%} {one:>10.2f} {two:>10.2f} {scale} {legacy:>8.2f}")
    lines.append("")
    for transport in sorted({r["transport"] for r in results} - {"detection only"}):
        multifd = _find(results, zero_ratio=0.9, transport=transport, channels=2, mode="multifd")
        legacy = _find(results, zero_ratio=0.9, transport=transport, channels=2, mode="legacy")
        if multifd and legacy:
            lines.append(
                f"multifd/legacy at 2 channels, 90% zero, {transport}: {multifd / legacy:.2f} "
                f"({multifd:.2f} vs {legacy:.2f} GB/s)"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    results = run(args)
    print(format_table(results, args.size_mib))
    if args.json:
        write_json(
            args.json,
            {"size_mib": args.size_mib, "loadavg": os.getloadavg(), "results": results},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
