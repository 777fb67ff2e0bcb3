"""QEMU's multifd zero-page detection, for Python.

The source side splits a batch of guest pages into normal pages and zero pages
(:func:`send_zero_page_detect`); the destination side applies zero pages with
the receivedmap and the postcopy rule (:func:`recv_zero_page_process`). Both
run on compiled kernels that release the GIL, so several channels can run on
threads at once. :func:`migrate` runs a whole migration of a RAM block over N
channels in QEMU's wire format (in-process, loopback TCP or Unix sockets).

The zero-check path (``portable``, ``sse2``, ``avx2``, ``avx512``) is chosen at
import for this CPU; the environment variable ``MULTIFD_ZERO_SIMD`` or
:func:`set_simd` selects another. A ``MULTIFD_ZERO_SIMD`` that names no path
this CPU runs does not fail the import: it is ignored with one
:class:`SimdWarning` (a ``RuntimeWarning``) and the best path stays, so a
typo in the environment cannot break a program that imports the library;
:func:`set_simd` with a bad name raises ``ValueError``.
"""

from __future__ import annotations

import importlib
import os
import warnings

try:
    importlib.import_module(f"{__name__}._kernels")
except ModuleNotFoundError as exc:  # pragma: no cover - only in an unbuilt checkout
    if exc.name != f"{__name__}._kernels":
        raise
    raise ImportError(
        f"multifd_zero's compiled kernels are not built in {os.path.dirname(__file__)} "
        "(imported from a source checkout?): run `pip install -e .` there, or import "
        "the installed package from another directory"
    ) from None

from ._kernels import (
    MAX_PAGE_SIZE,
    MIN_PAGE_SIZE,
    get_simd,
    is_zero,
    partition_batches,
    partition_zero_pages,
    scan_zero_pages,
    set_simd,
    simd_paths,
    zero_page_mask,
)
from ._version import __version__
from .errors import MigrationError, PacketError, SimdWarning
from .migration import MigrationResult, migrate
from .multifd_zero_page import recv_normal_pages, recv_zero_page_process, send_zero_page_detect
from .options import MigrationOptions, ZeroPageDetection
from .pages import MULTIFD_PACKET_SIZE, MultiFDPages, multifd_ram_page_count
from .ram import recv_legacy_zero_pages, save_zero_pages
from .ramblock import RAMBlock, ReceivedMap
from .stats import MigrationStats


def _simd_from_environment() -> None:
    """Apply ``MULTIFD_ZERO_SIMD``; a name this CPU or build lacks warns and keeps the best."""
    name = os.environ.get("MULTIFD_ZERO_SIMD")
    if not name:
        return
    try:
        set_simd(name)
    except ValueError as exc:
        # Explicit, so that the warning is one line naming the variable, not a
        # line of whoever imported the package.
        warnings.warn_explicit(
            f"ignored, using {get_simd()}: {exc}", SimdWarning, "MULTIFD_ZERO_SIMD", 0
        )


_simd_from_environment()

__all__ = [
    "MAX_PAGE_SIZE",
    "MIN_PAGE_SIZE",
    "MULTIFD_PACKET_SIZE",
    "MigrationError",
    "MigrationOptions",
    "MigrationResult",
    "MigrationStats",
    "MultiFDPages",
    "PacketError",
    "RAMBlock",
    "ReceivedMap",
    "SimdWarning",
    "ZeroPageDetection",
    "__version__",
    "get_simd",
    "is_zero",
    "migrate",
    "multifd_ram_page_count",
    "partition_batches",
    "partition_zero_pages",
    "recv_legacy_zero_pages",
    "recv_normal_pages",
    "recv_zero_page_process",
    "save_zero_pages",
    "scan_zero_pages",
    "send_zero_page_detect",
    "set_simd",
    "simd_paths",
    "zero_page_mask",
]
