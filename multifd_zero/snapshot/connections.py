"""Where a snapshot's migration connects: QEMU's ``tcp:`` and ``unix:`` URIs, and their sockets."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from .._checks import check_int
from ..errors import UriError
from ..migration.transport import SocketChannel

MAX_CHANNELS = 255


Progress = Callable[[int, int], None]
"""``progress(done_bytes, total_bytes)``: guest RAM bytes handled so far, of the total."""


U32 = 0xFFFFFFFF


def parse_uri(uri: str) -> tuple[str, Any]:
    """Parse a QEMU migration URI: ``tcp:HOST:PORT`` or ``unix:PATH``.

    Returns
    -------
    tuple
        ``("tcp", (host, port))`` or ``("unix", path)``. An empty HOST means
        the loopback address ``127.0.0.1``; ``[v6]`` hosts lose their brackets.

    Raises
    ------
    ~multifd_zero.errors.UriError
        Any other scheme, a missing or bad port, an empty path.

    Examples
    --------
    >>> parse_uri("tcp::4444"), parse_uri("unix:/tmp/m.sock")
    (('tcp', ('127.0.0.1', 4444)), ('unix', '/tmp/m.sock'))
    """
    if not isinstance(uri, str):
        raise UriError(f"a URI must be a string, not {type(uri).__name__}")
    if uri.startswith("unix:"):
        path = uri[5:]
        if not path:
            raise UriError(f"{uri!r}: empty socket path")
        return ("unix", path)
    if uri.startswith("tcp:"):
        rest = uri[4:]
        host, sep, port_text = rest.rpartition(":")
        if not sep or not port_text.isdigit():
            raise UriError(f"{uri!r}: expected tcp:HOST:PORT")
        port = int(port_text)
        if port > 65535:
            raise UriError(f"{uri!r}: port {port} out of range")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return ("tcp", (host or "127.0.0.1", port))
    raise UriError(f"unsupported migration URI {uri!r} (use tcp:HOST:PORT or unix:PATH)")


def _format_uri(kind: str, address: Any) -> str:
    if kind == "unix":
        return f"unix:{address}"
    host, port = address[0], address[1]
    return f"tcp:[{host}]:{port}" if ":" in host else f"tcp:{host}:{port}"


def channel_bytes(channel: SocketChannel) -> int:
    """Bytes sent and received over ``channel``."""
    return channel.bytes_sent + channel.bytes_received


def listen_uri(uri: str) -> tuple[socket.socket, str, str | None]:
    kind, address = parse_uri(uri)
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        sock.listen(MAX_CHANNELS + 1)
        return sock, _format_uri("unix", address), str(address)
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(MAX_CHANNELS + 1)
    bound = sock.getsockname()
    return sock, _format_uri("tcp", (host, bound[1])), None


def connect_uri(uri: str, timeout: float) -> socket.socket:
    kind, address = parse_uri(uri)
    deadline = time.monotonic() + min(timeout, 10.0)
    while True:
        if kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except (ConnectionRefusedError, FileNotFoundError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
            continue
        except OSError:
            sock.close()
            raise
        if kind == "tcp":
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def check_channels(channels: object) -> int:
    """QEMU's ``multifd-channels``, or 0 for multifd off."""
    return check_int("channels", channels, 0, MAX_CHANNELS)


class Counts:
    """Per-block page counters of one thread (merged at the end, no lock needed)."""

    def __init__(self) -> None:
        self.normal: dict[str, int] = {}
        self.duplicate: dict[str, int] = {}

    def add(self, idstr: str, normal: int, duplicate: int) -> None:
        if normal:
            self.normal[idstr] = self.normal.get(idstr, 0) + normal
        if duplicate:
            self.duplicate[idstr] = self.duplicate.get(idstr, 0) + duplicate
