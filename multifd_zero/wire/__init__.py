"""The wire layer: QEMU's migration formats, bytes in and out, nothing else.

- :mod:`multifd_zero.wire.multifd`: the multifd RAM packet and the channel
  handshake (QEMU's ``migration/multifd.h``), byte for byte.
- :mod:`multifd_zero.wire.savevm`: QEMU 10's precopy main stream, whole
  (``migration/savevm.c`` and the RAM records of ``migration/ram.c``): an
  incremental reader and a writer. It is the one main-stream format: the
  engine's source writes it and its destination reads it.

The names of :mod:`multifd_zero.wire.multifd` are re-exported here, with the
errors a decoder raises (from :mod:`multifd_zero.errors`) and
:class:`ByteSource`, what a reader needs of a connection. This layer
imports the kernels and :mod:`multifd_zero.errors`, never the migration engine.
"""

from __future__ import annotations

from ..errors import (
    BlockError,
    CountError,
    FlagsError,
    HandshakeError,
    MagicError,
    OffsetError,
    PacketError,
    ReservedError,
    SizeError,
    TruncatedError,
    VersionError,
)
from ._source import ByteSource
from .multifd import (
    HANDSHAKE_SIZE,
    HEADER_SIZE,
    MAX_PAGE_COUNT,
    MULTIFD_FLAG_COMPRESSION_MASK,
    MULTIFD_FLAG_DEVICE_STATE,
    MULTIFD_FLAG_NOCOMP,
    MULTIFD_FLAG_SYNC,
    MULTIFD_MAGIC,
    MULTIFD_VERSION,
    PACKET_FIXED_SIZE,
    RAMBLOCK_NAME_SIZE,
    MultiFDInit,
    PacketDecoder,
    RamPacket,
    check_header,
    decode_init,
    decode_packet,
    encode_init,
    encode_name,
    encode_packet,
    fill_packet,
    packet_len,
)

__all__ = [
    "HANDSHAKE_SIZE",
    "HEADER_SIZE",
    "MAX_PAGE_COUNT",
    "MULTIFD_FLAG_COMPRESSION_MASK",
    "MULTIFD_FLAG_DEVICE_STATE",
    "MULTIFD_FLAG_NOCOMP",
    "MULTIFD_FLAG_SYNC",
    "MULTIFD_MAGIC",
    "MULTIFD_VERSION",
    "PACKET_FIXED_SIZE",
    "RAMBLOCK_NAME_SIZE",
    "BlockError",
    "ByteSource",
    "CountError",
    "FlagsError",
    "HandshakeError",
    "MagicError",
    "MultiFDInit",
    "OffsetError",
    "PacketDecoder",
    "PacketError",
    "RamPacket",
    "ReservedError",
    "SizeError",
    "TruncatedError",
    "VersionError",
    "check_header",
    "decode_init",
    "decode_packet",
    "encode_init",
    "encode_name",
    "encode_packet",
    "fill_packet",
    "packet_len",
]
