"""The ``sparsify`` command: zero pages become holes, in a copy or in place."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ..tools.sparsify import SparsifyResult, sparsify
from ._argtypes import add_json_option, page_size
from ._progress import tqdm_class

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``sparsify`` command to ``subparsers``."""
    parser = subparsers.add_parser(
        "sparsify",
        help="make zero pages holes: a sparse copy, or holes punched in place",
        description=(
            "Copy SRC to DST with every all-zero page left as a hole (like cp "
            "--sparse=always), or with --in-place punch a hole for every zero page of SRC "
            "(like fallocate --dig-holes). The content is unchanged; holes of SRC are "
            "skipped unread."
        ),
    )
    parser.add_argument("source", metavar="SRC", help="the file to read")
    parser.add_argument(
        "destination", metavar="DST", nargs="?", help="the copy to write (created or replaced)"
    )
    parser.add_argument(
        "--in-place", action="store_true", help="punch holes in SRC itself (no DST)"
    )
    parser.add_argument(
        "--page-size",
        type=page_size,
        default=4096,
        help="the unit of the zero check",
        metavar="SIZE",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_option(parser)
    parser.set_defaults(run=run, parser=parser)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _print(r: SparsifyResult) -> None:
    what = "holes punched in" if r.in_place else f"sparse copy {r.source} ->"
    print(f"{what} {r.destination}: {_human(r.size)}, {r.pages} pages of {r.page_size}")
    print(f"  zero pages (now holes): {r.zero_pages}  normal: {r.pages - r.zero_pages}")
    if r.in_place:
        print(f"  holes punched: {r.holes_punched}")
    else:
        print(f"  data written: {_human(r.bytes_written)}")
    print(f"  allocated: {_human(r.allocated_before)} -> {_human(r.allocated_after)}")
    print(f"  {r.seconds:.3f} s, {r.gb_per_s:.2f} GB/s")


def run(args: argparse.Namespace) -> int:
    """Run ``sparsify``; 0 on success (errors are handled by :func:`..main.main`)."""
    if args.in_place == (args.destination is not None):
        args.parser.error("give either DST or --in-place")
    bar: Any = None
    if not args.no_progress and not args.json and sys.stderr.isatty():
        tqdm = tqdm_class()
        try:
            total: int | None = os.path.getsize(args.source)
        except OSError:
            total = None  # sparsify reports it
        bar = tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
            desc="sparsify", dynamic_ncols=True, file=sys.stderr,
        )  # fmt: skip
    try:
        result = sparsify(
            args.source,
            args.destination,
            page_size=args.page_size,
            progress=bar.update if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        json.dump(result.as_dict(), sys.stdout, indent=2)
        print()
    else:
        _print(result)
    return 0
