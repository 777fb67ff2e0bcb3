"""TLS on every migration channel, configured the way QEMU's ``tls-creds-x509`` is.

QEMU (``crypto/tlscredsx509.c``, ``migration/tls.c``, ``migration/multifd.c``)
takes a directory of PEM files and runs one TLS session per channel, the main
channel and each multifd channel alike:

========================  =========================================
``ca-cert.pem``           the CA that signed the peer's certificate (both sides)
``server-cert.pem``       the destination's certificate (``endpoint=server``)
``server-key.pem``        its private key
``client-cert.pem``       the source's certificate (``endpoint=client``)
``client-key.pem``        its private key
========================  =========================================

The destination is the TLS server and, by default (QEMU's ``verify-peer``),
requires a client certificate signed by the CA; the source is the client and
checks that the server's certificate names ``tls-hostname``, or else the
host of the migration URI (QEMU uses that name for the multifd channels too).
A connection whose handshake fails, a plain one included, raises
:class:`~multifd_zero.errors.TLSError` before any of its bytes is used.

End of a session: QEMU 10's source ends each multifd channel's session with
``gnutls_bye`` (a ``close_notify`` alert), and a QEMU 10 destination (machine
types 10.0 and later, ``multifd_clean_tls_termination``) treats a multifd
channel that ends without one as an error; older sources end without it,
which QEMU then accepts (``QIO_CHANNEL_READ_FLAG_RELAXED_EOF``). This
library sends ``close_notify`` when its source is done
(:meth:`~multifd_zero.migration.transport.SocketChannel.end`), and as a
destination accepts either end, like the relaxed QEMU: every stream has its
own end markers (a multifd channel its SYNC packets, the main stream its
``QEMU_VM_EOF`` and device state), so a cut stream is still a
:class:`~multifd_zero.errors.TruncatedError`.
"""

from __future__ import annotations

import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from ..errors import TLSError

__all__ = [
    "CA_CERT",
    "CLIENT_CERT",
    "CLIENT_KEY",
    "SERVER_CERT",
    "SERVER_KEY",
    "TLSConfig",
    "handshake",
]

CA_CERT = "ca-cert.pem"
SERVER_CERT = "server-cert.pem"
SERVER_KEY = "server-key.pem"
CLIENT_CERT = "client-cert.pem"
CLIENT_KEY = "client-key.pem"


@dataclass(frozen=True)
class TLSConfig:
    """TLS credentials and checks for a migration's channels.

    Parameters
    ----------
    creds_dir : str or path
        The credentials directory (QEMU's ``tls-creds-x509`` ``dir``): the
        files above that the side needs.
    hostname : str, optional
        The client's ``tls-hostname``: the name the server's certificate must
        carry. Default: the host of the URI connected to (a Unix socket has
        none, so it must be given there).
    verify_peer : bool, default True
        QEMU's ``verify-peer``: the server requires a client certificate
        signed by the CA, the client checks the server's certificate and
        name. Off, anyone who can connect is accepted (encryption only).

    Examples
    --------
    >>> TLSConfig("/etc/pki/qemu").server_context()  # doctest: +SKIP
    <ssl.SSLContext object at ...>
    """

    creds_dir: str | os.PathLike[str]
    hostname: str | None = None
    verify_peer: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.creds_dir, (str, os.PathLike)):
            raise TypeError(f"creds_dir must be a path, not {type(self.creds_dir).__name__}")
        if self.hostname is not None and (not isinstance(self.hostname, str) or not self.hostname):
            raise ValueError(f"hostname must be a non-empty str, got {self.hostname!r}")
        if not isinstance(self.verify_peer, bool):
            raise TypeError(f"verify_peer must be a bool, not {type(self.verify_peer).__name__}")
        if not Path(self.creds_dir).is_dir():
            raise ValueError(f"TLS credentials directory {str(self.creds_dir)!r} does not exist")

    def _file(self, name: str, required: bool = True) -> str | None:
        path = Path(self.creds_dir) / name
        if path.is_file():
            return str(path)
        if required:
            raise ValueError(f"TLS credentials: {path} is missing")
        return None

    def server_context(self) -> ssl.SSLContext:
        """The destination's context: its certificate, and the CA to check clients with."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # No TLS 1.3 session tickets: a migration source never reads its channels, and
        # closing a socket with them unread sends a reset that can drop the last data.
        context.num_tickets = 0
        cert, key = self._file(SERVER_CERT), self._file(SERVER_KEY)
        assert cert is not None and key is not None
        _load(context, cert, key)
        if self.verify_peer:
            context.verify_mode = ssl.CERT_REQUIRED
            _verify_locations(context, self._file(CA_CERT))
        return context

    def client_context(self) -> ssl.SSLContext:
        """The source's context: the CA to check the server with, its certificate if any."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.verify_peer:
            _verify_locations(context, self._file(CA_CERT))
        else:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        cert = self._file(CLIENT_CERT, required=False)
        if cert is not None:
            key = self._file(CLIENT_KEY)
            assert key is not None
            _load(context, cert, key)
        return context

    def server_name(self, uri_host: str | None) -> str:
        """The name the server's certificate must carry (``tls-hostname``, else the URI's)."""
        name = self.hostname or uri_host
        if not name:
            raise ValueError(
                "TLS needs a hostname to check the server's certificate against: give "
                "TLSConfig(hostname=...) (QEMU's tls-hostname) for a Unix socket"
            )
        return name


def _load(context: ssl.SSLContext, cert: str, key: str) -> None:
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"TLS credentials: cannot load {cert} with {key}: {exc}") from None


def _verify_locations(context: ssl.SSLContext, ca: str | None) -> None:
    try:
        context.load_verify_locations(ca)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"TLS credentials: cannot load {ca}: {exc}") from None


def handshake(
    sock: socket.socket,
    context: ssl.SSLContext,
    *,
    server_side: bool,
    timeout: float,
    hostname: str | None = None,
    peer: str = "the peer",
) -> ssl.SSLSocket:
    """Run one channel's TLS handshake on a connected socket; return the TLS socket.

    Raises
    ------
    TLSError
        The handshake failed (a plain connection, an untrusted or missing
        certificate, a wrong name); the socket is closed.
    TimeoutError
        No handshake within ``timeout``.
    """
    sock.settimeout(timeout)
    try:
        tls = context.wrap_socket(
            sock,
            server_side=server_side,
            server_hostname=None if server_side else hostname,
            do_handshake_on_connect=False,
            suppress_ragged_eofs=True,  # an end without close_notify reads as an end
        )
    except (ssl.SSLError, ValueError) as exc:
        sock.close()
        raise TLSError(f"{peer}: cannot start TLS: {exc}") from None
    try:
        tls.do_handshake()
    except ssl.SSLError as exc:
        tls.close()
        reason = getattr(exc, "verify_message", None) or exc.reason or exc.strerror or str(exc)
        raise TLSError(
            f"{peer}: TLS handshake failed ({reason}): a connection without TLS, or whose "
            "certificate is not trusted, is refused before any of its data is used"
        ) from None
    except (TimeoutError, OSError) as exc:
        tls.close()
        if isinstance(exc, TimeoutError):
            raise TimeoutError(f"{peer}: no TLS handshake within {timeout:g} s") from None
        raise TLSError(f"{peer}: the connection ended during the TLS handshake ({exc})") from None
    return tls
