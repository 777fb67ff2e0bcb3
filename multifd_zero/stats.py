"""Migration counters, shared by every channel."""

from __future__ import annotations

import operator
import threading

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

    def snapshot(self) -> tuple[int, int]:
        """Return ``(normal_pages, zero_pages)`` read together."""
        with self._lock:
            return self._normal, self._zero

    def reset(self) -> None:
        """Set both counters to zero."""
        with self._lock:
            self._normal = 0
            self._zero = 0

    def query_migrate(self, page_size: int = 4096) -> dict[str, int]:
        """Return the counters as QMP ``query-migrate`` names them in its ``ram`` section.

        ``duplicate`` is QEMU's historical name for zero pages; there is no
        ``zero-pages`` field. ``normal-bytes`` is ``normal * page_size``.
        """
        page_size = _count("page_size", page_size)
        normal, zero = self.snapshot()
        return {
            "normal": normal,
            "duplicate": zero,
            "normal-bytes": normal * page_size,
            "page-size": page_size,
        }

    def __repr__(self) -> str:
        normal, zero = self.snapshot()
        return f"MigrationStats(normal_pages={normal}, zero_pages={zero})"


def _count(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not bool")
    try:
        number = operator.index(value)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None
    if number < 0:
        raise ValueError(f"{name} must not be negative, got {number}")
    return number
