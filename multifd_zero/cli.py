"""The command line: ``python -m multifd_zero`` or ``multifd-zero``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import __version__, _kernels, cli_migrate, cli_scan
from ._argtypes import MIB, add_migration_options, migration_options
from ._argtypes import page_size as _page_size
from ._argtypes import positive as _positive
from ._argtypes import ratio as _ratio
from .demo import run_demo


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser (also used to document the command line)."""
    parser = argparse.ArgumentParser(
        prog="multifd-zero",
        description="QEMU's multifd zero-page detection, from Python.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--simd",
        choices=("best", *_kernels.simd_paths()),
        help="zero-check path to use (default: the fastest this CPU has)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="migrate a synthetic RAM block batch by batch and verify the destination",
        description=(
            "Build a synthetic guest RAM block, run zero-page detection on it in "
            "batches as QEMU's multifd channels do, apply every batch to a fresh "
            "destination block, verify that the destination equals the source, "
            "and print the stats and the throughput."
        ),
    )
    demo.add_argument("--size-mib", type=_positive, default=256, help="RAM size (default 256)")
    demo.add_argument("--page-size", type=_page_size, default=4096, help="target page size")
    demo.add_argument("--zero-ratio", type=_ratio, default=0.5, help="share of zero pages")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--rounds", type=_positive, default=2, help="dirty rounds (default 2)")
    demo.add_argument(
        "--dirty-ratio", type=_ratio, default=0.1, help="share of pages dirtied per round"
    )
    add_migration_options(demo)
    demo.add_argument("--json", action="store_true", help="print the result as JSON")
    sub.add_parser(
        "info",
        help="print the version, the CPU and the zero-check path in use",
        description="Print the version, the CPU and the active and available SIMD paths.",
    )
    bench = sub.add_parser(
        "bench",
        help="benchmark the kernels against numpy and bytes == (a measurement, not a test)",
        description=(
            "Measure multifd_zero's kernels against numpy and a bytes == comparison "
            "in this process: ns per page, GB/s and ratios, medians of repeated runs."
        ),
    )
    bench.add_argument("--region-mib", type=_positive, default=1024, help="out-of-cache region")
    bench.add_argument("--repeats", type=_positive, default=7, help="runs per median")
    bench.add_argument("--quick", action="store_true", help="small sizes: check that it runs")
    bench.add_argument("--json", metavar="FILE", help="also write the results to FILE as JSON")
    cli_scan.register(sub)
    cli_migrate.register(sub)
    return parser


def _print_demo(result: dict[str, object]) -> None:
    qm = result["query_migrate"]
    assert isinstance(qm, dict)
    size_mib = int(result["size_bytes"]) // MIB  # type: ignore[call-overload]
    print(
        f"multifd_zero {__version__} demo: {size_mib} MiB guest RAM, "
        f"page size {result['page_size']}, {result['rounds']} round(s), "
        f"zero-page-detection={result['zero_page_detection']}, "
        f"postcopy-ram={'on' if result['postcopy_ram'] else 'off'}, simd={_kernels.get_simd()}"
    )
    print(f"  batches sent:          {result['batches']}")
    print(f"  pages sent:            {result['pages_sent']}")
    print(f"  normal (query-migrate): {qm['normal']}")
    print(f"  duplicate (zero pages): {qm['duplicate']}")
    print(f"  normal-bytes:          {qm['normal-bytes']}")
    written = result["zero_pages_written_on_destination"]
    print(f"  zero pages written on the destination: {written}")
    print(f"  pages marked received: {result['received_pages']}")
    print(
        f"  detection: {result['detect_seconds']:.3f} s, "
        f"{result['detect_gb_per_s']:.2f} GB/s of guest RAM scanned"
    )
    print(
        f"  end to end: {result['total_seconds']:.3f} s, "
        f"{result['total_gb_per_s']:.2f} GB/s (detect, copy, apply)"
    )
    verdict = "OK, destination equals source" if result["verified"] else "MISMATCH"
    print(f"  verify: {verdict} (sha256 {str(result['destination_sha256'])[:16]}...)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    if args.simd:
        _kernels.set_simd(args.simd)
    if args.command == "migrate":
        return cli_migrate.run(args)
    if args.command == "scan":
        return cli_scan.run(args)
    if args.command == "demo":
        options = migration_options(args)
        result = run_demo(
            size=args.size_mib * MIB,
            page_size=args.page_size,
            zero_ratio=args.zero_ratio,
            seed=args.seed,
            rounds=args.rounds,
            dirty_ratio=args.dirty_ratio,
            options=options,
        ).as_dict()
        if args.json:
            json.dump(result, sys.stdout, indent=2)
            print()
        else:
            _print_demo(result)
        return 0 if result["verified"] else 1
    if args.command == "info":
        from .bench import cpu_name

        print(f"multifd_zero {__version__}")
        print(f"cpu: {cpu_name()}")
        print(f"simd: {_kernels.get_simd()} (available: {', '.join(_kernels.simd_paths())})")
        return 0
    if args.command == "bench":
        from .bench import format_table, run_benchmarks, write_json

        results = run_benchmarks(
            region_mib=args.region_mib, repeats=args.repeats, quick=args.quick
        )
        print(format_table(results))
        if args.json:
            write_json(args.json, results)
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands
