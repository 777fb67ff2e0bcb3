"""The TLS options of migrate, save and restore (QEMU's tls-creds-x509 layout)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.tls_certs import make_creds

from multifd_zero.cli.main import main


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_creds(tmp_path_factory.mktemp("pki"))


def test_migrate_over_tls(creds: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["migrate", "--size-mib", "2", "--rounds", "2", "--json",
                   "--tls-creds", str(creds)])
    out = json.loads(capsys.readouterr().out)
    assert status == 0 and out["verified"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["migrate", "--size-mib", "1", "--tls-creds", "/nonexistent"], "does not exist"),
        (["migrate", "--size-mib", "1", "--tls-hostname", "x"], "need --tls-creds"),
        (["migrate", "--size-mib", "1", "--transport", "unix", "--tls-creds", "{creds}"],
         "needs --tls-hostname"),
        (["save", "{tmp}/s", "--tls-creds", "/nonexistent"], "does not exist"),
        (["restore", "{tmp}/s", "--connect", "tcp:127.0.0.1:9", "--tls-no-verify-peer"],
         "need --tls-creds"),
    ],
)
def test_bad_tls_options_are_one_line(creds: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str], argv: list[str],
                                      message: str) -> None:
    argv = [a.format(creds=creds, tmp=tmp_path) for a in argv]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
