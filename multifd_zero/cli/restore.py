"""The ``restore`` command: send a snapshot to a fresh QEMU waiting for an incoming migration."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..snapshot import RestoreResult, load_manifest, parse_uri, restore
from ._qemu import Bar, Qmp, add_peer_options, error_line, format_bytes, print_json
from ._tls import add_tls_options, tls_config

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``restore`` command to ``subparsers`` (an ``argparse`` subparsers object)."""
    parser = subparsers.add_parser(
        "restore",
        help="restore a snapshot into a QEMU started with -incoming defer",
        description=(
            "Send a snapshot written by 'save' to a QEMU 10 destination as a live migration, "
            "pages over N multifd channels (or the main channel with 0), then the saved "
            "device state."
        ),
    )
    parser.add_argument("directory", metavar="DIR", help="snapshot directory")
    parser.add_argument(
        "--connect",
        required=True,
        metavar="URI",
        help="the destination's migrate-incoming address: tcp:HOST:PORT or unix:PATH",
    )
    add_peer_options(parser, "destination", "set it up, migrate-incoming, wait")
    parser.add_argument(
        "--zero-page-detection",
        choices=("multifd", "legacy", "none"),
        default="multifd",
        help="how zero pages are announced, as a QEMU source would",
    )
    parser.add_argument(
        "--uuid",
        default="0" * 32,
        metavar="HEX",
        help="the destination's -uuid as 32 hex digits",
    )
    add_tls_options(parser)
    parser.set_defaults(run=run)


def _summary(result: RestoreResult, qemu: dict[str, Any] | None, ram_bytes: int) -> str:
    lines = [
        f"restored {format_bytes(ram_bytes)} of guest RAM ({len(result.blocks)} blocks) "
        f"from {result.directory}",
        f"{result.seconds:.3f} s, {result.gb_per_s:.2f} GB/s, {format_bytes(result.transferred)}"
        f" sent, {result.channels} multifd channels, zero-page-detection "
        f"{result.zero_page_detection}",
        f"{'normal':12}{result.normal:>12}",
        f"{'duplicate':12}{result.duplicate:>12}",
        f"{'normal-bytes':12}{result.normal_bytes:>12}",
        f"{'transferred':12}{result.transferred:>12}",
        f"pages not read (holes): {result.hole_pages}",
    ]
    if qemu is not None:
        lines.append(f"QEMU status: {qemu.get('status')}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``restore``; return the exit status (0, 1 on error, 130 on Ctrl-C)."""
    bar = Bar(not args.json, "restore")
    qmp: Qmp | None = None
    try:
        uuid = bytes.fromhex(args.uuid)
        if len(uuid) != 16:
            raise ValueError("--uuid must be 32 hex digits")
        kind, _ = parse_uri(args.connect)
        tls = tls_config(args, unix=kind == "unix")  # checked before touching QEMU
        manifest = load_manifest(args.directory)  # before touching QEMU
        qemu: dict[str, Any] | None = None
        if args.qmp:
            qmp = Qmp(args.qmp, args.timeout)
            qmp.setup(args.channels, source=False, zero_page_detection=None)
            qmp.cmd("migrate-incoming", uri=args.connect)
        result = restore(
            args.directory,
            args.connect,
            args.channels,
            zero_page_detection=args.zero_page_detection,
            uuid=uuid,
            timeout=args.timeout,
            progress=bar.callback,
            tls=tls,
        )
        if qmp is not None:
            qemu = qmp.wait_migration()
        bar.close()
        if args.json:
            out = result.as_dict()
            out["qemu"] = qemu
            print_json(out)
        else:
            print(_summary(result, qemu, manifest.ram_bytes))
        if qemu is not None and qemu.get("status") != "completed":
            error_line("restore", RuntimeError(f"QEMU reports {qemu.get('status')}"))
            return 1
        return 0
    except KeyboardInterrupt:
        bar.close()
        print("multifd-zero restore: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, whatever failed (QMP errors have several classes)
        bar.close()
        error_line("restore", exc)
        return 1
    finally:
        if qmp is not None:
            qmp.close()
