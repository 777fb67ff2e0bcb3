"""Migration counters, shared by every channel."""

from __future__ import annotations

import threading
from typing import overload

from ._checks import check_int

__all__ = ["MigrationStats"]


class MigrationStats:
    """QEMU's ``mig_stats`` page counters, safe to add to from several threads.

    Parameters
    ----------
    normal_pages, zero_pages : int, default 0
        Starting values.

    Examples
    --------
    >>> stats = MigrationStats()
    >>> stats.add(normal_pages=3, zero_pages=125)
    >>> stats.query_migrate(page_size=4096)
    {'normal': 3, 'duplicate': 125, 'normal-bytes': 12288, 'page-size': 4096}
    """

    def __init__(self, normal_pages: int = 0, zero_pages: int = 0) -> None:
        self._lock = threading.Lock()
        self._normal = _count("normal_pages", normal_pages)
        self._zero = _count("zero_pages", zero_pages)
        self._multifd_bytes = 0
        self._qemu_file_bytes = 0

    @property
    def normal_pages(self) -> int:
        """Pages sent with their data (QEMU ``mig_stats.normal_pages``)."""
        return self._normal

    @property
    def zero_pages(self) -> int:
        """Pages found all zero and sent as offsets only (``mig_stats.zero_pages``)."""
        return self._zero

    def add(self, normal_pages: int = 0, zero_pages: int = 0) -> None:
        """Add to both counters in one step, as one batch does.

        Raises
        ------
        TypeError
            A count is not an int.
        ValueError
            A count is negative.
        """
        normal = _count("normal_pages", normal_pages)
        zero = _count("zero_pages", zero_pages)
        with self._lock:
            self._normal += normal
            self._zero += zero

    @property
    def multifd_bytes(self) -> int:
        """Bytes written on the multifd channels: handshakes, packets, payloads."""
        return self._multifd_bytes

    @property
    def qemu_file_bytes(self) -> int:
        """Bytes written on the main migration stream (``qemu_file_transferred``)."""
        return self._qemu_file_bytes

    @property
    def transferred(self) -> int:
        """All bytes sent: ``qemu_file_bytes + multifd_bytes``, as QEMU's ``transferred``."""
        with self._lock:
            return self._qemu_file_bytes + self._multifd_bytes

    def add_bytes(self, multifd: int = 0, qemu_file: int = 0) -> None:
        """Add bytes sent on the multifd channels and on the main stream.

        Raises
        ------
        TypeError
            A count is not an int.
        ValueError
            A count is negative.
        """
        multifd = _count("multifd", multifd)
        qemu_file = _count("qemu_file", qemu_file)
        with self._lock:
            self._multifd_bytes += multifd
            self._qemu_file_bytes += qemu_file

    def snapshot(self) -> tuple[int, int]:
        """Return ``(normal_pages, zero_pages)`` read together."""
        with self._lock:
            return self._normal, self._zero

    def bytes_snapshot(self) -> tuple[int, int]:
        """Return ``(multifd_bytes, qemu_file_bytes)`` read together."""
        with self._lock:
            return self._multifd_bytes, self._qemu_file_bytes

    def reset(self) -> None:
        """Set every counter (pages and bytes) to zero."""
        with self._lock:
            self._normal = 0
            self._zero = 0
            self._multifd_bytes = 0
            self._qemu_file_bytes = 0

    @overload
    def query_migrate(self, page_size: int = ...) -> dict[str, int]: ...

    @overload
    def query_migrate(self, page_size: int = ..., *, seconds: float) -> dict[str, int | float]: ...

    def query_migrate(
        self, page_size: int = 4096, *, seconds: float | None = None
    ) -> dict[str, int] | dict[str, int | float]:
        """Return the counters as QMP ``query-migrate`` names them in its ``ram`` section.

        ``duplicate`` is QEMU's historical name for zero pages; there is no
        ``zero-pages`` field. ``normal-bytes`` is ``normal * page_size``.

        With ``seconds``, the duration of the migration, the transfer fields
        are added: ``transferred`` (main stream plus multifd bytes),
        ``multifd-bytes``, ``pages-per-second`` (normal plus zero pages over
        ``seconds``) and ``mbps`` (``transferred`` in megabits per second).

        Examples
        --------
        >>> stats = MigrationStats(normal_pages=1, zero_pages=127)
        >>> stats.add_bytes(multifd=1344 + 4096, qemu_file=8)
        >>> info = stats.query_migrate(seconds=0.5)
        >>> info["transferred"], info["multifd-bytes"], info["pages-per-second"]
        (5448, 5440, 256.0)
        """
        page_size = _count("page_size", page_size)
        with self._lock:
            normal, zero = self._normal, self._zero
            multifd, qemu_file = self._multifd_bytes, self._qemu_file_bytes
        info: dict[str, int | float] = {
            "normal": normal,
            "duplicate": zero,
            "normal-bytes": normal * page_size,
            "page-size": page_size,
        }
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
                raise TypeError(f"seconds must be a number, not {type(seconds).__name__}")
            if not seconds > 0:
                raise ValueError(f"seconds must be positive, got {seconds}")
            info["transferred"] = qemu_file + multifd
            info["multifd-bytes"] = multifd
            info["pages-per-second"] = (normal + zero) / seconds
            info["mbps"] = (qemu_file + multifd) * 8 / 1e6 / seconds
        return info

    def __repr__(self) -> str:
        normal, zero = self.snapshot()
        return f"MigrationStats(normal_pages={normal}, zero_pages={zero})"


def _count(name: str, value: object) -> int:
    return check_int(name, value, 0)
