"""Every exception multifd_zero raises of its own, in one leaf module.

Bad arguments raise the built-in ``TypeError`` and ``ValueError``. Bad data
from a peer (a multifd packet, a channel handshake, a main-stream record)
raises a subclass of :class:`PacketError`, itself a ``ValueError``; an error
in the main stream is a :class:`StreamError`, which gives the byte offset and
also derives from the matching packet error (:class:`StreamMagicError` is a
:class:`MagicError`, and so on). A migration that fails for another reason
raises :class:`MigrationError`; a snapshot folder that cannot be used,
:class:`SnapshotError`; a migration URI that is not ``tcp:`` or ``unix:``,
:class:`UriError`.

This module imports nothing from the package, so any layer may use it.
"""

from __future__ import annotations

__all__ = [
    "BlockError",
    "CountError",
    "FileChangedError",
    "FileFormatError",
    "FlagsError",
    "HandshakeError",
    "MagicError",
    "MigrationAbortedError",
    "MigrationError",
    "NoProgressError",
    "OffsetError",
    "PacketError",
    "ReservedError",
    "SimdWarning",
    "SizeError",
    "SnapshotError",
    "StreamBlockError",
    "StreamError",
    "StreamFlagsError",
    "StreamMagicError",
    "StreamOffsetError",
    "StreamSectionError",
    "StreamSizeError",
    "StreamTruncatedError",
    "StreamVersionError",
    "TLSError",
    "TruncatedError",
    "UnsupportedStreamError",
    "UriError",
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


class TLSError(HandshakeError):
    """A connection's TLS handshake failed: not TLS at all, or a certificate not trusted.

    Raised before any byte of the connection is used as migration data.
    """


class StreamError(PacketError):
    """Bad or unsupported data in a QEMU migration main stream (QEMU's ``migration/savevm.c``).

    Parameters
    ----------
    message : str
        What is wrong.
    offset : int
        Byte offset in the main stream of the record or field at fault.

    Attributes
    ----------
    offset : int
    """

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"main stream, byte {offset}: {message}")
        self.offset = offset
        self.reason = message

    def __reduce__(self) -> tuple[type[StreamError], tuple[str, int]]:
        return (type(self), (self.reason, self.offset))


class StreamMagicError(StreamError, MagicError):
    """The stream does not start with ``QEVM``."""


class StreamVersionError(StreamError, VersionError):
    """A stream version other than 3 (or a RAM section version other than 4)."""


class StreamTruncatedError(StreamError, TruncatedError):
    """The stream ended inside a record, a section or before ``QEMU_VM_EOF``."""


class StreamFlagsError(StreamError, FlagsError):
    """Unknown RAM record flags, an unknown section type or command, a bad fill byte."""


class StreamBlockError(StreamError, BlockError):
    """A block list (``MEM_SIZE``) that is malformed or disagrees with the pages."""


class StreamOffsetError(StreamError, OffsetError):
    """A page past the end of its block."""


class StreamSizeError(StreamError, SizeError):
    """A length out of range: past 2**63, not page-aligned, past a limit."""


class StreamSectionError(StreamError):
    """Bad section structure: missing configuration, wrong footer, unknown section id."""


class UnsupportedStreamError(StreamError):
    """Valid QEMU data this library does not handle (postcopy, XBZRLE, mapped-ram...)."""


class SimdWarning(RuntimeWarning):
    """``MULTIFD_ZERO_SIMD`` names no zero-check path this CPU runs; it is ignored."""


class FileChangedError(OSError):
    """A file shrank (or was replaced) while it was read: its end came before its size."""


class FileFormatError(ValueError):
    """A file whose format cannot be read as memory (a qcow2 image, a kdump file...)."""


class SnapshotError(ValueError):
    """A snapshot directory that is missing, incomplete or inconsistent."""


class UriError(ValueError):
    """A migration URI other than ``tcp:HOST:PORT`` or ``unix:PATH``."""


class MigrationError(RuntimeError):
    """A migration failed for a reason no more specific exception describes."""


class MigrationAbortedError(RuntimeError):
    """This thread stopped because another part of the migration failed first."""


class NoProgressError(TimeoutError):
    """A peer that keeps a connection alive without moving the migration on.

    Raised when a side received fewer than the minimum bytes within the
    no-progress window (:class:`multifd_zero.migration.transport.ProgressDeadline`),
    however often single bytes arrive. A ``TimeoutError``, so code that
    handles timeouts handles it too.
    """
