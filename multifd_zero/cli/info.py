"""The ``info`` command: the version, the CPU and the zero-check paths."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .. import _kernels
from .._version import __version__
from ..tools.bench import cpu_name
from ._argtypes import add_json_option

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``info`` command to ``subparsers``."""
    info = subparsers.add_parser(
        "info",
        help="print the version, the CPU and the zero-check path in use",
        description="Print the version, the CPU and the active and available SIMD paths.",
    )
    add_json_option(info)
    info.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the version, the CPU and the SIMD paths; always 0."""
    if args.json:
        data = {
            "multifd_zero": __version__,
            "cpu": cpu_name(),
            "simd": _kernels.get_simd(),
            "simd_paths": list(_kernels.simd_paths()),
        }
        json.dump(data, sys.stdout, indent=2)
        print()
        return 0
    print(f"multifd_zero {__version__}")
    print(f"cpu: {cpu_name()}")
    print(f"simd: {_kernels.get_simd()} (available: {', '.join(_kernels.simd_paths())})")
    return 0
