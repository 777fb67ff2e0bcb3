"""QEMU's multifd wire format: the RAM packet and the per-channel handshake.

Byte for byte the layout of QEMU's ``MultiFDPacket_t`` (9.0 and later) and
``MultiFDInit_t``; every integer is big-endian.

RAM packet (``packet_len = 320 + 8 * page_count`` bytes, then the payload):

====== ===== =================== =====================================================
offset size  field               value written by :func:`fill_packet`
====== ===== =================== =====================================================
0      4     magic               ``0x11223344``
4      4     version             1
8      4     flags               ``SYNC`` (1) and the compression bits (``NOCOMP`` = 0)
12     4     pages_alloc         ``page_count``
16     4     normal_pages        normal pages in the packet
20     4     next_packet_size    payload bytes that follow: ``normal_pages * page_size``
24     8     packet_num          a counter over all channels
32     4     zero_pages          zero pages in the packet
36     4     unused32            0
40     24    unused64[3]         0
64     256   ramblock            the block's name, NUL-terminated, NUL-padded
320    8*n   offset[page_count]  normal offsets first, then zero offsets; the rest 0
====== ===== =================== =====================================================

The payload is the normal pages' data, in ``offset`` order.

Handshake (``MultiFDInit_t``, 64 bytes, once per channel): magic (4), version
(4), uuid (16), channel id (1), then 7 + 32 reserved bytes, all 0.

What the decoder rejects
------------------------
Every check raises a subclass of :class:`~multifd_zero.PacketError`, before anything of the
packet is applied. Those QEMU's receiver makes (``multifd_recv_unfill_packet``
and the initial packet):

- bad magic (:class:`~multifd_zero.errors.MagicError`) or version
  (:class:`~multifd_zero.errors.VersionError`);
- ``pages_alloc > page_count``, ``normal_pages > pages_alloc`` or
  ``zero_pages > pages_alloc - normal_pages`` (:class:`~multifd_zero.errors.CountError`);
- an unknown block name, when the packet has pages (:class:`~multifd_zero.errors.BlockError`);
- an offset past ``used_length - page_size`` (:class:`~multifd_zero.errors.OffsetError`);
- compression bits other than ``NOCOMP`` (:class:`~multifd_zero.errors.FlagsError`);
- in the handshake: another migration's uuid, or a channel id out of range
  (:class:`~multifd_zero.errors.HandshakeError`).

And more, where QEMU trusts its peer:

- an offset that is not a multiple of the page size (:class:`~multifd_zero.errors.OffsetError`);
- ``next_packet_size != normal_pages * page_size`` (:class:`~multifd_zero.errors.SizeError`): with
  no compression that is the only size that keeps the stream in step;
- flag bits QEMU does not define, or the ``DEVICE_STATE`` packets this library
  does not carry (:class:`~multifd_zero.errors.FlagsError`);
- non-zero reserved fields, in the packet header and in the handshake
  (:class:`~multifd_zero.errors.ReservedError`). QEMU ignores them. They are refused here because
  the one time a reserved field was given a meaning (``zero_pages``, QEMU
  9.0), a receiver that ignored it silently corrupted guest memory;
- a handshake channel id equal to the channel count (QEMU only rejects
  ``id > channels``) or seen twice (:class:`~multifd_zero.errors.HandshakeError`);
- a packet or payload cut short by the end of the stream
  (:class:`~multifd_zero.errors.TruncatedError`, raised by the receiver).

Accepted as QEMU accepts them: offset slots past ``normal_pages +
zero_pages`` holding stale values (QEMU 9.0 and 9.1 did not clear them),
bytes after the NUL of the block name, a block name without any NUL in its
first 255 bytes (byte 255 is taken as the NUL), any ``packet_num``, and the
same offset twice in one packet.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .. import _kernels
from .._checks import OffsetArray, as_offsets, check_int
from ..errors import (
    BlockError,
    CountError,
    FlagsError,
    HandshakeError,
    MagicError,
    OffsetError,
    ReservedError,
    SizeError,
    TruncatedError,
    VersionError,
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
    "MultiFDInit",
    "PacketDecoder",
    "RamPacket",
    "check_header",
    "decode_init",
    "decode_packet",
    "encode_init",
    "encode_name",
    "encode_packet",
    "fill_packet",
    "packet_len",
]

MULTIFD_MAGIC = 0x11223344
"""First four bytes of every multifd packet and handshake."""
MULTIFD_VERSION = 1
"""The only version QEMU speaks."""
MULTIFD_FLAG_SYNC = 1 << 0
"""The packet ends a sync point (one per channel per sync)."""
MULTIFD_FLAG_NOCOMP = 0 << 1
"""No compression: the payload is the raw normal pages."""
MULTIFD_FLAG_COMPRESSION_MASK = 0x1F << 1
"""The bits that name the compression method."""
MULTIFD_FLAG_DEVICE_STATE = 1 << 6
"""A device-state packet (QEMU 10.0); refused here."""
_KNOWN_FLAGS = MULTIFD_FLAG_SYNC | MULTIFD_FLAG_COMPRESSION_MASK | MULTIFD_FLAG_DEVICE_STATE

MAX_PAGE_COUNT = 1 << 20
"""Most offset slots a packet may have here (an 8 MiB table); QEMU's have 512 KiB of pages,
128 slots for 4 KiB pages. A larger count would only make an encoder allocate gigabytes."""
HEADER_SIZE = 12
"""``MultiFDPacketHdr_t``: magic, version, flags; read first by the receiver."""
PACKET_FIXED_SIZE = 320
"""Bytes of a RAM packet before the offset array."""
RAMBLOCK_NAME_SIZE = 256
"""Bytes of the block name field."""
HANDSHAKE_SIZE = 64
"""Bytes of ``MultiFDInit_t``."""

_NAME_OFFSET = 64
_HEADER = struct.Struct(">III")  # magic, version, flags
# magic, version, flags, pages_alloc, normal_pages, next_packet_size,
# packet_num, zero_pages, unused32, unused64[3]
_FIXED = struct.Struct(">IIIIIIQII3Q")
_INIT = struct.Struct(">II16sB7s4Q")  # magic, version, uuid, id, unused1, unused2
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_BE64 = np.dtype(">u8")

assert _FIXED.size == _NAME_OFFSET and _INIT.size == HANDSHAKE_SIZE


def packet_len(page_count: int) -> int:
    """Return the bytes of a RAM packet holding ``page_count`` offsets: ``320 + 8 * page_count``.

    Examples
    --------
    >>> packet_len(128)
    1344
    """
    return PACKET_FIXED_SIZE + 8 * check_int("page_count", page_count, 1, MAX_PAGE_COUNT)


_NO_OFFSETS: OffsetArray = np.zeros(0, dtype=np.uint64)
_NO_OFFSETS.flags.writeable = False


class RamPacket(NamedTuple):
    """The fields of one decoded (or to be encoded) RAM packet (an immutable named tuple).

    Parameters
    ----------
    flags : int
        ``MULTIFD_FLAG_SYNC`` and the compression bits.
    pages_alloc : int
        The sender's batch capacity.
    normal_pages, zero_pages : int
        How many of ``offsets`` are normal pages (the first ones) and zero pages.
    next_packet_size : int
        Payload bytes after the packet.
    packet_num : int
        The sender's packet counter.
    ramblock : str
        The block name ("" in a packet without pages).
    offsets : numpy.ndarray
        ``normal_pages + zero_pages`` native ``uint64`` byte offsets.
    """

    flags: int = MULTIFD_FLAG_NOCOMP
    pages_alloc: int = 0
    normal_pages: int = 0
    zero_pages: int = 0
    next_packet_size: int = 0
    packet_num: int = 0
    ramblock: str = ""
    offsets: OffsetArray = _NO_OFFSETS

    @property
    def normal(self) -> OffsetArray:
        """Offsets of the normal pages, whose data is the payload."""
        return self.offsets[: self.normal_pages]

    @property
    def zero(self) -> OffsetArray:
        """Offsets of the zero pages."""
        return self.offsets[self.normal_pages : self.normal_pages + self.zero_pages]

    @property
    def sync(self) -> bool:
        """True for a packet that carries ``MULTIFD_FLAG_SYNC``."""
        return bool(self.flags & MULTIFD_FLAG_SYNC)


def _check_uint(name: str, value: object, limit: int) -> int:
    if type(value) is int and 0 <= value <= limit:  # the common case, quickly
        return value
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    number = int(value)
    if not 0 <= number <= limit:
        raise ValueError(f"{name} = {number} does not fit its field (0 to {limit})")
    return number


def encode_name(ramblock: str | bytes) -> bytes:
    """Return the 256-byte block name field for ``ramblock`` (NUL-padded).

    Raises
    ------
    TypeError
        ``ramblock`` is neither text nor bytes.
    ValueError
        More than 255 bytes (as UTF-8), or a NUL inside.
    """
    if isinstance(ramblock, str):
        raw = ramblock.encode("utf-8")
    elif isinstance(ramblock, (bytes, bytearray, memoryview)):
        raw = bytes(ramblock)
    else:
        raise TypeError(f"a block name must be str or bytes, not {type(ramblock).__name__}")
    if len(raw) > RAMBLOCK_NAME_SIZE - 1 or b"\0" in raw:
        raise ValueError(f"a block name must be at most 255 bytes without NUL, got {raw!r}")
    return raw.ljust(RAMBLOCK_NAME_SIZE, b"\0")


def fill_packet(
    buf: Any,
    page_count: int,
    *,
    offsets: OffsetArray,
    normal_pages: int,
    ramblock: str | bytes,
    packet_num: int,
    next_packet_size: int,
    flags: int = MULTIFD_FLAG_NOCOMP,
    pages_alloc: int | None = None,
) -> int:
    """Write a RAM packet into the first ``packet_len(page_count)`` bytes of ``buf``.

    The hot path of the sender: no allocation beyond small temporaries, the
    offsets written with one numpy big-endian assignment. ``zero_pages`` is
    ``len(offsets) - normal_pages``; offset slots past ``len(offsets)`` are
    written as 0, and so are the reserved fields.

    Parameters
    ----------
    buf : writable buffer
        At least ``packet_len(page_count)`` bytes.
    page_count : int
        Offset slots in the packet.
    offsets : numpy.ndarray
        Native ``uint64``: the normal offsets, then the zero offsets.
    normal_pages : int
    ramblock : str or bytes
        The block name, or its 256-byte field from :func:`encode_name`.
    packet_num : int
    next_packet_size : int
    flags : int, default NOCOMP
    pages_alloc : int, optional
        Defaults to ``page_count``, as QEMU's sender writes.

    Returns
    -------
    int
        ``packet_len(page_count)``.

    Raises
    ------
    ValueError
        A value that does not fit its field, more offsets than slots, or
        ``normal_pages > len(offsets)``.
    """
    size = packet_len(page_count)
    view = memoryview(buf).cast("B")
    if view.nbytes < size:
        raise ValueError(f"buf holds {view.nbytes} bytes, a packet needs {size}")
    if type(offsets) is not np.ndarray or offsets.dtype != np.uint64 or offsets.ndim != 1:
        offsets = as_offsets(offsets)  # checked and converted (TypeError, ValueError)
    num = int(offsets.size)
    if num > page_count:
        raise ValueError(f"{num} offsets do not fit {page_count} slots")
    normal = _check_uint("normal_pages", normal_pages, num)
    name = (
        ramblock
        if isinstance(ramblock, bytes) and len(ramblock) == RAMBLOCK_NAME_SIZE
        else encode_name(ramblock)
    )
    _FIXED.pack_into(
        view,
        0,
        MULTIFD_MAGIC,
        MULTIFD_VERSION,
        _check_uint("flags", flags, _U32),
        _check_uint("pages_alloc", page_count if pages_alloc is None else pages_alloc, _U32),
        normal,
        _check_uint("next_packet_size", next_packet_size, _U32),
        _check_uint("packet_num", packet_num, _U64),
        num - normal,
        0,
        0,
        0,
        0,
    )
    view[_NAME_OFFSET:PACKET_FIXED_SIZE] = name
    slots = np.frombuffer(view, dtype=_BE64, count=page_count, offset=PACKET_FIXED_SIZE)
    slots[:num] = offsets
    slots[num:] = 0
    return size


def encode_packet(packet: RamPacket, page_count: int, payload: Any = b"") -> bytes:
    """Return ``packet`` as bytes, ``page_count`` offset slots, followed by ``payload``.

    ``packet.pages_alloc`` is written as given (use ``page_count`` for what
    QEMU sends). ``len(packet.offsets)`` must equal ``normal_pages + zero_pages``.

    Examples
    --------
    >>> pkt = RamPacket(pages_alloc=4, normal_pages=1, zero_pages=1, next_packet_size=4096,
    ...                 packet_num=7, ramblock="pc.ram",
    ...                 offsets=np.array([8192, 0], dtype=np.uint64))
    >>> raw = encode_packet(pkt, 4, payload=b"x" * 4096)
    >>> len(raw), raw[:4].hex(), raw[64:71]
    (4448, '11223344', b'pc.ram\\x00')
    """
    offsets = as_offsets(packet.offsets)
    if offsets.size != _check_uint("normal_pages", packet.normal_pages, _U32) + _check_uint(
        "zero_pages", packet.zero_pages, _U32
    ):
        raise ValueError(
            f"{offsets.size} offsets, but normal_pages + zero_pages = "
            f"{packet.normal_pages + packet.zero_pages}"
        )
    size = packet_len(page_count)
    data = memoryview(payload).cast("B")
    out = bytearray(size + data.nbytes)
    fill_packet(
        out,
        page_count,
        offsets=offsets,
        normal_pages=packet.normal_pages,
        ramblock=packet.ramblock,
        packet_num=packet.packet_num,
        next_packet_size=packet.next_packet_size,
        flags=packet.flags,
        pages_alloc=packet.pages_alloc,
    )
    out[size:] = data
    return bytes(out)


def check_header(buf: Any) -> int:
    """Check the 12-byte ``MultiFDPacketHdr_t`` at the start of ``buf``; return the flags.

    Raises
    ------
    MagicError, VersionError, FlagsError
        As described in the module documentation.
    TruncatedError
        ``buf`` is shorter than 12 bytes.
    """
    view = memoryview(buf).cast("B")
    if view.nbytes < HEADER_SIZE:
        raise TruncatedError(f"a packet header needs {HEADER_SIZE} bytes, got {view.nbytes}")
    magic, version, flags = _HEADER.unpack_from(view, 0)
    if magic != MULTIFD_MAGIC:
        raise MagicError(f"bad multifd magic {magic:#010x}, expected {MULTIFD_MAGIC:#010x}")
    if version != MULTIFD_VERSION:
        raise VersionError(f"unsupported multifd version {version}, expected {MULTIFD_VERSION}")
    if flags & MULTIFD_FLAG_DEVICE_STATE:
        raise FlagsError("device-state packets are not supported")
    if flags & ~_KNOWN_FLAGS:
        raise FlagsError(f"unknown flag bits {flags & ~_KNOWN_FLAGS:#x} in flags {flags:#x}")
    if flags & MULTIFD_FLAG_COMPRESSION_MASK != MULTIFD_FLAG_NOCOMP:
        raise FlagsError(
            f"compression {flags & MULTIFD_FLAG_COMPRESSION_MASK:#x} is not supported "
            "(only NOCOMP)"
        )
    return int(flags)


def decode_packet(
    buf: Any, *, page_count: int, page_size: int, blocks: Mapping[str, int]
) -> RamPacket:
    """Decode and check the RAM packet in the first ``packet_len(page_count)`` bytes of ``buf``.

    Parameters
    ----------
    buf : buffer
        The fixed-size packet (the payload is not needed).
    page_count : int
        The receiver's offset slots (QEMU's ``multifd_ram_page_count()``).
    page_size : int
        The target page size, for the offset and payload checks.
    blocks : mapping of str to int
        ``used_length`` of each RAM block the receiver knows, by name.

    Returns
    -------
    RamPacket
        With native ``uint64`` offsets (a copy).

    Raises
    ------
    PacketError
        One of its subclasses, as described in the module documentation.

    Examples
    --------
    >>> raw = encode_packet(RamPacket(pages_alloc=2, normal_pages=1, next_packet_size=4096,
    ...                               ramblock="pc.ram", offsets=np.array([4096], np.uint64)), 2)
    >>> pkt = decode_packet(raw, page_count=2, page_size=4096, blocks={"pc.ram": 16384})
    >>> pkt.normal.tolist(), pkt.zero.tolist(), pkt.ramblock
    ([4096], [], 'pc.ram')
    >>> decode_packet(raw, page_count=2, page_size=4096, blocks={"pc.ram": 4096})
    Traceback (most recent call last):
      ...
    multifd_zero.errors.OffsetError: offset[0] = 4096 is past the last page of 'pc.ram' ...
    """
    return PacketDecoder(page_count=page_count, page_size=page_size, blocks=blocks).decode(buf)


class PacketDecoder:
    """:func:`decode_packet` for one receiver: its arguments checked once, not per packet.

    A receiving channel reads the 12-byte header first and checks it with
    :func:`check_header` (a stream that is not multifd fails before more
    bytes are awaited), then reads the rest and hands it to
    :meth:`decode_body` with the flags, so that no field is checked twice.

    Parameters
    ----------
    page_count, page_size, blocks
        As for :func:`decode_packet`.
    """

    def __init__(self, *, page_count: int, page_size: int, blocks: Mapping[str, int]) -> None:
        self.size = packet_len(page_count)
        self.page_count = page_count
        self.page_size = _kernels.check_page_size(page_size)
        if not isinstance(blocks, Mapping):
            raise TypeError(
                f"blocks must be a mapping of names to sizes, not {type(blocks).__name__}"
            )
        for name, used_length in blocks.items():
            if isinstance(used_length, bool) or not isinstance(used_length, int):
                raise TypeError(f"the size of block {name!r} must be an int")
        self.blocks = dict(blocks)

    def decode(self, buf: Any) -> RamPacket:
        """Check the header and decode the packet at the start of ``buf``."""
        view = memoryview(buf).cast("B")
        self._check_size(view)
        return self.decode_body(view, check_header(view))

    def _check_size(self, view: memoryview) -> None:
        if view.nbytes < self.size:
            raise TruncatedError(
                f"a packet of {self.page_count} slots needs {self.size} bytes, got {view.nbytes}"
            )

    def decode_body(self, buf: Any, flags: int) -> RamPacket:
        """Decode a packet whose header :func:`check_header` has passed, returning ``flags``."""
        view = memoryview(buf).cast("B")
        self._check_size(view)
        page_count, page_size = self.page_count, self.page_size
        (_, _, _, pages_alloc, normal, next_size, packet_num, zero, unused32, *unused64) = (
            _FIXED.unpack_from(view, 0)
        )
        if unused32 or any(unused64):
            raise ReservedError("reserved fields of the packet header are not zero")
        if pages_alloc > page_count:
            raise CountError(f"pages_alloc {pages_alloc} is larger than page_count {page_count}")
        if normal > pages_alloc:
            raise CountError(f"normal_pages {normal} is larger than pages_alloc {pages_alloc}")
        if zero > pages_alloc - normal:
            raise CountError(
                f"zero_pages {zero} is larger than pages_alloc - normal_pages "
                f"({pages_alloc} - {normal})"
            )
        if next_size != normal * page_size:
            raise SizeError(
                f"next_packet_size {next_size} is not normal_pages * page_size "
                f"({normal} * {page_size})"
            )
        num = normal + zero
        if num == 0:
            return RamPacket(flags, pages_alloc, 0, 0, next_size, packet_num)
        name_field = bytes(view[_NAME_OFFSET : _NAME_OFFSET + RAMBLOCK_NAME_SIZE - 1])
        raw_name = name_field.split(b"\0", 1)[0]
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise BlockError(f"block name {raw_name!r} is not UTF-8") from None
        used_length = self.blocks.get(name)
        if used_length is None:
            raise BlockError(f"unknown RAM block {name!r}")
        offsets = np.frombuffer(view, dtype=_BE64, count=num, offset=PACKET_FIXED_SIZE).astype(
            np.uint64
        )
        _check_packet_offsets(offsets, name, used_length, page_size)
        return RamPacket(flags, pages_alloc, normal, zero, next_size, packet_num, name, offsets)


def _check_packet_offsets(
    offsets: OffsetArray, name: str, used_length: int, page_size: int
) -> None:
    last = used_length - page_size
    # One reduction each on the good path; the index search only to report an error.
    if last < 0 or int(np.maximum.reduce(offsets)) > last:
        i = int(np.flatnonzero(offsets > np.uint64(max(last, 0)))[0]) if last >= 0 else 0
        raise OffsetError(
            f"offset[{i}] = {int(offsets[i])} is past the last page of {name!r} "
            f"({used_length} bytes)"
        )
    if int(np.bitwise_or.reduce(offsets)) & (page_size - 1):
        i = int(np.flatnonzero(offsets & np.uint64(page_size - 1))[0])
        raise OffsetError(
            f"offset[{i}] = {int(offsets[i])} is not a multiple of page_size {page_size}"
        )


@dataclass(frozen=True)
class MultiFDInit:
    """A decoded channel handshake (``MultiFDInit_t``).

    Attributes
    ----------
    uuid : bytes
        16 bytes naming the migration.
    id : int
        The channel number, 0 to 255.
    """

    uuid: bytes
    id: int


def encode_init(uuid: bytes, channel_id: int) -> bytes:
    """Return the 64-byte handshake a sender channel writes first.

    Examples
    --------
    >>> raw = encode_init(bytes(range(16)), 3)
    >>> len(raw), raw[:8].hex(), raw[24]
    (64, '1122334400000001', 3)
    """
    if not isinstance(uuid, bytes) or len(uuid) != 16:
        raise ValueError("uuid must be 16 bytes")
    return _INIT.pack(
        MULTIFD_MAGIC,
        MULTIFD_VERSION,
        uuid,
        _check_uint("id", channel_id, 255),
        bytes(7),
        0,
        0,
        0,
        0,
    )


def decode_init(
    buf: Any, *, uuid: bytes | None = None, channels: int | None = None
) -> MultiFDInit:
    """Decode and check a 64-byte handshake.

    Parameters
    ----------
    buf : buffer
        At least 64 bytes.
    uuid : bytes, optional
        The migration's uuid; another one raises :class:`~multifd_zero.errors.HandshakeError`.
    channels : int, optional
        The receiver's channel count; an id ``>= channels`` raises
        :class:`~multifd_zero.errors.HandshakeError`.

    Raises
    ------
    MagicError, VersionError, ReservedError, HandshakeError, TruncatedError
    """
    if uuid is not None and (not isinstance(uuid, bytes) or len(uuid) != 16):
        raise TypeError(f"uuid must be 16 bytes, not {type(uuid).__name__} {uuid!r:.40}")
    if channels is not None:
        check_int("channels", channels, 1)
    view = memoryview(buf).cast("B")
    if view.nbytes < HANDSHAKE_SIZE:
        raise TruncatedError(f"a handshake needs {HANDSHAKE_SIZE} bytes, got {view.nbytes}")
    magic, version, got_uuid, channel_id, unused1, *unused2 = _INIT.unpack_from(view, 0)
    if magic != MULTIFD_MAGIC:
        raise MagicError(f"bad handshake magic {magic:#010x}, expected {MULTIFD_MAGIC:#010x}")
    if version != MULTIFD_VERSION:
        raise VersionError(f"unsupported handshake version {version}")
    if any(unused1) or any(unused2):
        raise ReservedError("reserved fields of the handshake are not zero")
    if uuid is not None and got_uuid != uuid:
        raise HandshakeError(f"handshake for migration {got_uuid.hex()}, expected {uuid.hex()}")
    if channels is not None and channel_id >= channels:
        raise HandshakeError(f"channel id {channel_id} is out of range for {channels} channels")
    return MultiFDInit(bytes(got_uuid), int(channel_id))
