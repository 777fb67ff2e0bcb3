"""The ``scan`` command: zero pages of files, block devices and memory dumps.

``multifd-zero scan PATH... [--page-size N] [--length N] [--map] [--json] [--no-progress]``

Prints, for each path, the pages, the zero pages and their share, what the
``multifd``, ``legacy`` and ``none`` zero-page-detection modes (and a precopy
migration without multifd) would put on the wire, and the scan speed; with
several paths, a total as well; with ``--map``, the runs of zero and data
pages. ``-`` reads standard input. Paths that cannot be scanned are reported
on stderr in one line each, the others are still scanned, and the exit status
is then 1.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from typing import Any

from .. import _kernels
from .._version import __version__
from ..tools.scan import ScanMethod, ScanResult, scan_file
from ._argtypes import add_json_option, page_size, size
from ._progress import tqdm_class

__all__ = ["register", "run"]

PROG = "multifd-zero scan"
GIB = 1024**3


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``scan`` command to the ``subparsers`` of the main parser.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        What ``ArgumentParser.add_subparsers`` returned.

    Returns
    -------
    argparse.ArgumentParser
        The ``scan`` parser.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "scan",
        help="count the zero pages of files, block devices or memory dumps",
        description=(
            "Count the pages and zero pages of each PATH (regular files, block "
            "devices, memory dumps; any size, in constant memory) and estimate what "
            "QEMU's multifd, legacy and none zero-page detection would put on the "
            "wire. A trailing partial page counts as one page padded with zeros, as "
            "QEMU rounds a RAM block up to whole pages. ELF core dumps (dump-guest-memory, "
            "virsh dump --memory-only) are scanned by guest physical address; disk images "
            "(qcow2, vmdk...), kdump-compressed dumps and migration streams are refused "
            "with a hint."
        ),
    )
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="files or devices to scan; - for stdin"
    )
    parser.add_argument(
        "--page-size",
        type=page_size,
        default=4096,
        help="a power of two from 1K to 2M",
        metavar="SIZE",
    )
    parser.add_argument(
        "--length",
        type=size,
        metavar="N",
        help="scan at most N bytes (e.g. 1G); needed for character devices such as /dev/zero",
    )
    parser.add_argument("--map", action="store_true", help="also list the zero and data extents")
    parser.add_argument(
        "--method",
        choices=("auto", "mmap", "read"),
        default="auto",
        help="mmap windows (skips holes) or sequential reads; auto: mmap if possible",
    )
    add_json_option(parser)
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (none when not a TTY)"
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``scan`` with parsed arguments; return the exit status (0, or 1 on errors)."""
    results: list[ScanResult] = []
    errors: list[dict[str, str]] = []
    show_progress = not args.no_progress and sys.stderr.isatty()
    for path in args.paths:
        try:
            result = _scan_one(path, args, show_progress)
        except (OSError, ValueError) as exc:
            message = _describe(exc, path)
            errors.append({"path": path, "error": message})
            print(f"{PROG}: error: {path}: {message}", file=sys.stderr)
            continue
        results.append(result)
        if not args.json:
            _print_result(result)
            if args.map:
                _print_map(result)
    total = _total(results, args.page_size)
    if args.json:
        document = {
            "multifd_zero": __version__,
            "simd": _kernels.get_simd(),
            "page_size": args.page_size,
            "files": [_entry(r, args.map) for r in results],
            "total": total,
            "errors": errors,
        }
        json.dump(document, sys.stdout, indent=2)
        print()
    elif len(results) > 1:
        _print_total(total)
    return 1 if errors else 0


def _entry(result: ScanResult, with_map: bool) -> dict[str, Any]:
    entry = result.as_dict()
    if with_map and result.extents is not None:
        entry["map"] = [e.as_dict() for e in result.extents]
    return entry


def _print_map(result: ScanResult) -> None:
    assert result.extents is not None
    print(f"  {'start':>18} {'length':>18}  {'':4}  {'file offset':>18}")
    for e in result.extents:
        offset = f"{e.offset:#18x}" if e.offset is not None else f"{'-':>18}"
        kind = "zero" if e.zero else "data"
        print(f"  {e.start:#18x} {e.length:#18x}  {kind}  {offset}")


def _scan_one(path: str, args: argparse.Namespace, show_progress: bool) -> ScanResult:
    method: ScanMethod = args.method
    options: dict[str, Any] = {
        "page_size": args.page_size,
        "method": method,
        "length": args.length,
        "extents": args.map,
    }
    if not show_progress:
        return scan_file(path, **options)
    tqdm = tqdm_class()
    total = _size_hint(path)
    with tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=os.path.basename(path) or path,
        leave=False,
        delay=0.5,
        dynamic_ncols=True,
        file=sys.stderr,
    ) as bar:
        return scan_file(path, progress=bar.update, **options)


def _size_hint(path: str) -> int | None:
    """The size for the progress bar: a regular file's or a block device's, else None.

    Pipes and character devices are not opened here: a second reader would
    take data from the scan.
    """
    try:
        info = os.stat(path)
        if stat.S_ISREG(info.st_mode):
            return info.st_size
        if stat.S_ISBLK(info.st_mode):
            with open(path, "rb", buffering=0) as f:
                return f.seek(0, os.SEEK_END)
    except OSError:
        pass  # scan_file reports the error
    return None


def _describe(exc: BaseException, path: str) -> str:
    """The message without the path, which the line already starts with."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for name in (path, "<stdin>"):
        text = text.removeprefix(f"{name}: ")
    return text


def _total(results: list[ScanResult], page_size: int) -> dict[str, Any]:
    pages = sum(r.pages for r in results)
    zero = sum(r.zero_pages for r in results)
    seconds = sum(r.seconds for r in results)
    size = sum(r.size for r in results)
    wire = {key: sum(r.wire_bytes[key] for r in results) for key in _MODES}
    return {
        "files": len(results),
        "size": size,
        "page_size": page_size,
        "pages": pages,
        "zero_pages": zero,
        "normal_pages": pages - zero,
        "zero_ratio": zero / pages if pages else 0.0,
        "wire_bytes": wire,
        "bytes_read": sum(r.bytes_read for r in results),
        "seconds": seconds,
        "gb_per_s": sum(r.bytes_read for r in results) / seconds / 1e9 if seconds > 0 else 0.0,
    }


_MODES = ("multifd", "legacy", "none", "precopy")
_MODE_NOTES = {
    "multifd": "zero pages as offsets in multifd packets",
    "legacy": "zero pages as 9-byte headers on the main channel",
    "none": "every page sent with its data",
    "precopy": "no multifd: legacy detection, 8-byte header per page",
}


def _human(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _print_counts(
    pages: int, zero: int, ratio: float, wire: dict[str, int], partial: int, page_size: int
) -> None:
    print(f"  pages:    {pages:>15,}  (page size {page_size})")
    print(f"  zero:     {zero:>15,}  ({ratio:.2%}; QEMU's 'duplicate')")
    print(f"  normal:   {pages - zero:>15,}")
    if partial:
        print(f"  the last page is partial ({partial} bytes), counted as a zero-padded page")
    none = wire["none"]
    print("  on the wire (estimate, see multifd_zero.tools.scan):")
    for mode in _MODES:
        share = f"{wire[mode] / none:7.2%}" if none else "      -"
        print(
            f"    {mode:<8} {wire[mode]:>17,} B  {_human(wire[mode]):>11}  "
            f"{share} of none  ({_MODE_NOTES[mode]})"
        )


def _print_result(r: ScanResult) -> None:
    print(f"{r.path}: {_human(r.size)} ({r.size:,} bytes)")
    _print_counts(
        r.pages, r.zero_pages, r.zero_ratio, r.wire_bytes, r.partial_page_bytes, r.page_size
    )
    kind = "" if r.format == "raw" else f", {r.format} core dump by guest address"
    if r.bytes_read == 0 and r.size:
        print(f"  scanned in {r.seconds:.3f} s: holes only, nothing read ({r.method}{kind})")
        return
    read = "" if r.bytes_read == r.size else f", {_human(r.bytes_read)} read, holes skipped"
    print(f"  scanned in {r.seconds:.3f} s: {r.gb_per_s:.2f} GB/s read ({r.method}{read}{kind})")


def _print_total(total: dict[str, Any]) -> None:
    print(f"total, {total['files']} files: {_human(total['size'])} ({total['size']:,} bytes)")
    _print_counts(
        total["pages"],
        total["zero_pages"],
        total["zero_ratio"],
        total["wire_bytes"],
        0,
        total["page_size"],
    )
    print(f"  scanned in {total['seconds']:.3f} s: {total['gb_per_s']:.2f} GB/s read")
