"""Argument types, options and report lines shared by the command-line modules."""

from __future__ import annotations

import argparse
from typing import Any

from .. import _kernels
from ..options import MigrationOptions, ZeroPageDetection

MIB = 1024 * 1024


_SUFFIXES = {"k": 1024, "m": 1024**2}


def page_size(text: str) -> int:
    """A page size, a power of two from 1 KiB to 2 MiB: ``4096``, ``0x1000``, ``4K``, ``2MiB``."""
    cleaned = text.strip().lower().removesuffix("ib").removesuffix("b")
    scale = 1
    if cleaned[-1:] in _SUFFIXES:
        scale = _SUFFIXES[cleaned[-1]]
        cleaned = cleaned[:-1]
    try:
        return int(_kernels.check_page_size(int(cleaned, 0) * scale))
    except ValueError as exc:
        message = str(exc) if cleaned.strip().lstrip("-").isdigit() else f"not a size: {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def ratio(text: str) -> float:
    """A share between 0 and 1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def positive(text: str) -> int:
    """An int of at least 1."""
    value = int(text, 0)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def seconds(text: str) -> float:
    """A positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def channel_count(text: str) -> int:
    """QEMU's ``multifd-channels``, or 0 for multifd off: 0 to 255."""
    value = int(text, 0)
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f"must be from 0 (multifd off) to 255, got {text}")
    return value


def add_migration_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add QEMU's migration parameters that the commands share."""
    parser.add_argument(
        "--zero-page-detection",
        choices=[m.value for m in ZeroPageDetection],
        default="multifd",
        help="where zero pages are detected (default multifd)",
    )
    parser.add_argument("--postcopy-ram", action="store_true", help="enable postcopy-ram")


def migration_options(args: argparse.Namespace) -> MigrationOptions:
    """The options that :func:`add_migration_options` parsed."""
    return MigrationOptions(
        zero_page_detection=args.zero_page_detection, postcopy_ram=args.postcopy_ram
    )


def verify_line(result: dict[str, Any]) -> str:
    """The report's last line: whether the destination's hash equals the source's."""
    verdict = "OK, destination equals source" if result["verified"] else "MISMATCH"
    return f"  verify: {verdict} (sha256 {str(result['destination_sha256'])[:16]}...)"
