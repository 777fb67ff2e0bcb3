"""The ``save`` command: receive one live migration from QEMU into a sparse snapshot."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

from ..snapshot import SaveResult, SnapshotSaver
from ._qemu import Bar, Qmp, add_peer_options, error_line, format_bytes, print_json
from ._tls import add_tls_options, tls_config

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``save`` command to ``subparsers`` (an ``argparse`` subparsers object)."""
    parser = subparsers.add_parser(
        "save",
        help="save a running VM's memory, received by live migration, as a snapshot",
        description=(
            "Listen where QEMU migrates to, receive one precopy migration (multifd or not) "
            "and write a sparse snapshot: one raw image per RAM block, the device state, "
            "manifest.json."
        ),
    )
    parser.add_argument("directory", metavar="DIR", help="snapshot directory (created)")
    parser.add_argument(
        "--listen",
        default="tcp:127.0.0.1:0",
        metavar="URI",
        help="tcp:HOST:PORT or unix:PATH (port 0: a free port)",
    )
    add_peer_options(parser, "source", "set it up and start the migration")
    add_tls_options(parser)
    parser.set_defaults(run=run)


def _summary(result: SaveResult, qemu: dict[str, Any] | None) -> str:
    ram = qemu.get("ram", {}) if qemu else {}
    lines = [
        f"saved {format_bytes(result.manifest.ram_bytes)} of guest RAM "
        f"({len(result.blocks)} blocks, machine {result.manifest.machine_type}) "
        f"to {result.directory}",
        f"{result.seconds:.3f} s, {format_bytes(result.transferred)} received, "
        f"{result.gb_per_s:.2f} GB/s, {result.channels} multifd channels",
        f"{'':12}{'ours':>12}" + (f"{'QEMU':>12}" if qemu else ""),
    ]
    for label, ours, key in (
        ("normal", result.normal, "normal"),
        ("duplicate", result.duplicate, "duplicate"),
        ("normal-bytes", result.normal_bytes, "normal-bytes"),
        ("transferred", result.transferred, "transferred"),
    ):
        theirs = f"{ram.get(key, '-'):>12}" if qemu else ""
        lines.append(f"{label:12}{ours:>12}{theirs}")
    if qemu:
        lines.append(f"QEMU status: {qemu.get('status')}")
    stored = sum(b.data_pages for b in result.blocks)
    lines.append(f"stored pages: {stored} (the rest are holes)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``save``; return the exit status (0, 1 on error, 130 on Ctrl-C)."""
    bar = Bar(not args.json, "save")
    qmp: Qmp | None = None
    migrating = False
    try:
        with SnapshotSaver(
            args.directory,
            args.listen,
            args.channels,
            timeout=args.timeout,
            progress=bar.callback,
            tls=tls_config(args),
        ) as saver:
            qemu: dict[str, Any] | None = None
            if args.qmp:
                qmp = Qmp(args.qmp, args.timeout)
                qmp.setup(args.channels, source=True, zero_page_detection=None)
                qmp.cmd("migrate", uri=saver.uri)
                migrating = True
            elif not args.json:
                print(f"listening on {saver.uri}", file=sys.stderr, flush=True)
            result = saver.wait()
            if qmp is not None:
                qemu = qmp.wait_migration()
                migrating = False
        bar.close()
        if args.json:
            out = result.as_dict()
            out["qemu"] = qemu
            print_json(out)
        else:
            print(_summary(result, qemu))
        if qemu is not None and qemu.get("status") != "completed":
            error_line("save", RuntimeError(f"QEMU reports {qemu.get('status')}"))
            return 1
        return 0
    except KeyboardInterrupt:
        bar.close()
        print("multifd-zero save: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, whatever failed (QMP errors have several classes)
        bar.close()
        error_line("save", exc)
        return 1
    finally:
        if qmp is not None:
            if migrating:
                with contextlib.suppress(Exception):
                    qmp.cmd("migrate_cancel")
            qmp.close()
