"""Running a migration destination in a separate process, for the socket transports.

The parent starts ``python -c ...`` with the same interpreter and the same
copy of ``multifd_zero`` it runs itself, writes one JSON line of settings to
the child's stdin, and reads JSON lines back from its stdout:

- ``{"event": "listening", "address": ...}`` once the child listens;
- ``{"event": "complete", "report": {...}, "receivedmap": "<hex>"}`` when the
  migration has been received;
- ``{"event": "checksum", "sha256": "..."}`` if a checksum was asked for;
- ``{"event": "error", "type": "...", "message": "..."}`` if it failed; the
  parent raises the same exception class for :class:`~multifd_zero.wire.PacketError`
  subclasses and the builtin errors.

The child's memory is either fresh anonymous memory or a shared file mapping
given by path (see :class:`~multifd_zero.migration.shm.SharedRAM`). Every read of the
parent waits at most its ``timeout``.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import mmap
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import _kernels, errors
from ..errors import MigrationError
from ..options import MigrationOptions
from ..ramblock import RAMBlock
from .destination import MigrationDestination
from .transport import Listener

__all__ = ["DestinationProcess", "child_main", "fresh_memory", "rebuild_error"]

_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from multifd_zero.migration.process import child_main; sys.exit(child_main())"
)
_BUILTIN_ERRORS = (
    "TimeoutError",
    "ConnectionError",
    "ConnectionResetError",
    "ConnectionAbortedError",
    "BrokenPipeError",
    "OSError",
    "ValueError",
    "TypeError",
)


def _package_parent() -> str:
    return str(Path(__file__).resolve().parent.parent)


class DestinationProcess:
    """The parent's handle on a destination child process.

    Parameters
    ----------
    config : dict
        The settings (see :func:`child_main`); JSON-serializable.
    cwd : str
        The child's working directory (a private temporary folder, so that
        the current directory cannot shadow the installed package).
    timeout : float
        Seconds each :meth:`expect` may wait.
    """

    def __init__(self, config: dict[str, Any], *, cwd: str, timeout: float) -> None:
        self.timeout = timeout
        self._buffer = b""
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, _package_parent()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=cwd,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(config).encode() + b"\n")
            self.proc.stdin.close()
        except OSError:  # pragma: no cover - the child died at once; expect() reports it
            pass
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)

    def _line(self, timeout: float) -> bytes | None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:  # bounded by the deadline
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the destination process said nothing for {timeout} s")
            if not self._selector.select(left):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def expect(self, event: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the message ``event``; raise the child's error if it sends one instead."""
        line = self._line(self.timeout if timeout is None else timeout)
        if line is None:
            code = self.proc.wait(self.timeout)
            raise MigrationError(f"the destination process exited with status {code}")
        message: dict[str, Any] = json.loads(line)
        if message.get("event") == "error":
            raise rebuild_error(str(message.get("type")), str(message.get("message")))
        if message.get("event") != event:
            raise MigrationError(f"expected {event!r} from the destination, got {message!r}")
        return message

    def close(self) -> int:
        """Wait for the child to exit (killing it after ``timeout``); return its status."""
        self._selector.close()
        try:
            code = self.proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(self.timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def kill(self) -> None:
        """Stop the child now."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.close()


def rebuild_error(type_name: str, message: str) -> BaseException:
    """Recreate an exception reported by the child: same class when it is a known one."""
    cls = getattr(errors, type_name, None)
    if isinstance(cls, type) and issubclass(cls, errors.PacketError):
        return cls(message)
    if type_name in _BUILTIN_ERRORS:
        builtin: type[Exception] = getattr(builtins, type_name)
        return builtin(message)
    return MigrationError(f"destination process: {type_name}: {message}")


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def fresh_memory(size: int) -> mmap.mmap:
    """Fresh guest RAM as QEMU allocates it by default: private anonymous memory.

    Reading an untouched page maps the kernel's shared zero page; only a
    write allocates. (Shared anonymous memory, Python's ``mmap(-1, n)``
    default, allocates a page on every first read.)
    """
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _memory(config: dict[str, Any]) -> mmap.mmap:
    size = int(config["size"])
    path = config.get("path")
    if path is None:
        return fresh_memory(size)
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
    finally:
        os.close(fd)


def run_child(config: dict[str, Any]) -> None:
    """The child's work, given the settings; reports through stdout."""
    if config.get("simd"):
        _kernels.set_simd(config["simd"])  # the parent's zero-check path
    memory = _memory(config)
    block = RAMBlock(config["idstr"], memory, int(config["page_size"]))
    if config.get("receivedmap"):
        bits = np.frombuffer(bytes.fromhex(config["receivedmap"]), dtype=np.uint64)
        block.receivedmap.bitmap[:] = bits
    timeout = float(config["timeout"])
    address = config.get("address")
    listener = Listener(config["transport"], address, timeout=timeout)
    try:
        _emit({"event": "listening", "address": listener.address})
        destination = MigrationDestination(
            [block],
            channels=int(config["channels"]),
            options=MigrationOptions(**config["options"]),
            page_count=int(config["page_count"]),
            uuid=bytes.fromhex(config["uuid"]),
            timeout=timeout,
        )
        report = destination.run(listener.accept)
    finally:
        listener.close()
    reply: dict[str, Any] = {"event": "complete", "report": report.as_dict()}
    if config.get("return_receivedmap"):
        reply["receivedmap"] = block.receivedmap.bitmap.tobytes().hex()
    _emit(reply)
    if config.get("checksum"):
        _emit({"event": "checksum", "sha256": hashlib.sha256(memory).hexdigest()})
    memory.close()


def child_main() -> int:
    """Entry point of the destination process: settings on stdin, JSON lines on stdout.

    Settings: ``transport`` ("tcp" or "unix"), ``address`` (the Unix path, or
    None for TCP on a free loopback port), ``channels``, ``page_size``,
    ``page_count``, ``idstr``, ``size``, ``path`` (a shared file to map, or
    None for fresh memory), ``receivedmap`` (hex, optional), ``options``
    (MigrationOptions fields), ``uuid`` (hex), ``timeout``, ``checksum`` and
    ``return_receivedmap`` (bools), ``simd`` (a zero-check path, optional).
    """
    try:
        config = json.loads(sys.stdin.readline())
        run_child(config)
    except BaseException as exc:
        _emit({"event": "error", "type": type(exc).__name__, "message": str(exc)})
        return 1
    return 0
