"""Every exception multifd_zero raises of its own, in one leaf module.

Bad arguments raise the built-in ``TypeError`` and ``ValueError``. Bad data
from a peer (a multifd packet, a channel handshake, a main-stream record)
raises a subclass of :class:`PacketError`, itself a ``ValueError``. A
migration that fails for another reason raises :class:`MigrationError`.

This module imports nothing from the package, so any layer may use it.
"""

from __future__ import annotations

__all__ = [
    "BlockError",
    "CountError",
    "FlagsError",
    "HandshakeError",
    "MagicError",
    "MigrationAbortedError",
    "MigrationError",
    "OffsetError",
    "PacketError",
    "ReservedError",
    "SizeError",
    "TruncatedError",
    "VersionError",
]


class PacketError(ValueError):
    """Bad data from the peer: a multifd packet, a handshake or a main-stream record.

    The receiving channel closes and the migration stops; nothing of the
    offending packet or record has been written to guest memory.
    """


class MagicError(PacketError):
    """The magic number is not ``0x11223344`` (or the main stream's ``QEVM``)."""


class VersionError(PacketError):
    """An unsupported version."""


class FlagsError(PacketError):
    """Compression, device state or unknown flag bits; or an unknown stream record."""


class CountError(PacketError):
    """``pages_alloc``, ``normal_pages`` or ``zero_pages`` out of bounds."""


class BlockError(PacketError):
    """An unknown or badly encoded RAM block name, or a block of the wrong size."""


class OffsetError(PacketError):
    """A page offset out of the block, or not page-aligned."""


class SizeError(PacketError):
    """``next_packet_size`` does not match the normal pages."""


class ReservedError(PacketError):
    """A reserved field is not zero."""


class TruncatedError(PacketError):
    """The stream ended inside a packet, its payload or a record."""


class HandshakeError(PacketError):
    """A channel handshake for another migration, or a bad or repeated channel id."""


class MigrationError(RuntimeError):
    """A migration failed for a reason no more specific exception describes."""


class MigrationAbortedError(RuntimeError):
    """This thread stopped because another part of the migration failed first."""
