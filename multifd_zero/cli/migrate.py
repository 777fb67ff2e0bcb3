"""The ``migrate`` command: a source and a destination process over N channels.

``python -m multifd_zero migrate`` (or ``multifd-zero migrate``) migrates a
RAM image file (``--image``) or a synthetic guest RAM block to a destination
process over loopback TCP or a Unix socket (or threads, ``--transport
inprocess``), one connection per multifd channel plus the main channel. Round
1 sends every page; each further round first lets the "guest" dirty a share
of the pages (half of them zeroed, half written) and sends those. At the end
the destination hashes its memory where it lives and the command compares
that with the source's hash. Exit status 0 when they match, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import MigrationError, PacketError
from ..guest import dirty_rounds, make_guest_ram
from ..migration.engine import MigrationResult, migrate
from ..migration.transport import TRANSPORTS
from ..ramblock import RAMBlock
from ..tools.scan import read_image
from ._argtypes import (
    MIB,
    add_json_option,
    add_migration_options,
    engine_channels,
    migration_options,
    page_count,
    positive,
    random_seed,
    ratio,
    seconds,
    size_mib,
    verify_line,
)
from ._argtypes import page_size as _page_size
from ._progress import tqdm_class
from ._tls import add_tls_options, tls_config

__all__ = ["register", "run"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``migrate`` command to ``subparsers`` (from ``add_subparsers``)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "migrate",
        help="migrate RAM to a destination process over N TCP or Unix channels and verify it",
        description=(
            "Migrate a RAM image file (or a synthetic guest RAM block) to a destination "
            "process over N multifd channels plus the main channel, in QEMU's wire format, "
            "with dirty rounds; verify the destination by SHA-256; print the query-migrate "
            "stats and the throughput."
        ),
    )
    source = parser.add_argument_group("source memory")
    source.add_argument("--image", metavar="PATH", help="RAM image file (default: synthetic)")
    source.add_argument(
        "--size-mib", type=size_mib, default=256, metavar="MIB", help="synthetic RAM size"
    )
    source.add_argument(
        "--zero-ratio", type=ratio, default=0.5, help="synthetic zero pages", metavar="R"
    )
    source.add_argument("--seed", type=random_seed, default=0, help="random seed", metavar="N")
    source.add_argument(
        "--page-size", type=_page_size, default=4096, help="target page size", metavar="SIZE"
    )
    mig = parser.add_argument_group("migration")
    mig.add_argument("--transport", choices=TRANSPORTS, default="tcp", help="channel transport")
    mig.add_argument(
        "--channels", type=engine_channels, default=2, help="multifd channels", metavar="N"
    )
    mig.add_argument(
        "--page-count",
        type=page_count,
        help="pages per packet (default: 512 KiB worth)",
        metavar="N",
    )
    add_migration_options(mig)
    mig.add_argument("--rounds", type=positive, default=3, help="rounds", metavar="N")
    mig.add_argument(
        "--dirty-ratio",
        type=ratio,
        default=0.05,
        help="share of pages dirtied per round",
        metavar="R",
    )
    mig.add_argument(
        "--timeout",
        type=seconds,
        default=60.0,
        help="seconds without progress before giving up",
        metavar="S",
    )
    add_tls_options(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_option(out)
    parser.set_defaults(run=run)
    return parser


def _load_source(args: argparse.Namespace) -> tuple[Any, npt.NDArray[np.uint8]]:
    """The source memory (a private copy-on-write mapping of an image) and a numpy view."""
    if args.image:
        # Read, not mapped: a mapping of a file that shrinks ends the process with
        # SIGBUS; a read of it is a short read, reported as an error.
        memory: Any = read_image(args.image, args.page_size)
        return memory, np.frombuffer(memory, dtype=np.uint8)
    ram = make_guest_ram(
        args.size_mib * MIB, page_size=args.page_size, zero_ratio=args.zero_ratio, seed=args.seed
    )
    return ram, ram


def _progress_bar(enabled: bool) -> tuple[Callable[[int, int, int], None] | None, Any]:
    """A tqdm bar (imported only when shown) and the engine callback that drives it."""
    if not enabled:
        return None, None
    tqdm = tqdm_class()
    bar = tqdm(total=0, unit="page", unit_scale=True, dynamic_ncols=True, leave=False)
    state = {"round": 0, "done": 0}

    def progress(round_no: int, done: int, total: int) -> None:
        if round_no != state["round"]:
            state["round"], state["done"] = round_no, 0
            bar.reset(total=total)
            bar.set_description(f"round {round_no}")
        bar.update(done - state["done"])
        state["done"] = done

    return progress, bar


def _report(args: argparse.Namespace, result: MigrationResult, source_sha: str) -> dict[str, Any]:
    data = result.as_dict()
    data["source"] = args.image or f"synthetic {args.size_mib} MiB, zero ratio {args.zero_ratio}"
    data["source_sha256"] = source_sha
    data["verified"] = source_sha == result.destination_sha256
    return data


def _print(data: dict[str, Any]) -> None:
    ram = data["ram"]
    print(
        f"migrate {data['source']}: {data['transport']}, {data['channels']} channel(s), "
        f"zero-page-detection={data['zero_page_detection']}, "
        f"postcopy-ram={'on' if data['postcopy_ram'] else 'off'}, {data['rounds']} round(s)"
    )
    for key in ("normal", "duplicate", "normal-bytes", "transferred", "multifd-bytes"):
        print(f"  {key + ':':16s} {ram[key]}")
    print(f"  {'pages-per-second:':16s} {ram['pages-per-second']:.0f}")
    print(f"  {'mbps:':16s} {ram['mbps']:.1f}")
    print(
        f"  throughput: {data['gb_per_s']:.2f} GB/s of guest RAM "
        f"({data['pages_sent']} pages in {data['seconds']:.3f} s)"
    )
    dest = data["destination"]
    print(
        f"  destination: {dest['packets']} packets, {dest['zero_pages_written']} zero pages "
        f"written, {dest['received_pages']} pages received"
    )
    print(verify_line(data))


def run(args: argparse.Namespace) -> int:
    """Run the ``migrate`` command; return the exit status.

    0: the destination's hash equals the source's; 1: it does not, or the
    migration failed, or the image cannot be read (the reason goes to stderr).
    """
    tls = tls_config(args, unix=args.transport == "unix")
    memory, ram = _load_source(args)
    block = RAMBlock("pc.ram", memory, args.page_size)
    options = migration_options(args)
    show = not args.no_progress and not args.json and sys.stderr.isatty()
    progress, bar = _progress_bar(show)
    if not args.json and sys.stderr.isatty():
        print(
            f"migrate: {block.used_length // MIB} MiB over {args.channels} channel(s), "
            f"{args.transport}...",
            file=sys.stderr,
            flush=True,
        )
    try:
        result = migrate(
            block,
            None,
            channels=args.channels,
            options=options,
            page_count=args.page_count,
            transport=args.transport,
            dirty=dirty_rounds(ram, args.page_size, args.rounds, args.dirty_ratio, args.seed),
            progress=progress,
            timeout=args.timeout,
            checksum=True,
            tls=tls,
        )
    except (PacketError, MigrationError, OSError) as exc:
        print(
            f"multifd-zero migrate: error: migration failed: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 1
    finally:
        if bar is not None:
            bar.close()
    source_sha = hashlib.sha256(memoryview(memory).cast("B")).hexdigest()
    data = _report(args, result, source_sha)
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        print()
    else:
        _print(data)
    return 0 if data["verified"] else 1
