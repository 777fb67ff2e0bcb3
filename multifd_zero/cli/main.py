"""The command line: ``python -m multifd_zero`` or ``multifd-zero``, one module per command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .. import _kernels
from .._version import __version__
from . import bench, demo, info, migrate, restore, save, scan

_COMMANDS = (save, restore, demo, migrate, scan, bench, info)


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
    for command in _COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    if args.simd:
        _kernels.set_simd(args.simd)
    status: int = args.run(args)
    return status
