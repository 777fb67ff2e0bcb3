"""The ``demo`` command: a synthetic guest migrated in-process by :func:`migrate`, verified."""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _kernels
from .._version import __version__
from ..guest import dirty_rounds, make_guest_ram
from ..migration.engine import MigrationResult, migrate
from ..options import MigrationOptions
from ..ramblock import RAMBlock
from ._argtypes import (
    MIB,
    add_json_option,
    add_migration_options,
    engine_channels,
    migration_options,
    page_size,
    positive,
    random_seed,
    ratio,
    size_mib,
    verify_line,
)

__all__ = ["DemoResult", "register", "run", "run_demo"]


@dataclass(frozen=True)
class DemoResult:
    """What a demo run did: the migration's result and the comparison of the two sides."""

    size: int
    page_size: int
    migration: MigrationResult
    verified: bool
    source_sha256: str
    destination_sha256: str
    wall_seconds: float

    @property
    def received_pages(self) -> int:
        """Pages marked in the destination's receivedmap at the end."""
        return self.migration.destination.received_pages

    @property
    def pages_sent(self) -> int:
        """Pages walked over all rounds (normal plus zero)."""
        return self.migration.pages_sent

    def as_dict(self) -> dict[str, Any]:
        """The result as plain JSON-ready data."""
        mig = self.migration
        return {
            "size_bytes": self.size,
            "page_size": self.page_size,
            "rounds": mig.rounds,
            "channels": mig.channels,
            "zero_page_detection": str(mig.options.zero_page_detection),
            "postcopy_ram": mig.options.postcopy_ram,
            "batches": mig.source_report.batches,
            "pages_sent": mig.pages_sent,
            "query_migrate": dict(mig.ram),
            "zero_pages_written_on_destination": mig.destination.zero_pages_written,
            "received_pages": self.received_pages,
            "total_seconds": mig.seconds,
            "total_gb_per_s": mig.gb_per_s,
            "wall_seconds": self.wall_seconds,
            "verified": self.verified,
            "source_sha256": self.source_sha256,
            "destination_sha256": self.destination_sha256,
        }


def run_demo(
    *,
    size: int = 256 * MIB,
    page_size: int = 4096,
    zero_ratio: float = 0.5,
    seed: int = 0,
    rounds: int = 2,
    dirty_ratio: float = 0.1,
    channels: int = 2,
    options: MigrationOptions | None = None,
) -> DemoResult:
    """Migrate a synthetic RAM block to fresh memory with :func:`migrate` and compare.

    Round 1 sends every page; each later round first lets the guest dirty a
    ``dirty_ratio`` share of pages (half zeroed, half written), as QEMU's
    dirty-bitmap rounds do. The destination is fresh anonymous memory, so in
    precopy a first-time zero page is never written.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    start = time.perf_counter()
    ram = make_guest_ram(size, page_size=page_size, zero_ratio=zero_ratio, seed=seed)
    src = RAMBlock("pc.ram", ram, page_size)
    with mmap.mmap(-1, size) as dst_mem:
        dst = RAMBlock("pc.ram", dst_mem, page_size, fresh=True)
        result = migrate(
            src,
            dst,
            channels=channels,
            options=options,
            transport="inprocess",
            dirty=dirty_rounds(ram, page_size, rounds, dirty_ratio, seed),
        )
        dst_view = np.frombuffer(dst_mem, dtype=np.uint8)
        verified = bool(np.array_equal(dst_view, ram))
        del dst_view
        destination_sha256 = hashlib.sha256(dst_mem).hexdigest()
    return DemoResult(
        size=size,
        page_size=page_size,
        migration=result,
        verified=verified,
        source_sha256=hashlib.sha256(ram.data).hexdigest(),
        destination_sha256=destination_sha256,
        wall_seconds=time.perf_counter() - start,
    )


def register(subparsers: Any) -> None:
    """Add the ``demo`` command to ``subparsers`` (from ``add_subparsers``)."""
    demo = subparsers.add_parser(
        "demo",
        help="migrate a synthetic RAM block in-process over N channels and verify it",
        description=(
            "Build a synthetic guest RAM block, migrate it in this process over N multifd "
            "channels with dirty rounds (migrate() with the in-process transport), verify "
            "that the destination equals the source, and print the stats and the throughput."
        ),
    )
    demo.add_argument("--size-mib", type=size_mib, default=256, metavar="MIB", help="RAM size")
    demo.add_argument(
        "--page-size", type=page_size, default=4096, help="target page size", metavar="SIZE"
    )
    demo.add_argument(
        "--zero-ratio", type=ratio, default=0.5, help="share of zero pages", metavar="R"
    )
    demo.add_argument("--seed", type=random_seed, default=0, help="random seed", metavar="N")
    demo.add_argument("--rounds", type=positive, default=2, help="dirty rounds", metavar="N")
    demo.add_argument(
        "--dirty-ratio",
        type=ratio,
        default=0.1,
        help="share of pages dirtied per round",
        metavar="R",
    )
    demo.add_argument(
        "--channels", type=engine_channels, default=2, help="multifd channels", metavar="N"
    )
    add_migration_options(demo)
    add_json_option(demo)
    demo.set_defaults(run=run)


def _print(result: dict[str, Any]) -> None:
    qm = result["query_migrate"]
    print(
        f"multifd_zero {__version__} demo: {result['size_bytes'] // MIB} MiB guest RAM, "
        f"page size {result['page_size']}, {result['rounds']} round(s), "
        f"{result['channels']} channel(s), "
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
        f"  migration: {result['total_seconds']:.3f} s, "
        f"{result['total_gb_per_s']:.2f} GB/s of guest RAM (detect, send, apply)"
    )
    print(verify_line(result))


def run(args: argparse.Namespace) -> int:
    """Run the ``demo`` command; 0 when the destination equals the source."""
    if not args.json and sys.stderr.isatty():
        print(
            f"demo: migrating {args.size_mib} MiB over {args.channels} channel(s)...",
            file=sys.stderr,
            flush=True,
        )
    result = run_demo(
        size=args.size_mib * MIB,
        page_size=args.page_size,
        zero_ratio=args.zero_ratio,
        seed=args.seed,
        rounds=args.rounds,
        dirty_ratio=args.dirty_ratio,
        channels=args.channels,
        options=migration_options(args),
    ).as_dict()
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        _print(result)
    return 0 if result["verified"] else 1
