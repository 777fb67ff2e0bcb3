"""Drive a real QEMU through QMP (and optionally qtest) for tests and benchmarks.

The harness starts ``qemu-system-x86_64`` on guest RAM that lives in a file::

    qemu-system-x86_64 -M pc -nodefaults -S -display none -m SIZE
        -object memory-backend-file,id=ram0,size=SIZE,mem-path=FILE,share=on
        -machine memory-backend=ram0 -qmp unix:SOCKET,server=on,wait=off
        [-incoming defer] [-uuid UUID] [-qtest unix:QTEST]

so that the test writes guest memory before QEMU starts (:func:`fill_ram`) and
reads it back at any time (:func:`read_ram`): with ``share=on`` QEMU maps the
file ``MAP_SHARED``, the file *is* guest RAM.

QMP client
----------
The sync shim ``qemu.qmp.legacy.QEMUMonitorProtocol`` from the ``qemu.qmp``
package. The tests and the benchmark are sequential (one command, then its
answer), so a synchronous client is the natural fit; the asyncio ``QMPClient``
in a helper thread would add a thread hop to every command and nothing else.
Writes to guest memory *while* QEMU migrates go through the qtest socket, a
plain socket with its own lock (:class:`QTest`), usable from any thread, so
the QMP client never has to be shared between threads. The shim runs its own
event loop in the calling thread: use a :class:`QemuVM`'s QMP methods from
the thread that started it.

Processes
---------
Every QEMU is started with ``PR_SET_PDEATHSIG`` = ``SIGKILL`` (it dies with
the Python process, even on ``SIGKILL``), is registered until it has exited,
and is shut down by :meth:`QemuVM.close` (``quit``, then ``SIGKILL`` after a
timeout), which the context manager, an ``atexit`` hook and the pytest
fixtures call, also on a failing test and on Ctrl-C.

What differs between QEMU versions (the ones this harness knows about)
-----------------------------------------------------------------------
- HMP ``info ramblock``: QEMU 7.2 prints ``Block Name, PSize, Offset, Used,
  Total``; QEMU 10.0 adds ``HVA`` and ``RO`` after ``Total``. Reading ``Used``
  as "the next to last column" reads the host address there, so
  :func:`ram_blocks` finds every column by its header name.
- ``zero-page-detection`` (migrate-set-parameters): since QEMU 9.0,
  ``multifd`` (the default: the multifd sender threads find zero pages and send
  only their offsets in the packet), ``legacy`` (the main migration thread, as
  in QEMU <= 8.2) or ``none``. QEMU 7.2 has no such parameter, and
  :func:`set_migration` omits it when asked for ``None``.
- The ``mapped-ram`` capability (QEMU 9.0+): ``migrate file:PATH`` writes
  every RAM page at its own offset of the file, zero pages as holes.
- ``max-bandwidth`` defaults to 128 MiB/s (``query-migrate-parameters``) and
  also caps ``migrate file:``; :func:`set_migration` always sets it.
- ``-machine pc`` adds ROM blocks (``pc.bios``, ``pc.rom``, ``/rom@etc/...``)
  next to the memory backend's block, which is named after the backend's id
  (``ram0``); ``-machine none`` has the backend only.
- ``query-migrate`` in QEMU 10 reports ``ram.dirty-sync-count``,
  ``ram.multifd-bytes`` and the ``pre-switchover`` / ``device`` states (with
  the ``pause-before-switchover`` capability, resumed by ``migrate-continue``).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol
from qemu.qmp.protocol import ConnectError

__all__ = [
    "PAGE_SIZE",
    "QEMU_BINARY",
    "MigrationFailedError",
    "QTest",
    "QemuError",
    "QemuVM",
    "RamBlock",
    "allocated_pages",
    "cont",
    "fill_ram",
    "find_qemu",
    "migrate",
    "migrate_continue",
    "migrate_incoming",
    "nonzero_pages",
    "parse_ramblock",
    "qemu_version",
    "query_migrate",
    "query_status",
    "ram_blocks",
    "read_ram",
    "require_qemu",
    "set_migration",
    "wait_migration",
]

QEMU_BINARY = "qemu-system-x86_64"
PAGE_SIZE = 4096
REQUIRE_ENV = "MULTIFD_ZERO_REQUIRE_QEMU"
_LIVE: set[QemuVM] = set()
_LIVE_LOCK = threading.Lock()


class QemuError(RuntimeError):
    """QEMU could not be started, answered with an error, or misbehaved."""


class MigrationFailedError(QemuError):
    """A migration ended ``failed`` or ``cancelled`` (message: QEMU's ``error-desc``)."""

    def __init__(self, message: str, info: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.info = dict(info)


# ------------------------------------------------------------------ finding QEMU


def find_qemu(binary: str | None = None) -> str | None:
    """Return the path of the QEMU binary, or ``None`` when it is not installed.

    Parameters
    ----------
    binary
        A name or path; default ``$MULTIFD_ZERO_QEMU`` or ``qemu-system-x86_64``.
    """
    name = binary or os.environ.get("MULTIFD_ZERO_QEMU") or QEMU_BINARY
    return shutil.which(name)


def qemu_version(binary: str | None = None) -> tuple[int, int, int] | None:
    """Return QEMU's ``(major, minor, micro)`` from ``--version``, or ``None``.

    ``None`` when the binary is missing, fails, or prints no version.
    """
    path = find_qemu(binary)
    if path is None:
        return None
    try:
        proc = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"version (\d+)\.(\d+)\.(\d+)", proc.stdout)
    if proc.returncode != 0 or match is None:
        return None
    return int(match[1]), int(match[2]), int(match[3])


def require_qemu(min_major: int = 10, binary: str | None = None) -> str:
    """Return the QEMU binary's path, or skip (fail under CI) the calling test.

    The test is skipped with the reason when QEMU is missing or older than
    ``min_major``; with ``MULTIFD_ZERO_REQUIRE_QEMU=1`` in the environment it
    fails instead, so CI never passes without having run it.
    """
    import pytest  # only the tests need pytest

    path = find_qemu(binary)
    version = qemu_version(path) if path else None
    if path is None:
        reason = f"{binary or QEMU_BINARY} is not installed (Debian: qemu-system-x86)"
    elif version is None:
        reason = f"{path} --version failed or printed no version"
    elif version[0] < min_major:
        reason = f"{path} is QEMU {'.'.join(map(str, version))}, these tests need {min_major}+"
    else:
        return path
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


# ------------------------------------------------------------------ guest RAM


def fill_ram(
    path: Path | str,
    size: int,
    *,
    zero_fraction: float = 0.5,
    seed: int = 0,
    page_size: int = PAGE_SIZE,
    chunk_pages: int = 4096,
) -> np.ndarray:
    """Create the RAM file ``path``: random pages and zero pages; return the data mask.

    Zero pages are holes (the file is sparse), random pages are random bytes
    with byte 0 forced non-zero, so a random page is never all zero.

    Parameters
    ----------
    path, size
        The file and its size, a multiple of ``page_size``.
    zero_fraction
        The probability of a page being zero, page by page (seeded).
    seed
        Seed of ``numpy.random.default_rng``: the same arguments, the same file.

    Returns
    -------
    numpy.ndarray
        Boolean, one entry per page: ``True`` where the page holds data.
    """
    if size % page_size:
        raise ValueError(f"size {size} is not a multiple of the page size {page_size}")
    pages = size // page_size
    rng = np.random.default_rng(seed)
    data_mask = rng.random(pages) >= zero_fraction
    with open(path, "wb") as f:
        f.truncate(size)
        for first in range(0, pages, chunk_pages):
            rows = np.flatnonzero(data_mask[first : first + chunk_pages])
            if rows.size == 0:
                continue
            block = rng.integers(0, 256, size=(rows.size, page_size), dtype=np.uint8)
            block[:, 0] |= 1
            # Write runs of consecutive data pages with one call each.
            breaks = np.flatnonzero(np.diff(rows) != 1) + 1
            for run in np.split(np.arange(rows.size), breaks):
                f.seek((first + int(rows[run[0]])) * page_size)
                f.write(block[run[0] : run[-1] + 1].tobytes())
    return data_mask


def read_ram(path: Path | str, page_size: int = PAGE_SIZE) -> np.ndarray:
    """Map the RAM file read-only: a ``(pages, page_size)`` ``uint8`` view of guest RAM."""
    return np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, page_size)


def nonzero_pages(data: np.ndarray | Path | str, page_size: int = PAGE_SIZE) -> np.ndarray:
    """Boolean per page, ``True`` where the page is not all zero (chunked, low memory)."""
    pages = read_ram(data, page_size) if isinstance(data, (str, Path)) else data
    pages = pages.reshape(-1, page_size)
    out = np.empty(pages.shape[0], dtype=bool)
    step = 16384
    for first in range(0, pages.shape[0], step):
        out[first : first + step] = pages[first : first + step].any(axis=1)
    return out


def allocated_pages(path: Path | str, page_size: int = PAGE_SIZE) -> np.ndarray:
    """Boolean per page of the file: ``True`` where ``SEEK_DATA`` finds data.

    A page counts as allocated when any byte of it lies in a data extent
    (``SEEK_DATA``/``SEEK_HOLE`` walk), as the file system reports it.
    """
    size = os.stat(path).st_size
    pages = -(-size // page_size)
    out = np.zeros(pages, dtype=bool)
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out[start // page_size : -(-end // page_size)] = True
            pos = end
    finally:
        os.close(fd)
    return out


# ------------------------------------------------------------------ qtest


class QTest:
    """The client end of QEMU's ``-qtest`` socket: write guest memory from any thread.

    QEMU connects to a socket the harness listens on; each command is one
    line, answered with one ``OK ...`` or ``FAIL ...`` line.
    """

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._file = conn.makefile("rwb")
        self._lock = threading.Lock()

    def command(self, line: str) -> str:
        """Send one qtest command; return the ``OK`` line's remainder or raise."""
        with self._lock:
            self._file.write(line.encode() + b"\n")
            self._file.flush()
            while True:
                reply = self._file.readline()
                if not reply:
                    raise QemuError(f"qtest: QEMU closed the socket after {line!r}")
                text = reply.decode(errors="replace").strip()
                if text.startswith("IRQ"):  # asynchronous, only with irq_intercept
                    continue
                if text == "OK" or text.startswith("OK "):
                    return text[3:]
                raise QemuError(f"qtest: {line!r} -> {text!r}")

    def writeq(self, addr: int, value: int) -> None:
        """Write the little-endian 64-bit ``value`` at guest-physical ``addr``."""
        self.command(f"writeq 0x{addr:x} 0x{value:x}")

    def write(self, addr: int, data: bytes) -> None:
        """Write ``data`` at guest-physical ``addr``."""
        self.command(f"write 0x{addr:x} 0x{len(data):x} 0x{data.hex()}")

    def memset(self, addr: int, size: int, value: int) -> None:
        """Set ``size`` bytes at guest-physical ``addr`` to ``value``."""
        self.command(f"memset 0x{addr:x} 0x{size:x} 0x{value:02x}")

    def close(self) -> None:
        """Close the socket."""
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self._conn.close()


# ------------------------------------------------------------------ the VM


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class QemuVM:
    """One QEMU process on a RAM file, with QMP (and optionally qtest) connected.

    Parameters
    ----------
    ram_file
        The guest RAM backing file (``memory-backend-file``, ``share=on``);
        it must exist with ``size`` bytes (see :func:`fill_ram`).
    size
        Guest RAM size in bytes; default the file's size.
    machine
        ``-M`` (default ``pc``).
    incoming_defer
        Add ``-incoming defer`` (a destination; see :func:`migrate_incoming`).
    uuid
        ``-uuid`` (for the ``validate-uuid`` capability).
    qtest
        Start with ``-qtest unix:PATH``; :attr:`qtest` is then connected.
    extra_args
        More command-line arguments.
    start_timeout
        Seconds to wait for QEMU's sockets (a safety net, not a test condition).

    Notes
    -----
    Use as a context manager, or call :meth:`close`. The QMP methods must be
    called from the thread that created the VM; :attr:`qtest` from any thread.
    """

    def __init__(
        self,
        ram_file: Path | str,
        size: int | None = None,
        *,
        machine: str = "pc",
        incoming_defer: bool = False,
        uuid: str | None = None,
        qtest: bool = False,
        extra_args: tuple[str, ...] = (),
        binary: str | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        path = find_qemu(binary)
        if path is None:
            raise QemuError(f"{binary or QEMU_BINARY} is not installed")
        self.ram_file = Path(ram_file)
        self.size = size if size is not None else self.ram_file.stat().st_size
        self._tmp = tempfile.TemporaryDirectory(prefix="qvm-", dir="/tmp")  # short: sun_path
        tmp = Path(self._tmp.name)
        self.qmp_path = tmp / "qmp.sock"
        self.qtest: QTest | None = None
        self.stderr_path = tmp / "stderr"
        self.args = [
            path,
            "-M",
            machine,
            "-nodefaults",
            "-S",
            "-display",
            "none",
            "-m",
            f"{self.size // (1 << 20)}M" if self.size % (1 << 20) == 0 else str(self.size),
            "-object",
            f"memory-backend-file,id=ram0,size={self.size},mem-path={self.ram_file},share=on",
            "-machine",
            "memory-backend=ram0",
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
        ]
        if incoming_defer:
            self.args += ["-incoming", "defer"]
        if uuid is not None:
            self.args += ["-uuid", uuid]
        listener: socket.socket | None = None
        if qtest:
            qtest_path = tmp / "qtest.sock"
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(qtest_path))
            listener.listen(1)
            self.args += ["-qtest", f"unix:{qtest_path}"]
        self.args += list(extra_args)
        self._qmp: QEMUMonitorProtocol | None = None
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            preexec_fn=_die_with_parent,
        )
        with _LIVE_LOCK:
            _LIVE.add(self)
        try:
            deadline = time.monotonic() + start_timeout
            if listener is not None:
                self.qtest = QTest(self._accept(listener, deadline))
            self._qmp = self._connect(deadline)
        except BaseException:
            self.close()
            raise
        finally:
            if listener is not None:
                listener.close()

    # -- start-up

    def _check_alive(self, what: str) -> None:
        if self.proc.poll() is not None:
            raise QemuError(
                f"QEMU exited with {self.proc.returncode} {what}: {self.stderr_text().strip()}"
            )

    def _accept(self, listener: socket.socket, deadline: float) -> socket.socket:
        listener.settimeout(0.05)
        while True:
            self._check_alive("before connecting to the qtest socket")
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise QemuError("QEMU did not connect to the qtest socket") from None
                continue
            conn.settimeout(None)
            return conn

    def _connect(self, deadline: float) -> QEMUMonitorProtocol:
        while True:
            self._check_alive("before its QMP socket accepted a connection")
            if self.qmp_path.exists():
                qmp = QEMUMonitorProtocol(str(self.qmp_path))
                try:
                    qmp.connect()
                except ConnectError:
                    qmp.close()
                else:
                    return qmp
            if time.monotonic() > deadline:
                raise QemuError("QEMU's QMP socket did not accept a connection")
            time.sleep(0.01)

    # -- commands

    @property
    def qmp(self) -> QEMUMonitorProtocol:
        """The connected QMP client."""
        if self._qmp is None:
            raise QemuError("QMP is not connected")
        return self._qmp

    def cmd(self, command: str, **arguments: object) -> Any:
        """Execute a QMP command; return its ``return`` value.

        Raises
        ------
        QemuError
            With QEMU's error description.
        """
        try:
            return self.qmp.cmd(command, **arguments)
        except QMPError as exc:
            raise QemuError(f"{command} {arguments}: {exc}") from exc

    def release_qmp(self) -> None:
        """Disconnect from QMP, so that another client (the CLI's ``--qmp``) can connect.

        QEMU serves one QMP client at a time; :meth:`reconnect_qmp` connects again.
        """
        if self._qmp is not None:
            with contextlib.suppress(Exception):
                self._qmp.close()
            self._qmp = None

    def reconnect_qmp(self, timeout: float = 30.0) -> None:
        """Connect to QMP again after :meth:`release_qmp`."""
        if self._qmp is None:
            self._qmp = self._connect(time.monotonic() + timeout)

    def hmp(self, command_line: str) -> str:
        """Run an HMP command through QMP; return its output."""
        return str(self.cmd("human-monitor-command", **{"command-line": command_line}))

    def stderr_text(self) -> str:
        """QEMU's standard error so far."""
        with contextlib.suppress(OSError):
            return self.stderr_path.read_text(errors="replace")
        return ""

    # -- shutdown

    def close(self, timeout: float = 10.0) -> int | None:
        """Quit QEMU (QMP ``quit``), kill it after ``timeout`` s; return its exit code.

        Safe to call more than once and on a half-started VM.
        """
        if self.qtest is not None:
            self.qtest.close()
            self.qtest = None
        if self._qmp is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self._qmp.settimeout(timeout)
                self._qmp.cmd("quit")
        if self._qmp is not None:
            with contextlib.suppress(Exception):
                self._qmp.close()
            self._qmp = None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        finally:
            if self.proc.poll() is None:  # interrupted while waiting
                self.proc.kill()
                self.proc.wait()
            with _LIVE_LOCK:
                _LIVE.discard(self)
            self._stderr.close()
            self._tmp.cleanup()
        return self.proc.returncode

    def __enter__(self) -> QemuVM:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@atexit.register
def _kill_leftovers() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for vm in live:
        if vm.proc.poll() is None:
            vm.proc.kill()
            vm.proc.wait()


@contextlib.contextmanager
def running(*args: Any, **kwargs: Any) -> Iterator[QemuVM]:
    """``with running(ram_file, ...) as vm``: a :class:`QemuVM`, closed on exit."""
    vm = QemuVM(*args, **kwargs)
    try:
        yield vm
    finally:
        vm.close()


# ------------------------------------------------------------------ helpers


@dataclass(frozen=True)
class RamBlock:
    """One line of HMP ``info ramblock``."""

    name: str
    page_size: int
    offset: int
    used: int
    total: int
    hva: int | None  # QEMU 10+
    readonly: bool | None  # QEMU 10+


_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def _parse_size(text: str) -> int:
    number, _, unit = text.partition(" ")
    return int(number) * _UNITS[unit or "B"]


def ram_blocks(vm: QemuVM) -> dict[str, RamBlock]:
    """HMP ``info ramblock`` of ``vm``, parsed by header name: name -> block."""
    return parse_ramblock(vm.hmp("info ramblock"))


def parse_ramblock(text: str) -> dict[str, RamBlock]:
    """Parse the output of HMP ``info ramblock`` by its header names; return name -> block.

    QEMU prints it with ``"%24s %8s  %18s %18s %18s"`` (7.2: Block Name, PSize,
    Offset, Used, Total) and QEMU 10 adds ``" %18s %3s"`` (HVA, RO); see
    ``ram_block_format`` in QEMU's ``system/physmem.c``. The header says which
    columns there are and in which order. A row is read from the right, by
    words: every column after the name is one word (PSize two, ``4 KiB``), so
    a block name longer than 24 characters, which pushes the row out of its
    columns, is still read right.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return {}
    header = re.findall(r"\S+(?: \S+)*", lines[0])
    missing = {"Block Name", "PSize", "Offset", "Used", "Total"} - set(header)
    if missing or header[0] != "Block Name":
        raise QemuError(f"info ramblock: no column {sorted(missing)} in {lines[0]!r}")
    after_name = header[1:]
    width = {name: 2 if name == "PSize" else 1 for name in after_name}
    blocks = {}
    for line in lines[1:]:
        words = line.split()
        need = sum(width.values())
        if len(words) <= need:
            raise QemuError(f"info ramblock: a row with too few columns: {line!r}")
        cells: dict[str, str] = {}
        at = len(words)
        for name in reversed(after_name):
            at -= width[name]
            cells[name] = " ".join(words[at : at + width[name]])
        name = " ".join(words[:at])
        hva, ro = cells.get("HVA"), cells.get("RO")
        blocks[name] = RamBlock(
            name=name,
            page_size=_parse_size(cells["PSize"]),
            offset=int(cells["Offset"], 16),
            used=int(cells["Used"], 16),
            total=int(cells["Total"], 16),
            hva=int(hva, 16) if hva else None,
            readonly=(ro == "ro") if ro else None,
        )
    return blocks


def set_migration(
    vm: QemuVM,
    channels: int,
    zero_page_detection: str | None = "multifd",
    *,
    max_bandwidth: int = 1 << 40,
    downtime_limit: int | None = None,
    capabilities: Mapping[str, bool] | None = None,
    **parameters: object,
) -> None:
    """Set the migration capabilities and parameters for the next migration.

    Parameters
    ----------
    channels
        ``0``: multifd off; ``n > 0``: the ``multifd`` capability with ``n`` channels.
    zero_page_detection
        ``multifd``, ``legacy`` or ``none``; ``None`` leaves it out (QEMU < 9).
    max_bandwidth
        Bytes per second (QEMU's default, 128 MiB/s, would cap every benchmark).
    downtime_limit
        Milliseconds; ``0`` lets QEMU switch over only when nothing is dirty.
    capabilities
        More capabilities, e.g. ``{"mapped-ram": True}``.
    parameters
        More parameters, QMP names with ``_`` for ``-``.
    """
    caps = {"multifd": channels > 0, **(capabilities or {})}
    vm.cmd(
        "migrate-set-capabilities",
        capabilities=[{"capability": k, "state": v} for k, v in caps.items()],
    )
    params: dict[str, object] = {"max-bandwidth": max_bandwidth}
    if channels > 0:
        params["multifd-channels"] = channels
    if zero_page_detection is not None:
        params["zero-page-detection"] = zero_page_detection
    if downtime_limit is not None:
        params["downtime-limit"] = downtime_limit
    params.update({k.replace("_", "-"): v for k, v in parameters.items()})
    vm.cmd("migrate-set-parameters", **params)


def migrate(vm: QemuVM, uri: str) -> None:
    """Start an outgoing migration to ``uri`` (returns at once; see :func:`wait_migration`)."""
    vm.cmd("migrate", uri=uri)


def migrate_incoming(vm: QemuVM, uri: str) -> None:
    """Start listening/reading an incoming migration on a ``-incoming defer`` QEMU."""
    vm.cmd("migrate-incoming", uri=uri)


def migrate_continue(vm: QemuVM, state: str = "pre-switchover") -> None:
    """Resume a migration paused in ``state`` (``pause-before-switchover``)."""
    vm.cmd("migrate-continue", state=state)


def query_migrate(vm: QemuVM) -> dict[str, Any]:
    """``query-migrate``."""
    info: dict[str, Any] = vm.cmd("query-migrate")
    return info


def query_status(vm: QemuVM) -> str:
    """The run state (``query-status``): ``prelaunch``, ``paused``, ``running``, ..."""
    return str(vm.cmd("query-status")["status"])


def cont(vm: QemuVM) -> None:
    """Start (or resume) the guest's CPUs."""
    vm.cmd("cont")


def wait_migration(
    vm: QemuVM,
    timeout: float = 300.0,
    *,
    until: tuple[str, ...] = ("completed",),
    interval: float = 0.01,
) -> dict[str, Any]:
    """Poll ``query-migrate`` until its status is in ``until``; return that answer.

    Raises
    ------
    MigrationFailedError
        When the migration ends ``failed`` or ``cancelled``, with QEMU's ``error-desc``.
    TimeoutError
        After ``timeout`` seconds (a safety net for a hung QEMU).
    """
    deadline = time.monotonic() + timeout
    while True:
        info = query_migrate(vm)
        status = info.get("status")
        if status in until:
            return info
        if status in ("failed", "cancelled"):
            desc = info.get("error-desc", "(no error-desc)")
            raise MigrationFailedError(f"migration {status}: {desc}", info)
        if vm.proc.poll() is not None:
            raise QemuError(f"QEMU exited during migration: {vm.stderr_text().strip()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"migration still {status!r} after {timeout} s: {info}")
        time.sleep(interval)
