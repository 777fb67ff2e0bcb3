"""The TLS options shared by ``migrate``, ``save`` and ``restore``: QEMU's tls-creds-x509."""

from __future__ import annotations

import argparse

from ..migration.tls import TLSConfig

__all__ = ["add_tls_options", "tls_config"]


def add_tls_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--tls-creds DIR``, ``--tls-hostname NAME`` and ``--tls-no-verify-peer``."""
    group = parser.add_argument_group(
        "TLS", "every channel in its own TLS session, as QEMU's tls-creds-x509 object"
    )
    group.add_argument(
        "--tls-creds",
        metavar="DIR",
        help="credentials directory: ca-cert.pem, server-cert.pem and server-key.pem "
        "(destination), client-cert.pem and client-key.pem (source); default: no TLS",
    )
    group.add_argument(
        "--tls-hostname",
        metavar="NAME",
        help="the name the destination's certificate must carry (default: the URI's host)",
    )
    group.add_argument(
        "--tls-no-verify-peer",
        dest="tls_verify_peer",
        action="store_false",
        help="do not check the peer's certificate (QEMU's verify-peer=off): encryption only",
    )


def tls_config(args: argparse.Namespace, *, unix: bool = False) -> TLSConfig | None:
    """The library's TLS settings from the parsed options, or None without ``--tls-creds``.

    ``unix``: the client connects over a Unix socket, whose URI names no host, so
    ``--tls-hostname`` is needed (as QEMU's tls-hostname is there).

    Raises
    ------
    ValueError
        A TLS option without ``--tls-creds``, a credentials directory that is
        missing, or no hostname over a Unix socket.
    """
    if args.tls_creds is None:
        if args.tls_hostname is not None or not args.tls_verify_peer:
            raise ValueError("--tls-hostname and --tls-no-verify-peer need --tls-creds DIR")
        return None
    if unix and args.tls_hostname is None:
        raise ValueError("TLS over a Unix socket needs --tls-hostname NAME (no host in the URI)")
    return TLSConfig(args.tls_creds, hostname=args.tls_hostname, verify_peer=args.tls_verify_peer)
