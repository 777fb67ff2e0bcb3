"""Running a migration destination in a separate process, for the socket transports.

The parent starts ``python -c ...`` with the same interpreter and the same
copy of ``multifd_zero`` it runs itself, writes its :class:`DestinationConfig`
to the child's stdin as one JSON line, and reads JSON lines back from its
stdout:

- ``{"event": "listening", "address": ...}`` once the child listens;
- ``{"event": "complete", "report": {...}, "receivedmap": "<hex>"}`` when the
  migration has been received;
- ``{"event": "checksum", "sha256": "..."}`` if a checksum was asked for;
- ``{"event": "error", "type": "...", "message": "..."}`` if it failed (with
  ``"reason"`` and ``"offset"`` for a :class:`~multifd_zero.errors.StreamError`);
  the parent raises the same exception class for
  :class:`~multifd_zero.PacketError` subclasses and the builtin errors.

The child's memory is either fresh anonymous memory, a shared mapping of a
file descriptor it inherits (a :class:`~multifd_zero.migration.shm.SharedRAM`'s
anonymous file) or of a file given by path. Every read of the parent waits at
most its ``timeout``.

Nothing is left behind if either side is killed: the parent keeps the child's
stdin open for the child's whole life, so the child sees its end when the
parent dies however it dies (SIGKILL included), and then removes the
parent's temporary folder (``DestinationConfig.workdir``) and exits; when the
child dies, the parent sees the end of its stdout and removes the folder
itself. Guest RAM shared between them has no name anywhere.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import mmap
import os
import selectors
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import _kernels, errors
from .._threads import WorkerThread
from ..errors import MigrationError
from ..options import MigrationOptions
from ..ramblock import RAMBlock
from .destination import MigrationDestination
from .tls import TLSConfig
from .transport import DEFAULT_MIN_PROGRESS_BYTES, Listener

__all__ = [
    "DestinationConfig",
    "DestinationProcess",
    "child_main",
    "fresh_memory",
    "rebuild_error",
]

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


@dataclass(frozen=True)
class DestinationConfig:
    """What the destination child needs to know, sent to it as one JSON line.

    Attributes
    ----------
    transport : {"tcp", "unix"}
    address : str or None
        The Unix socket's path, or None for TCP on a free loopback port.
    channels, page_size, page_count : int
    idstr : str
        The RAM block's name.
    size : int
        The block's ``used_length``.
    path : str or None
        A shared file to map as the block's memory, or None for fresh memory.
    receivedmap : bytes or None
        The destination's receivedmap words to start from.
    return_receivedmap : bool
        Send the receivedmap back at the end.
    options : MigrationOptions
    uuid : bytes
        The migration's 16-byte uuid, which every channel's handshake must carry.
    simd : str
        The parent's zero-check path.
    timeout : float
    checksum : bool
        Hash the memory at the end, where it lives.
    fd : int or None
        An inherited file descriptor to map as the block's memory (instead of ``path``).
    workdir : str or None
        The parent's temporary folder, removed by the child if the parent dies.
    tls_dir, tls_verify_peer
        TLS on every channel: the credentials directory and ``verify-peer``
        (:class:`~multifd_zero.migration.tls.TLSConfig`), or None for none.
    fresh : bool
        With ``path`` or ``fd``: whether its pages not yet received are known to be
        zero (:attr:`RAMBlock.fresh`); fresh memory is, always.
    min_progress_bytes, progress_seconds
        The no-progress rule (see :class:`MigrationDestination`).
    """

    transport: str
    address: str | None
    channels: int
    page_size: int
    page_count: int
    idstr: str
    size: int
    path: str | None
    receivedmap: bytes | None
    return_receivedmap: bool
    options: MigrationOptions
    uuid: bytes
    simd: str
    timeout: float
    checksum: bool
    fresh: bool = True
    fd: int | None = None
    workdir: str | None = None
    tls_dir: str | None = None
    tls_verify_peer: bool = True
    min_progress_bytes: int = DEFAULT_MIN_PROGRESS_BYTES
    progress_seconds: float | None = None

    def to_json(self) -> str:
        """One line of JSON (bytes as hex, the options as their fields)."""
        data = asdict(self)
        data["receivedmap"] = None if self.receivedmap is None else self.receivedmap.hex()
        data["uuid"] = self.uuid.hex()
        data["options"] = {
            "zero_page_detection": str(self.options.zero_page_detection),
            "postcopy_ram": self.options.postcopy_ram,
            "release_ram": self.options.release_ram,
        }
        return json.dumps(data)

    @classmethod
    def from_json(cls, line: str) -> DestinationConfig:
        """The config that :meth:`to_json` wrote."""
        data = json.loads(line)
        data["receivedmap"] = (
            None if data["receivedmap"] is None else bytes.fromhex(data["receivedmap"])
        )
        data["uuid"] = bytes.fromhex(data["uuid"])
        data["options"] = MigrationOptions(**data["options"])
        return cls(**data)


def _package_parent() -> str:
    return str(Path(__file__).resolve().parent.parent)


class DestinationProcess:
    """The parent's handle on a destination child process.

    Parameters
    ----------
    config : DestinationConfig
        What the child is to do.
    cwd : str
        The child's working directory (a private temporary folder, so that
        the current directory cannot shadow the installed package).
    timeout : float
        Seconds each :meth:`expect` may wait.
    """

    def __init__(self, config: DestinationConfig, *, cwd: str, timeout: float) -> None:
        self.timeout = timeout
        self._buffer = b""
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, _package_parent()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=cwd,
            pass_fds=() if config.fd is None else (config.fd,),
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            # stdin stays open: its end tells the child that this process is gone.
            self.proc.stdin.write(config.to_json().encode() + b"\n")
            self.proc.stdin.flush()
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
            raise rebuild_error(
                str(message.get("type")),
                str(message.get("message")),
                reason=message.get("reason"),
                offset=message.get("offset"),
            )
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
        # Only now: before the child exits, the end of its stdin means "the parent died".
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        return code

    def kill(self) -> None:
        """Stop the child now."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.close()


def rebuild_error(
    type_name: str, message: str, *, reason: Any = None, offset: Any = None
) -> BaseException:
    """Recreate an exception reported by the child: same class when it is a known one.

    A main-stream error (:class:`~multifd_zero.errors.StreamError`) is rebuilt
    from its ``reason`` and byte ``offset``, so its message reads the same.
    """
    cls = getattr(errors, type_name, None)
    if isinstance(cls, type) and issubclass(cls, errors.StreamError):
        if isinstance(reason, str) and isinstance(offset, int):
            return cls(reason, offset)
        return cls(message, 0)
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


def _memory(config: DestinationConfig) -> mmap.mmap:
    if config.fd is not None:
        return mmap.mmap(config.fd, config.size, flags=mmap.MAP_SHARED)
    if config.path is None:
        return fresh_memory(config.size)
    fd = os.open(config.path, os.O_RDWR)
    try:
        return mmap.mmap(fd, config.size, flags=mmap.MAP_SHARED)
    finally:
        os.close(fd)


def run_child(config: DestinationConfig) -> None:
    """The child's work, given its config; reports through stdout."""
    if config.simd:
        _kernels.set_simd(config.simd)
    memory = _memory(config)
    block = RAMBlock(
        config.idstr,
        memory,
        config.page_size,
        fresh=(config.path is None and config.fd is None) or config.fresh,
    )
    if config.receivedmap:
        block.receivedmap.bitmap[:] = np.frombuffer(config.receivedmap, dtype=np.uint64)
    tls = (
        None
        if config.tls_dir is None
        else TLSConfig(config.tls_dir, verify_peer=config.tls_verify_peer).server_context()
    )
    listener = Listener(config.transport, config.address, timeout=config.timeout, tls=tls)
    try:
        _emit({"event": "listening", "address": listener.address})
        destination = MigrationDestination(
            [block],
            channels=config.channels,
            options=config.options,
            page_count=config.page_count,
            uuid=config.uuid,
            timeout=config.timeout,
            min_progress_bytes=config.min_progress_bytes,
            progress_seconds=config.progress_seconds,
        )
        report = destination.run(listener.accept, extra=listener.poll)
    finally:
        listener.close()
    reply: dict[str, Any] = {"event": "complete", "report": report.as_dict()}
    if config.return_receivedmap:
        reply["receivedmap"] = block.receivedmap.bitmap.tobytes().hex()
    _emit(reply)
    if config.checksum:
        _emit({"event": "checksum", "sha256": hashlib.sha256(memory).hexdigest()})
    memory.close()


def _watch_parent(workdir: str | None) -> None:
    """Wait for the end of stdin (the parent is gone), then clean up after it and exit."""
    try:
        while os.read(0, 4096):  # raw reads: a buffered reader's lock would stall exit
            pass
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        os._exit(3)  # the migration's threads are blocked on the parent's sockets


def child_main() -> int:
    """Entry point of the destination process: a :class:`DestinationConfig` on stdin."""
    try:
        config = DestinationConfig.from_json(sys.stdin.buffer.readline().decode())
        WorkerThread(
            target=_watch_parent, args=(config.workdir,), name="parent-watch", daemon=True
        ).start()
        run_child(config)
    except BaseException as exc:
        reply: dict[str, Any] = {"event": "error", "type": type(exc).__name__, "message": str(exc)}
        if isinstance(exc, errors.StreamError):  # its class needs both to be rebuilt
            reply.update(reason=exc.reason, offset=exc.offset)
        _emit(reply)
        return 1
    return 0
