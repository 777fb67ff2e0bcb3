"""TLS on every channel of the engine: QEMU's credentials layout, refusal before use.

Certificates come from support/tls_certs.py (the openssl command). Every wait is bounded;
no test depends on timing.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.tls_certs import make_ca, make_creds, sign

import multifd_zero as mz
from multifd_zero import wire
from multifd_zero.errors import TLSError
from multifd_zero.migration.destination import MigrationDestination
from multifd_zero.migration.tls import TLSConfig
from multifd_zero.migration.transport import Listener, SocketChannel, connect

PS = 4096
NAME = "pc.ram"
T = 20.0
UUID = bytes(16)


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_creds(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory, creds: Path) -> Path:
    """A client whose certificate another CA signed, trusting the real CA for the server."""
    folder = tmp_path_factory.mktemp("stranger")
    make_ca(folder / "ca", "another CA")
    sign(folder, "client", folder / "ca")
    (folder / "ca-cert.pem").write_bytes((creds / "ca-cert.pem").read_bytes())
    return folder


def source_ram() -> np.ndarray:
    ram = np.zeros((64, PS), np.uint8)
    ram[::3, 5] = 9
    return ram.reshape(-1)


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_migrate_over_tls_ends_equal(creds: Path, transport: str) -> None:
    """Every channel (main and 2 multifd) in its own TLS session, both directions checked."""
    src = source_ram()
    dst = mz.RAMBlock(NAME, bytearray(src.size))
    tls = TLSConfig(creds, hostname=None if transport == "tcp" else "localhost")
    result = mz.migrate(mz.RAMBlock(NAME, src), dst, channels=2, transport=transport, tls=tls,
                        timeout=T)
    assert bytes(dst.host) == src.tobytes()
    assert result.ram["normal"] == 22


def destination_in_thread(listener: Listener) -> tuple[MigrationDestination, list[Any],
                                                        threading.Thread]:
    block = mz.RAMBlock(NAME, bytearray(b"\x5a" * (8 * PS)))
    dest = MigrationDestination([block], channels=1, options=mz.MigrationOptions(),
                                page_count=4, uuid=UUID, timeout=T)
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(dest.run(listener.accept))
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return dest, box, thread


def test_a_plain_connection_is_refused_before_any_byte_is_used(creds: Path) -> None:
    """A client without TLS sends a valid handshake and a page: a TLSError naming it, and the
    destination's memory and receivedmap untouched."""
    with Listener("tcp", timeout=T, tls=TLSConfig(creds).server_context()) as listener:
        dest, box, thread = destination_in_thread(listener)
        plain = socket.create_connection(listener.address)  # type: ignore[arg-type]
        pkt = wire.RamPacket(pages_alloc=4, normal_pages=1, next_packet_size=PS,
                             ramblock=NAME, offsets=np.array([0], np.uint64))
        plain.sendall(wire.encode_init(UUID, 0) + wire.encode_packet(pkt, 4, b"\x01" * PS))
        thread.join(T)
        plain.close()
    (error,) = box
    assert isinstance(error, TLSError), error
    assert "tcp 127.0.0.1:" in str(error) and "refused before any of its data" in str(error)
    block = dest.blocks[NAME]
    assert bytes(block.host) == b"\x5a" * (8 * PS) and block.receivedmap.count() == 0


@pytest.mark.parametrize("who", ["no certificate", "another CA"])
def test_verify_peer_refuses_an_unknown_client(creds: Path, stranger: Path, tmp_path: Path,
                                               who: str) -> None:
    """verify-peer (the default): a client with no certificate, or one the CA did not sign,
    fails the handshake; the destination raises TLSError."""
    if who == "no certificate":
        folder = tmp_path / "bare"
        folder.mkdir()
        (folder / "ca-cert.pem").write_bytes((creds / "ca-cert.pem").read_bytes())
    else:
        folder = stranger
    with Listener("tcp", timeout=T, tls=TLSConfig(creds).server_context()) as listener:
        _, box, thread = destination_in_thread(listener)
        # TLS 1.3: the client's handshake ends before the server has checked it, so the
        # client sees the refusal on its first read (or at the handshake, under 1.2).
        channel: SocketChannel | None = None
        with pytest.raises((TLSError, OSError)):
            channel = connect("tcp", listener.address, timeout=T,
                              tls=TLSConfig(folder).client_context(), hostname="127.0.0.1")
            channel.send([wire.encode_init(UUID, 0)])
            if channel.recv_into(memoryview(bytearray(1))) == 0:
                raise ConnectionResetError("closed by the server")
        if channel is not None:
            channel.close()
        thread.join(T)
    assert isinstance(box[0], TLSError), box[0]


def test_without_verify_peer_a_client_needs_no_certificate(creds: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bare"
    folder.mkdir()
    (folder / "ca-cert.pem").write_bytes((creds / "ca-cert.pem").read_bytes())
    context = TLSConfig(creds, verify_peer=False).server_context()
    with Listener("tcp", timeout=T, tls=context) as listener:
        box: list[Any] = []
        thread = threading.Thread(target=lambda: box.append(listener.accept()))
        thread.start()
        client = connect("tcp", listener.address, timeout=T,
                         tls=TLSConfig(folder).client_context(), hostname="127.0.0.1")
        thread.join(T)
        client.close()
        box[0].close()


def test_the_client_checks_the_servers_name(creds: Path) -> None:
    """tls-hostname: a server certificate that does not carry the name is refused."""
    with Listener("tcp", timeout=T, tls=TLSConfig(creds).server_context()) as listener:
        threading.Thread(target=lambda: _accept_quietly(listener), daemon=True).start()
        with pytest.raises(TLSError, match=r"Hostname mismatch.*not-this-server"):
            connect("tcp", listener.address, timeout=T, tls=TLSConfig(creds).client_context(),
                    hostname="not-this-server.example")


def _accept_quietly(listener: Listener) -> None:
    with contextlib.suppress(TLSError, OSError):
        listener.accept().close()


@pytest.fixture
def tls_pair(creds: Path) -> Iterator[tuple[SocketChannel, ssl.SSLSocket]]:
    """Our client channel, and a raw server TLS socket that reports ragged ends."""
    server_ctx = TLSConfig(creds).server_context()
    with socket.create_server(("127.0.0.1", 0)) as srv:
        box: list[ssl.SSLSocket] = []

        def serve() -> None:
            conn, _ = srv.accept()
            box.append(server_ctx.wrap_socket(conn, server_side=True,
                                              suppress_ragged_eofs=False))

        thread = threading.Thread(target=serve)
        thread.start()
        client = connect("tcp", srv.getsockname(), timeout=T,
                         tls=TLSConfig(creds).client_context(), hostname="127.0.0.1")
        thread.join(T)
    yield client, box[0]
    client.close()
    box[0].close()


def test_the_sender_ends_its_session_with_close_notify(
    tls_pair: tuple[SocketChannel, ssl.SSLSocket],
) -> None:
    """end() sends close_notify, as QEMU 10's multifd source (gnutls_bye): a reader that
    refuses ragged ends reads the data and then a clean end."""
    client, server = tls_pair
    client.send([b"x" * 100_000])
    client.end()
    got = b""
    server.settimeout(T)
    while chunk := server.recv(65536):  # ends at close_notify; a ragged end would raise
        got += chunk
    assert got == b"x" * 100_000


def test_a_session_that_ends_without_close_notify_reads_as_an_end(
    tls_pair: tuple[SocketChannel, ssl.SSLSocket],
) -> None:
    """Like QEMU's relaxed EOF (QIO_CHANNEL_READ_FLAG_RELAXED_EOF): the framing of each stream
    tells a cut stream from a finished one, so a ragged end is an end here."""
    client, server = tls_pair
    server.sendall(b"abc")
    socket.socket.shutdown(server, socket.SHUT_RDWR)  # no close_notify
    buf = bytearray(3)
    assert client.recv_exact(memoryview(buf), what="three bytes") and buf == b"abc"
    assert client.recv_into(memoryview(bytearray(1))) == 0


def test_tls_settings_are_checked(creds: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        TLSConfig(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"server-cert\.pem is missing"):
        TLSConfig(empty).server_context()
    src = mz.RAMBlock(NAME, bytes(PS))
    with pytest.raises(ValueError, match="socket transport"):
        mz.migrate(src, tls=TLSConfig(creds))
    with pytest.raises(ValueError, match="tls-hostname"):
        mz.migrate(src, transport="unix", tls=TLSConfig(creds))
    with pytest.raises(TypeError, match="TLSConfig"):
        mz.migrate(src, transport="tcp", tls=str(creds))  # type: ignore[arg-type]
