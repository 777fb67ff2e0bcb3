"""The ``bench`` command: the kernels against numpy, ``bytes ==`` and the read limit."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._argtypes import output_file, positive

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``bench`` command to ``subparsers``."""
    bench = subparsers.add_parser(
        "bench",
        help="benchmark the kernels against numpy and bytes == (a measurement, not a test)",
        description=(
            "Measure multifd_zero's kernels against numpy and a bytes == comparison "
            "in this process: ns per page, GB/s and ratios, medians of repeated runs."
        ),
    )
    bench.add_argument(
        "--region-mib", type=positive, default=1024, metavar="MIB", help="out-of-cache region"
    )
    bench.add_argument("--repeats", type=positive, default=7, help="runs per median", metavar="N")
    bench.add_argument("--quick", action="store_true", help="small sizes: check that it runs")
    bench.add_argument(
        "--json",
        metavar="FILE",
        type=output_file,
        help="also write the results to FILE as JSON (its folder is checked first)",
    )
    bench.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmarks and print the table; always 0."""
    from ..tools.bench import format_table, run_benchmarks, write_json  # numpy-heavy: on demand

    if sys.stderr.isatty():
        print("bench: measuring (Ctrl-C to stop)...", file=sys.stderr, flush=True)
    results = run_benchmarks(region_mib=args.region_mib, repeats=args.repeats, quick=args.quick)
    print(format_table(results))
    if args.json:
        write_json(args.json, results)
    return 0
