"""The command line, run as a user runs it: ``python -m multifd_zero`` in a subprocess.

The subprocess starts in a temporary directory, so it imports the installed
package, not the source tree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.builders import expected_best_simd

import multifd_zero as mz

MODES = ("none", "legacy", "multifd")


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m multifd_zero ARGS`` and return the finished process."""
    full_env = {k: v for k, v in os.environ.items() if k != "MULTIFD_ZERO_SIMD"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "multifd_zero", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("postcopy", [False, True], ids=["precopy", "postcopy"])
@pytest.mark.parametrize("mode", MODES)
def test_demo_json_verified(tmp_path: Path, mode: str, postcopy: bool) -> None:
    """``demo --size-mib 8 --json`` in each mode, with and without --postcopy-ram: verified."""
    args = ["demo", "--size-mib", "8", "--zero-page-detection", mode, "--json"]
    if postcopy:
        args.append("--postcopy-ram")
    proc = run(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["verified"] is True
    assert result["zero_page_detection"] == mode
    assert result["postcopy_ram"] is postcopy
    assert result["size_bytes"] == 8 * 1024 * 1024
    assert result["page_size"] == 4096
    assert result["received_pages"] == 2048
    assert result["source_sha256"] == result["destination_sha256"]
    qm = result["query_migrate"]
    assert qm["normal"] + qm["duplicate"] == result["pages_sent"]
    assert qm["normal-bytes"] == qm["normal"] * 4096
    if mode == "none":
        assert qm["duplicate"] == 0
    else:
        assert qm["duplicate"] > 0  # the synthetic RAM is half zero pages
    assert result["pages_sent"] >= 2048
    # Batches are multifd packets of at most 128 pages; with legacy detection the
    # zero pages go over the main channel, so only the normal pages fill packets.
    batched = qm["normal"] if mode == "legacy" else result["pages_sent"]
    assert result["batches"] >= -(-batched // 128)


def test_demo_text_output(tmp_path: Path) -> None:
    """The human-readable report names the stats and says the destination was verified."""
    proc = run(["demo", "--size-mib", "8", "--rounds", "1"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "8 MiB guest RAM" in out
    assert "duplicate (zero pages)" in out
    assert "OK, destination equals source" in out


def test_demo_options(tmp_path: Path) -> None:
    """Page size, ratios, seed and rounds are honoured."""
    proc = run(
        [
            "--simd", "portable", "demo", "--size-mib", "1", "--page-size", "1024",
            "--zero-ratio", "1", "--rounds", "1", "--seed", "3", "--json",
        ],
        tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["page_size"] == 1024
    assert result["pages_sent"] == 1024
    assert result["query_migrate"]["duplicate"] == 1024  # every page zero
    assert result["zero_pages_written_on_destination"] == 0  # precopy: first-time zero pages
    assert result["verified"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--page-size", "3000"], "page_size must be a power of two"),
        (["demo", "--zero-ratio", "1.5"], "must be between 0 and 1"),
        (["demo", "--size-mib", "0"], "must be from 1 to"),
        (["demo", "--zero-page-detection", "fast"], "invalid choice"),
        (["--simd", "mmx", "demo"], "invalid choice"),
        ([], "required"),
    ],
    ids=["page-size", "ratio", "size", "mode", "simd", "no-command"],
)
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    """Bad arguments: exit status 2 and a message on stderr, as argparse does."""
    proc = run(args, tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_info_command(tmp_path: Path) -> None:
    """``info`` prints the version and the active and available SIMD paths."""
    proc = run(["info"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert mz.__version__ in proc.stdout
    best = expected_best_simd()
    assert f"simd: {best} (available: {', '.join(mz.simd_paths())})" in proc.stdout
    forced = run(["--simd", "portable", "info"], tmp_path)
    assert "simd: portable" in forced.stdout


def test_version_flag(tmp_path: Path) -> None:
    """``--version`` prints the installed version."""
    proc = run(["--version"], tmp_path)
    assert proc.returncode == 0
    assert mz.__version__ in proc.stdout


def test_console_script(tmp_path: Path) -> None:
    """The ``multifd-zero`` script installed beside this Python runs the demo."""
    script = Path(sys.executable).parent / "multifd-zero"
    if not script.exists():
        pytest.skip(f"no multifd-zero script next to {sys.executable}")
    proc = subprocess.run(
        [str(script), "demo", "--size-mib", "2", "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["verified"] is True


def test_simd_environment_variable(tmp_path: Path) -> None:
    """MULTIFD_ZERO_SIMD picks the path at import; an unknown name warns, naming it."""
    code = "import multifd_zero as m; print(m.get_simd(), m.__file__)"
    env = {k: v for k, v in os.environ.items() if k != "MULTIFD_ZERO_SIMD"}
    ok = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={**env, "MULTIFD_ZERO_SIMD": "portable"},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split()[0] == "portable"
    assert Path(ok.stdout.split()[1]).resolve() == Path(mz.__file__).resolve()
    bad = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={**env, "MULTIFD_ZERO_SIMD": "mmx"},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert bad.returncode == 0  # ignored with a warning (tests/cli/test_user_errors.py)
    assert "unknown SIMD path 'mmx'" in bad.stderr


def test_bench_quick_runs_and_writes_json(tmp_path: Path) -> None:
    """``bench --quick`` (a measurement, only smoke-tested here) exits 0 and writes JSON."""
    out = tmp_path / "bench.json"
    proc = run(
        ["bench", "--quick", "--repeats", "1", "--region-mib", "8", "--json", str(out)], tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert isinstance(json.loads(out.read_text()), dict)
