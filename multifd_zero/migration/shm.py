"""Guest RAM that a destination process can map: a shared mapping of an anonymous file."""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
import weakref

__all__ = ["SharedRAM"]


def _anonymous_file(size: int) -> int:
    """A file descriptor of ``size`` zero bytes that no name in any folder refers to.

    ``memfd_create`` where the system has it (Linux): the memory lives only as
    long as a descriptor or a mapping of it, so a process killed by SIGKILL
    leaves nothing behind (a file in ``/dev/shm`` would stay until reboot).
    Elsewhere, a temporary file removed as soon as it is open.
    """
    fd: int
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("multifd-zero-ram", os.MFD_CLOEXEC)
    else:  # pragma: no cover - not Linux
        fd, path = tempfile.mkstemp(prefix="multifd-zero-", suffix=".ram")
        os.unlink(path)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class SharedRAM(mmap.mmap):
    """A writable, zero-filled ``MAP_SHARED`` mapping that another process can map.

    Use it as the host of a destination :class:`~multifd_zero.RAMBlock` when
    migrating over sockets: :func:`~multifd_zero.migration.engine.migrate` then runs
    the destination process directly on this memory (the child inherits
    :meth:`fileno`) instead of copying the block there and back. The memory
    is an anonymous file (``memfd_create``): no name in ``/dev/shm`` or
    anywhere else, so nothing is left behind however the processes end.

    Parameters
    ----------
    size : int
        Bytes; positive.

    Examples
    --------
    >>> ram = SharedRAM(8192)
    >>> len(ram), ram[:4], os.path.exists(ram.path)
    (8192, b'\\x00\\x00\\x00\\x00', True)
    >>> path = ram.path; ram.close(); os.path.exists(path)
    False
    """

    _fd: int
    _finalizer: weakref.finalize[[int], SharedRAM]

    def __new__(cls, size: int) -> SharedRAM:
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f"size must be a positive int, got {size!r}")
        fd = _anonymous_file(size)
        try:
            self = super().__new__(cls, fd, size, flags=mmap.MAP_SHARED)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._finalizer = weakref.finalize(self, _close, fd)
        return self

    def fileno(self) -> int:
        """The anonymous file's descriptor (open until :meth:`close`), for a child to inherit."""
        return self._fd

    @property
    def path(self) -> str:
        """A name of the memory for this user's processes while it is open:
        ``/proc/PID/fd/N`` (Linux), gone with the descriptor."""
        return f"/proc/{os.getpid()}/fd/{self._fd}"

    def close(self) -> None:
        """Unmap and close the file (its memory is freed once no process maps it)."""
        super().close()
        self._finalizer()
