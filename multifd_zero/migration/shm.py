"""Guest RAM that a destination process can map: a shared file mapping with a path."""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
import weakref

__all__ = ["SharedRAM"]

_SHM_DIR = "/dev/shm"


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class SharedRAM(mmap.mmap):
    """A writable, zero-filled ``MAP_SHARED`` file mapping that another process can map.

    Use it as the host of a destination :class:`~multifd_zero.RAMBlock` when
    migrating over sockets: :func:`~multifd_zero.migration.engine.migrate` then runs
    the destination process directly on this memory (by :attr:`path`) instead
    of copying the block there and back. The file lives in ``/dev/shm`` (or
    the temporary directory) and is removed when the mapping is closed or
    garbage-collected.

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

    path: str
    _finalizer: weakref.finalize[[str], SharedRAM]

    def __new__(cls, size: int) -> SharedRAM:
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f"size must be a positive int, got {size!r}")
        folder = _SHM_DIR if os.path.isdir(_SHM_DIR) else None
        fd, path = tempfile.mkstemp(prefix="multifd-zero-", suffix=".ram", dir=folder)
        try:
            os.ftruncate(fd, size)
            self = super().__new__(cls, fd, size, flags=mmap.MAP_SHARED)
        except BaseException:
            os.close(fd)
            _unlink(path)
            raise
        os.close(fd)
        self.path = path
        self._finalizer = weakref.finalize(self, _unlink, path)
        return self

    def close(self) -> None:
        """Unmap and remove the file."""
        super().close()
        self._finalizer()
