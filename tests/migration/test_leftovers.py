"""Nothing left behind when either side of a socket migration is killed (issue 14).

After SIGKILL the finding was a 256 MiB copy of guest RAM in /dev/shm and a temporary
folder. Guest RAM shared with the destination process is now an anonymous file
(memfd_create), and the child watches its stdin, which the parent keeps open, to clean up
the parent's folder when the parent dies. The tests wait for processes and poll with a
generous bound; nothing depends on timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import multifd_zero as mz
from multifd_zero.errors import MigrationError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")

PS = 4096
BOUND = 60.0  # seconds: generous; the wait ends as soon as the process is gone


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # a zombie has run its last line


def wait_gone(pid: int) -> None:
    deadline = time.monotonic() + BOUND
    while not gone(pid):  # bounded by the deadline
        assert time.monotonic() < deadline, f"process {pid} still runs"
        time.sleep(0.05)


def shared_memory_names(pid: int) -> list[str]:
    """The mappings of ``pid`` that hold this library's shared guest RAM."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    paths = [line.split(maxsplit=5)[-1] for line in maps if len(line.split(maxsplit=5)) == 6]
    # Shared memory only (a memfd, or a file in /dev/shm as before): the folder of
    # the installed package may itself be named multifd-zero-... (CI's is).
    return [
        p
        for p in paths
        if "multifd-zero" in p and (p.startswith("/memfd:") or p.startswith("/dev/shm/"))
    ]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("multifd-zero"))


PARENT = r"""
import sys, tempfile, time
import numpy as np
import multifd_zero as mz
tempfile.tempdir = sys.argv[1]
src = mz.RAMBlock("pc.ram", np.ones(64 * 4096, np.uint8))
dst = mz.RAMBlock("pc.ram", bytearray(64 * 4096))  # staged through shared memory

def dirty():
    print("ready", flush=True)
    time.sleep(3600)  # killed here, mid-migration
    yield []

mz.migrate(src, dst, transport="unix", dirty=dirty(), timeout=600)
"""


def test_sigkill_of_the_parent_leaves_nothing(tmp_path: Path) -> None:
    """The parent (migrate() over a Unix socket, a staged destination) is killed in round 2:
    the destination process notices, removes the parent's folder and exits; the shared RAM
    never had a name in /dev/shm."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path)], stdout=subprocess.PIPE, cwd=tmp_path
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        (child,) = children(proc.pid)
        assert leftovers(tmp_path)  # the folder with the socket, while it runs
        names = shared_memory_names(proc.pid) + shared_memory_names(child)
        assert names and all(n.startswith("/memfd:multifd-zero-ram") for n in names), names
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(BOUND) == -signal.SIGKILL
        wait_gone(child)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(BOUND)
        if proc.stdout is not None:
            proc.stdout.close()
    assert leftovers(tmp_path) == []


def test_sigkill_of_the_destination_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The destination process is killed in round 2: migrate() raises, and its folder and
    shared memory are gone."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen: dict[str, object] = {}

    def dirty() -> Iterator[list[int]]:
        (child,) = children(os.getpid())
        seen["names"] = shared_memory_names(os.getpid()) + shared_memory_names(child)
        seen["folders"] = leftovers(tmp_path)
        os.kill(child, signal.SIGKILL)
        wait_gone(child)
        yield [0]

    src = mz.RAMBlock("pc.ram", np.ones(64 * PS, np.uint8))
    dst = mz.RAMBlock("pc.ram", bytearray(64 * PS))
    with pytest.raises((MigrationError, OSError)):
        mz.migrate(src, dst, transport="unix", dirty=dirty(), timeout=30)
    names = seen["names"]
    assert names and all(str(n).startswith("/memfd:multifd-zero-ram") for n in names), names
    assert seen["folders"]
    assert leftovers(tmp_path) == []
    assert shared_memory_names(os.getpid()) == []
