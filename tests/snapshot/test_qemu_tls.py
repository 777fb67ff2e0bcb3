"""TLS with a real QEMU 10 in both directions, with certificates the test makes.

- QEMU as the source with ``tls-creds`` (``tls-creds-x509,endpoint=client``) migrates to a
  SnapshotSaver with TLS (the server, verify-peer on): every channel, main and multifd, is
  its own TLS session, and QEMU checks the saver's certificate against the URI's host;
- restore() with TLS (the client, presenting client-cert.pem) migrates that snapshot into a
  QEMU destination with ``tls-creds`` (``endpoint=server``, verify-peer on by default),
  which requires close_notify at the end of each multifd channel (QEMU 10 machine types);
- a QEMU source without TLS is refused by a saver that requires it, before any byte.

Small guests (16 MiB), two channels. Timeouts are safety nets against a hung QEMU only.
"""

from __future__ import annotations

import concurrent.futures
import socket
from pathlib import Path

import numpy as np
import pytest
from support.qemu_vm import (
    MigrationFailedError,
    QemuVM,
    fill_ram,
    migrate,
    migrate_incoming,
    query_status,
    read_ram,
    require_qemu,
    set_migration,
    wait_migration,
)
from support.tls_certs import make_creds

import multifd_zero.snapshot as snap
from multifd_zero.errors import TLSError
from multifd_zero.migration.tls import TLSConfig

pytestmark = pytest.mark.qemu

GUEST = 16 << 20
CHANNELS = 2


@pytest.fixture(scope="module", autouse=True)
def qemu() -> str:
    return require_qemu(10)


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_creds(tmp_path_factory.mktemp("pki"))


def tls_object(creds: Path, endpoint: str) -> tuple[str, ...]:
    return ("-object", f"tls-creds-x509,id=tls0,dir={creds},endpoint={endpoint}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def save_with(vm: QemuVM, directory: Path, tls: TLSConfig | None) -> snap.SaveResult:
    saver = snap.SnapshotSaver(directory, "tcp:127.0.0.1:0", CHANNELS, timeout=120, tls=tls)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(saver.wait)
    pool.shutdown(wait=False)
    try:
        migrate(vm, saver.uri)
        return future.result(timeout=300)
    finally:
        saver.close()


def test_qemu_saves_and_restores_over_tls(creds: Path, tmp_path: Path) -> None:
    """QEMU -> save over TLS -> restore over TLS -> QEMU: the RAM arrives whole."""
    src_ram = tmp_path / "src.ram"
    fill_ram(src_ram, GUEST, zero_fraction=0.5, seed=14)
    with QemuVM(src_ram, extra_args=tls_object(creds, "client")) as vm:
        set_migration(vm, CHANNELS, "multifd", tls_creds="tls0")
        result = save_with(vm, tmp_path / "snap", TLSConfig(creds))
        info = wait_migration(vm, 300)
        assert query_status(vm) == "postmigrate"
    # QEMU counted what it sent through TLS; the saver counted the same pages.
    assert (result.normal, result.duplicate) == (info["ram"]["normal"], info["ram"]["duplicate"])
    (block,) = [b for b in result.manifest.blocks if b.idstr == "ram0"]
    image = Path(result.directory) / block.file
    assert np.array_equal(read_ram(image), read_ram(src_ram))

    dst_ram = tmp_path / "dst.ram"
    with open(dst_ram, "wb") as f:
        f.truncate(GUEST)
    with QemuVM(dst_ram, incoming_defer=True, extra_args=tls_object(creds, "server")) as dst:
        set_migration(dst, CHANNELS, "multifd", tls_creds="tls0")
        uri = f"tcp:127.0.0.1:{free_port()}"
        migrate_incoming(dst, uri)
        sent = snap.restore(tmp_path / "snap", uri, CHANNELS, tls=TLSConfig(creds), timeout=120)
        done = wait_migration(dst, 300)
        assert done["status"] == "completed"
        assert np.array_equal(read_ram(dst_ram), read_ram(src_ram))
    assert sent.normal + sent.duplicate == result.normal + result.duplicate


def test_a_plain_qemu_source_is_refused_by_a_tls_saver(creds: Path, tmp_path: Path) -> None:
    """QEMU without tls-creds to a saver that requires TLS: the saver refuses its first
    connection (TLSError) before using a byte, writes nothing, and QEMU's migration fails."""
    src_ram = tmp_path / "src.ram"
    fill_ram(src_ram, GUEST, zero_fraction=0.5, seed=15)
    with QemuVM(src_ram) as vm:
        set_migration(vm, CHANNELS, "multifd")
        with pytest.raises(TLSError, match="refused before any of its data"):
            save_with(vm, tmp_path / "snap", TLSConfig(creds))
        with pytest.raises(MigrationFailedError):
            wait_migration(vm, 300)
    assert not (tmp_path / "snap" / "manifest.json").exists()
