"""Every command as a user meets it: one line, the right exit status, no traceback.

Exit statuses: 2 for a usage error (the parser, before anything runs), 1 for a
run that failed, 130 for Ctrl-C. Each case runs the installed command in a
subprocess (``python -m multifd_zero`` from a temporary directory) and checks
the status and the one line on stderr.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from support.builders import expected_best_simd

import multifd_zero as mz

PS = 4096



def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MULTIFD_ZERO_SIMD"}
    env.update(extra)
    return env


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "multifd_zero", *args],
        cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["migrate", "--channels", "300"], "--channels: must be from 1 to 255, got 300"),
        (["migrate", "--page-count", "4294967296"], "--page-count: must be from 1 to"),
        (["migrate", "--timeout", "inf"], "--timeout: must be a positive number"),
        (["save", "x", "--timeout", "nan"], "argument --timeout: must be a positive number"),
        (["demo", "--size-mib", "1000000000"], "--size-mib: must be from 1 to 1048576"),
        (["demo", "--seed", "-1"], "argument --seed: must be from 0 to 4294967295, got -1"),
        (["demo", "--page-size", "3000"], "--page-size: page_size must be a power of two"),
        (["migrate", "--size-mib", "x"], "argument --size-mib: not an integer"),
        (["bench", "--json", "/nonexistent/x.json"], "--json: /nonexistent/x.json: no such"),
        (["scan", "--length", "1Q", "x"], "argument --length: not a size: '1Q'"),
        (["sparsify", "a"], "give either DST or --in-place"),
        (["sparsify", "a", "b", "--in-place"], "give either DST or --in-place"),
        ([], "the following arguments are required: COMMAND"),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(v)[:40],
)
def test_usage_errors_exit_2_in_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    """Bounds are the parser's: a bad value is one line naming the option, exit 2."""
    proc = run(args, tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc)
    assert needle in line
    assert line.startswith("multifd-zero")
    assert proc.stdout == ""


def test_sizes_take_suffixes_everywhere(tmp_path: Path) -> None:
    """``4K`` and ``2M`` are page sizes in every command (one shared argument type)."""
    proc = run(["demo", "--size-mib", "2", "--page-size", "4K", "--rounds", "1", "--json"],
               tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["page_size"] == 4096
    image = tmp_path / "ram.img"
    image.write_bytes(bytes(2 * 1024 * 1024))
    proc = run(["migrate", "--image", str(image), "--page-size", "2M", "--transport",
                "inprocess", "--rounds", "1", "--json"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ram"]["duplicate"] == 1
    proc = run(["sparsify", "--page-size", "2M", str(image), str(tmp_path / "c"), "--json"],
               tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["page_size"] == 2 * 1024 * 1024


def test_help_shows_defaults_and_fits(tmp_path: Path) -> None:
    """``--help`` of every command names its defaults and fits 80 columns."""
    for command in ("demo", "migrate", "scan", "sparsify", "bench", "save", "restore", "info"):
        proc = run([command, "--help"], tmp_path, COLUMNS="200")
        assert proc.returncode == 0, proc.stderr
        assert max(len(line) for line in proc.stdout.splitlines()) <= 80, command
        if command not in ("info",):
            assert "(default:" in proc.stdout, command


def test_failed_runs_exit_1_in_one_line(tmp_path: Path) -> None:
    """A missing file and a bad image: exit 1, one line naming the file once."""
    missing = tmp_path / "missing.img"
    proc = run(["migrate", "--image", str(missing)], tmp_path)
    assert proc.returncode == 1
    assert one_line(proc) == f"multifd-zero migrate: error: {missing}: No such file or directory"
    odd = tmp_path / "odd.img"
    odd.write_bytes(b"\1" * 100)
    proc = run(["migrate", "--image", str(odd)], tmp_path)
    assert proc.returncode == 1
    assert "not a positive multiple of the page size 4096" in one_line(proc)
    proc = run(["sparsify", str(missing), str(tmp_path / "out")], tmp_path)
    assert proc.returncode == 1
    assert one_line(proc) == f"multifd-zero sparsify: error: {missing}: No such file or directory"
    proc = run(["scan", str(missing)], tmp_path)
    assert proc.returncode == 1
    assert one_line(proc) == f"multifd-zero scan: error: {missing}: No such file or directory"
    proc = run(["scan", "/dev/stdin"], tmp_path)  # stdin is /dev/null: a character device
    assert proc.returncode == 1
    line = one_line(proc)
    assert line.count("/dev/stdin") == 1 and "character device has no end" in line


def test_memory_error_is_one_line(tmp_path: Path) -> None:
    """A synthetic guest bigger than the address space allows: exit 1, 'not enough memory'."""
    proc = subprocess.run(
        ["prlimit", "--as=1500000000", sys.executable, "-m", "multifd_zero", "demo",
         "--size-mib", "4096", "--rounds", "1"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120, check=False,
    ) if shutil.which("prlimit") else None  # fmt: skip
    if proc is None:
        pytest.skip("no prlimit to cap the address space")
    assert proc.returncode == 1, proc.stderr
    assert one_line(proc).startswith("multifd-zero demo: error: not enough memory")


def test_info_json(tmp_path: Path) -> None:
    proc = run(["info", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["multifd_zero"] == mz.__version__
    assert doc["simd_paths"] == list(mz.simd_paths()) and doc["simd"] == expected_best_simd()


def test_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """``demo --json | head -c0``: the reader left before the output; exit 1, stderr empty."""
    for args in (["demo", "--size-mib", "2", "--rounds", "1", "--json"], ["info", "--json"]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "multifd_zero", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=_env(),
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        err = proc.stderr.read().decode()
        proc.stderr.close()
        assert proc.wait(timeout=120) == 1, err
        assert err == ""


def test_simd_environment_variable_warns_in_one_line(tmp_path: Path) -> None:
    """MULTIFD_ZERO_SIMD=bogus: the import works, one SimdWarning line, the best path stays."""
    code = "import multifd_zero as m; print(m.get_simd())"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=_env(MULTIFD_ZERO_SIMD="bogus"),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected_best_simd()
    assert one_line(proc).startswith("MULTIFD_ZERO_SIMD:0: SimdWarning: ignored, using ")
    assert "unknown SIMD path 'bogus'" in proc.stderr
    proc = run(["info"], tmp_path, MULTIFD_ZERO_SIMD="bogus")
    assert proc.returncode == 0
    assert "SimdWarning" in one_line(proc)
    strict = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", code],
        cwd=tmp_path, env=_env(MULTIFD_ZERO_SIMD="bogus"),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert strict.returncode != 0  # who wants it fatal can have it so


def test_import_from_an_unbuilt_checkout_says_what_to_run(tmp_path: Path) -> None:
    """A source tree without the compiled module: one ImportError line with the fix."""
    source = Path(mz.__file__).parent
    shutil.copytree(source, tmp_path / "multifd_zero",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-S", "-c", "import multifd_zero"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: multifd_zero's compiled kernels are not built")
    assert "pip install -e ." in last


def _interrupt_on_terminal(args: list[str], ready: bytes, cwd: Path) -> tuple[int, str]:
    """Run the command on a pseudo-terminal, Ctrl-C it once it printed ``ready``.

    SIGINT goes to the command's whole process group, as a terminal sends it;
    then the group must be empty (nothing left running).
    """
    master, slave = pty.openpty()
    # A pty starts with 0 columns, and tqdm draws nothing in 0 columns.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "multifd_zero", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
        cwd=cwd, env=_env(), start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    seen = b""
    # The whole ready line, newline included (a SIGINT inside that print would
    # cut it short); a progress bar has no newline, its text is enough.
    # Bounded by the command: it prints the line or exits.
    whole_line = ready != b"B/s"
    while ready not in seen or (whole_line and b"\n" not in seen[seen.index(ready) :]):
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    assert ready in seen, seen
    os.killpg(proc.pid, signal.SIGINT)
    try:
        status = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        os.close(master)
        raise
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    # No child of the command survives it. A child that is exiting can still be
    # in the group for a moment, so this waits for the group to empty, up to a
    # bound far below any wait a child left running would be in (60 s).
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)
    return status, seen.decode(errors="replace")


@pytest.mark.parametrize(
    ("args", "ready"),
    [
        (["demo", "--size-mib", "8", "--rounds", "1000000"], b"demo: migrating"),
        (["migrate", "--size-mib", "8", "--rounds", "1000000", "--no-progress"], b"migrate: 8"),
        (["bench", "--region-mib", "8", "--repeats", "100000"], b"bench: measuring"),
        (["scan", "--length", "256G", "/dev/zero"], b"B/s"),  # tqdm's bar: it is reading
    ],
    ids=["demo", "migrate", "bench", "scan"],
)
def test_ctrl_c_is_one_line_and_130(tmp_path: Path, args: list[str], ready: bytes) -> None:
    status, terminal = _interrupt_on_terminal(args, ready, tmp_path)
    assert status == 130, terminal
    erased = terminal.replace("\r\033[K", "\n")  # what main() prints before the line
    lines = [line for line in erased.replace("\r", "\n").splitlines() if line.strip()]
    assert "Traceback" not in terminal
    assert lines[-1] == f"multifd-zero {args[0]}: interrupted", terminal
    if args[0] != "scan":  # scan's ready line is a progress bar, redrawn in place
        assert len(lines) == 2, terminal  # the ready line and the interrupted line


def test_progress_bar_lock_leaves_no_helper_to_warn(tmp_path: Path) -> None:
    """A bar, then the ``os._exit`` that ends a Ctrl-C: nothing more is printed.

    Python 3.14's default start method on Linux (forkserver), forced here so
    that every Python checks it: under it tqdm's default lock is a named
    semaphore, and multiprocessing's resource tracker printed a "leaked
    semaphore" warning on the terminal after the command had exited.
    """
    code = (
        "import multiprocessing, os, sys\n"
        "multiprocessing.set_start_method('forkserver')\n"
        "from multifd_zero.cli._progress import tqdm_class\n"
        "bar = tqdm_class()(total=10, file=sys.stdout)\n"
        "bar.update(1)\n"
        "bar.refresh()\n"
        "sys.stdout.flush()\n"
        "os._exit(130)\n"
    )
    # stderr is read to its end, so a helper process still holding it is waited for.
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 130, proc.stderr
    assert "1/10" in proc.stdout, proc.stdout
    assert proc.stderr == "", proc.stderr


def test_ctrl_c_in_sparsify(tmp_path: Path) -> None:
    """SIGINT in the middle of a sparsify run: one line, 130.

    The signal is sent from inside the run (the first punch raises it), so that
    it lands in the run whatever the machine's speed.
    """
    path = tmp_path / "big.img"
    path.write_bytes((bytes(PS) + b"\1" * PS) * 64)
    code = (
        "import os, signal, sys\n"
        "from multifd_zero import _kernels\n"
        "real = _kernels.punch_zero_pages\n"
        "def punch(*args):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    return real(*args)\n"
        "_kernels.punch_zero_pages = punch\n"
        "from multifd_zero.cli.main import main\n"
        "sys.exit(main(['sparsify', '--in-place', sys.argv[1]]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 130, proc.stderr
    assert one_line(proc) == "multifd-zero sparsify: interrupted"


def test_a_ctrl_c_the_main_thread_never_hears_of_still_ends_the_program(tmp_path: Path) -> None:
    """The watcher of cli/_ctrl_c.py: the line and 130 even if no KeyboardInterrupt comes.

    CPython 3.11 can leave a SIGINT pending forever while other threads run
    (``demo`` migrated on after 9 Ctrl-Cs in 160). Here the main thread's
    handler does nothing at all, the worst case: the program must still end,
    with the one line, after the grace period.
    """
    code = (
        "import signal, time\n"
        "from multifd_zero.cli import _ctrl_c\n"
        "_ctrl_c.watch(130)\n"
        "_ctrl_c.GRACE = 0.2\n"
        "_ctrl_c.name_line('multifd-zero demo: interrupted')\n"
        "signal.signal(signal.SIGINT, lambda *_: None)\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    time.sleep(0.05)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=tmp_path, env=_env(),
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 130, err
    assert err.decode().splitlines() == ["multifd-zero demo: interrupted"]
