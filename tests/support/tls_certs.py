"""Certificates for the TLS tests, made with the ``openssl`` command (no Python package).

:func:`make_creds` writes a directory laid out as QEMU's ``tls-creds-x509`` reads it:
``ca-cert.pem``, ``server-cert.pem``/``server-key.pem`` (naming ``localhost`` and
``127.0.0.1``), ``client-cert.pem``/``client-key.pem``. P-256 keys, valid for two days.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SERVER_NAMES = "DNS:localhost,IP:127.0.0.1"


def require_openssl() -> str:
    """The openssl command, or a visible skip (a failure when CI requires QEMU's tests)."""
    path = shutil.which("openssl")
    if path is None:
        if os.environ.get("MULTIFD_ZERO_REQUIRE_QEMU") == "1":
            pytest.fail("the TLS tests need the openssl command")
        pytest.skip("the TLS tests need the openssl command")
    return path


def _run(*args: str) -> None:
    subprocess.run([require_openssl(), *args], check=True, capture_output=True, timeout=60)


def _key_and_request(folder: Path, who: str, subject: str) -> None:
    _run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(folder / f"{who}-key.pem"), "-out", str(folder / f"{who}.csr"),
         "-subj", subject)


def make_ca(folder: Path, name: str = "multifd-zero test CA") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(folder / "ca-key.pem"), "-out", str(folder / "ca-cert.pem"),
         "-days", "2", "-subj", f"/CN={name}",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def sign(folder: Path, who: str, ca: Path, *, server_names: str = SERVER_NAMES) -> None:
    """``{who}-cert.pem`` and ``{who}-key.pem`` in ``folder``, signed by the CA in ``ca``."""
    _key_and_request(folder, who, f"/CN={who}")
    usage = "serverAuth" if who == "server" else "clientAuth"
    lines = [f"extendedKeyUsage={usage}", "keyUsage=critical,digitalSignature,keyEncipherment",
             "basicConstraints=critical,CA:FALSE"]
    if who == "server":
        lines.append(f"subjectAltName={server_names}")
    ext = folder / f"{who}.ext"
    ext.write_text("\n".join(lines) + "\n")
    _run("x509", "-req", "-in", str(folder / f"{who}.csr"), "-CA", str(ca / "ca-cert.pem"),
         "-CAkey", str(ca / "ca-key.pem"), "-CAcreateserial", "-out",
         str(folder / f"{who}-cert.pem"), "-days", "2", "-extfile", str(ext))
    (folder / f"{who}.csr").unlink()
    ext.unlink()


def make_creds(folder: Path, *, server_names: str = SERVER_NAMES) -> Path:
    """A complete credentials directory (both endpoints, one CA); returns ``folder``."""
    make_ca(folder)
    sign(folder, "server", folder, server_names=server_names)
    sign(folder, "client", folder)
    return folder
