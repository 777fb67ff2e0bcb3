"""``multifd-zero save`` and ``restore`` as a user runs them: QMP-driven runs, JSON, one-line
errors, Ctrl-C.

Each command runs as ``python -m multifd_zero`` in a subprocess started in a
temporary directory, so it imports the installed package, not the source tree.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.qemu_vm import QemuVM, fill_ram, query_status, require_qemu

MB = 64


def cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MULTIFD_ZERO_SIMD"}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m multifd_zero ARGS`` and return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "multifd_zero", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_bad_uri_is_one_line_and_status_1(tmp_path: Path) -> None:
    proc = run(["restore", str(tmp_path), "--connect", "exec:cat"], tmp_path)
    err = proc.stderr
    assert proc.returncode == 1
    assert err.count("\n") == 1 and "unsupported migration URI 'exec:cat'" in err


def test_missing_snapshot(tmp_path: Path) -> None:
    proc = run(["restore", str(tmp_path), "--connect", "tcp::1"], tmp_path)
    assert proc.returncode == 1 and "no manifest.json" in proc.stderr


def test_ctrl_c_exits_130_and_cleans_up(tmp_path: Path) -> None:
    sock = tmp_path / "save.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "multifd_zero", "save", str(tmp_path / "snap"),
         "--listen", f"unix:{sock}", "--channels", "2"],
        cwd=tmp_path, env=cli_env(), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20  # a safety net only: the socket appears or it fails
        while not sock.exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130 and "interrupted" in err
    assert not sock.exists() and not (tmp_path / "snap" / "manifest.json").exists()


@pytest.mark.qemu
def test_save_and_restore_with_qmp(tmp_path: Path) -> None:
    require_qemu(10)
    fill_ram(tmp_path / "src.ram", MB << 20, seed=4)
    guest = (tmp_path / "src.ram").read_bytes()
    dst = tmp_path / "dst.ram"
    with open(dst, "wb") as f:
        f.truncate(MB << 20)
    with QemuVM(tmp_path / "src.ram") as src:
        src.release_qmp()  # QEMU serves one QMP client at a time
        proc = run(
            ["save", str(tmp_path / "snap"), "--listen", f"unix:{tmp_path}/s.sock",
             "--channels", "2", "--qmp", str(src.qmp_path), "--json"],
            tmp_path,
        )  # fmt: skip
        src.reconnect_qmp()
    assert proc.returncode == 0, proc.stderr
    saved = json.loads(proc.stdout)
    assert saved["qemu"]["status"] == "completed"
    assert (saved["normal"], saved["duplicate"]) == (
        saved["qemu"]["ram"]["normal"],
        saved["qemu"]["ram"]["duplicate"],
    )
    with QemuVM(dst, incoming_defer=True) as vm:
        vm.release_qmp()
        proc = run(
            ["restore", str(tmp_path / "snap"), "--connect", f"unix:{tmp_path}/in.sock",
             "--channels", "3", "--zero-page-detection", "legacy", "--qmp", str(vm.qmp_path)],
            tmp_path,
        )  # fmt: skip
        out = proc.stdout
        assert proc.returncode == 0 and "QEMU status: completed" in out, proc.stderr
        assert dst.read_bytes() == guest
        vm.reconnect_qmp()
        vm.cmd("cont")
        assert query_status(vm) in ("running", "prelaunch")
