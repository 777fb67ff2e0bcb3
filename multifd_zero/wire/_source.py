"""What the stream readers need from a connection: only a way to receive bytes."""

from __future__ import annotations

from typing import Protocol

__all__ = ["ByteSource"]


class ByteSource(Protocol):
    """Anything that fills a buffer from a byte stream, as a socket's ``recv_into`` does.

    :class:`multifd_zero.migration.transport.Channel` is one; so is a
    ``socket.socket``. The wire layer depends on nothing but this.
    """

    def recv_into(self, view: memoryview, /) -> int:
        """Read up to ``len(view)`` bytes into ``view``; return the count, 0 at end of stream."""
        ...
