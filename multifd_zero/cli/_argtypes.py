"""Argument types, options and report lines shared by the command-line modules.

Every command takes sizes the same way (``4096``, ``0x1000``, ``4K``, ``2M``,
``1GiB``) and checks bounds in the parser, so that a bad value is a usage
error (exit 2) naming the option before anything runs.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
from collections.abc import Callable
from typing import Any

from .. import _kernels
from ..options import MigrationOptions, ZeroPageDetection
from ..wire import MAX_PAGE_COUNT

MIB = 1024 * 1024

MAX_SIZE_MIB = 1 << 20
"""The largest ``--size-mib`` a synthetic guest may have: 1 TiB."""

_SUFFIXES = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with the defaults shown, wrapped to fit an 80-column page."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=min(80, _columns()), max_help_position=28)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        # Switches (False) and options without one (None) have no default to show,
        # and a help text that explains its default keeps its own words.
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


def _columns() -> int:
    return shutil.get_terminal_size().columns - 2  # COLUMNS, then the terminal, then 80


def size(text: str) -> int:
    """A byte count: ``4096``, ``0x1000``, ``4K``, ``2M``, ``1GiB``; at least 0."""
    cleaned = text.strip().lower().removesuffix("ib").removesuffix("b")
    scale = 1
    if cleaned[-1:] in _SUFFIXES:
        scale = _SUFFIXES[cleaned[-1]]
        cleaned = cleaned[:-1]
    try:
        value = int(cleaned, 0) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4096, 4K, 2M)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def page_size(text: str) -> int:
    """A page size, a power of two from 1 KiB to 2 MiB: ``4096``, ``0x1000``, ``4K``, ``2MiB``."""
    value = size(text)
    try:
        return int(_kernels.check_page_size(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _integer(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def int_range(low: int, high: int | None = None, note: str = "") -> Callable[[str], int]:
    """An int in ``[low, high]`` (no upper bound when ``high`` is None)."""

    def parse(text: str) -> int:
        value = _integer(text)
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bounds}{note}, got {text}")
        return value

    parse.__name__ = "int"  # argparse names the type in "invalid int value"
    return parse


positive = int_range(1)
"""An int of at least 1."""

random_seed = int_range(0, 2**32 - 1)
"""A random seed for numpy's generators: 0 to 2**32 - 1."""

size_mib = int_range(1, MAX_SIZE_MIB)
"""A synthetic guest's size in MiB: 1 to 1 TiB."""

page_count = int_range(1, MAX_PAGE_COUNT)
"""Pages per multifd packet: 1 to ``MAX_PAGE_COUNT``."""

channel_count = int_range(0, 255, " (0: multifd off)")
"""QEMU's ``multifd-channels``, or 0 for multifd off: 0 to 255."""

engine_channels = int_range(1, 255)
"""Multifd channels of our own engine: 1 to 255 (QEMU's limit)."""


def ratio(text: str) -> float:
    """A share between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def seconds(text: str) -> float:
    """A positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def output_file(text: str) -> str:
    """A file to write: its folder must exist and be writable (checked before the run)."""
    folder = os.path.dirname(os.path.abspath(text)) or "."
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text}: is a directory")
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"{text}: no such directory {folder}")
    if not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text}: cannot write in {folder}")
    return text


def add_json_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The ``--json`` switch every command with output has."""
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def add_migration_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add QEMU's migration parameters that the commands share."""
    parser.add_argument(
        "--zero-page-detection",
        choices=[m.value for m in ZeroPageDetection],
        default="multifd",
        help="where zero pages are detected",
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
