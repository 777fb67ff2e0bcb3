"""The main migration channel: QEMU's RAM stream records, for legacy zero pages and syncs.

With multifd, QEMU's main channel still carries the RAM section: the block
sizes at setup, legacy zero pages (``save_zero_page``), the
``MULTIFD_FLUSH`` that makes the destination wait for every channel's SYNC,
and ``EOS`` at the end of each round. This module writes and reads those
records, a subset of QEMU's stream:

- file header: ``QEVM`` magic (``0x5145564d``) and version 3, BE32 each;
- sections, each a one-byte type: ``QEMU_VM_SECTION_START`` (1) for the
  setup, ``QEMU_VM_SECTION_PART`` (2) for each round, then RAM records up to
  ``EOS``; ``QEMU_VM_EOF`` (0) ends the stream. (QEMU's section ids, idstrs,
  instance and version ids and footers are left out: only RAM is migrated.)
- a RAM record is a BE64 word: the page offset OR'ed with ``RAM_SAVE_FLAG_*``
  bits below the page size. Without ``CONTINUE`` (0x20) it is followed by
  the block name (one length byte, then the name). Records used:

  - ``MEM_SIZE`` (0x04): the word's offset part is the total RAM size; then
    name and BE64 ``used_length`` for each block;
  - ``ZERO`` (0x02): a zero page, followed by one byte that must be 0:
    9 bytes a page within a block, as QEMU counts;
  - ``MULTIFD_FLUSH`` (0x200) and ``EOS`` (0x10): no payload.

Zero records are written and read a run at a time with numpy (a strided view
over the buffered stream), not page by page in Python.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .. import _kernels
from .._checks import OffsetArray
from ..errors import BlockError, FlagsError, MagicError, OffsetError, TruncatedError, VersionError
from ._source import ByteSource

__all__ = [
    "QEMU_VM_EOF",
    "QEMU_VM_FILE_MAGIC",
    "QEMU_VM_FILE_VERSION",
    "QEMU_VM_SECTION_PART",
    "QEMU_VM_SECTION_START",
    "RAM_SAVE_FLAG_CONTINUE",
    "RAM_SAVE_FLAG_EOS",
    "RAM_SAVE_FLAG_MEM_SIZE",
    "RAM_SAVE_FLAG_MULTIFD_FLUSH",
    "RAM_SAVE_FLAG_PAGE",
    "RAM_SAVE_FLAG_ZERO",
    "Flag",
    "MemSize",
    "RamStreamReader",
    "ZeroRun",
    "encode_file_header",
    "encode_flag",
    "encode_mem_size",
    "encode_section",
    "encode_zero_records",
]

QEMU_VM_FILE_MAGIC = 0x5145564D
QEMU_VM_FILE_VERSION = 3
QEMU_VM_EOF = 0x00
QEMU_VM_SECTION_START = 0x01
QEMU_VM_SECTION_PART = 0x02

RAM_SAVE_FLAG_ZERO = 0x02
RAM_SAVE_FLAG_MEM_SIZE = 0x04
RAM_SAVE_FLAG_PAGE = 0x08
RAM_SAVE_FLAG_EOS = 0x10
RAM_SAVE_FLAG_CONTINUE = 0x20
RAM_SAVE_FLAG_MULTIFD_FLUSH = 0x200

_BE64 = struct.Struct(">Q")
_FILE_HEADER = struct.Struct(">II")
_RECORD = np.dtype([("word", ">u8"), ("byte", "u1")])
_ZERO_CONT = RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_CONTINUE
_BUFFER = 1 << 20

assert _RECORD.itemsize == 9


def encode_file_header() -> bytes:
    """The 8-byte stream header: ``QEVM`` and version 3."""
    return _FILE_HEADER.pack(QEMU_VM_FILE_MAGIC, QEMU_VM_FILE_VERSION)


def encode_section(kind: int) -> bytes:
    """One section-type byte: ``QEMU_VM_SECTION_START``, ``_PART`` or ``QEMU_VM_EOF``."""
    if kind not in (QEMU_VM_EOF, QEMU_VM_SECTION_START, QEMU_VM_SECTION_PART):
        raise ValueError(f"unknown section type {kind}")
    return bytes([kind])


def encode_flag(flag: int) -> bytes:
    """A record that is only a flag: ``RAM_SAVE_FLAG_EOS`` or ``RAM_SAVE_FLAG_MULTIFD_FLUSH``."""
    if flag not in (RAM_SAVE_FLAG_EOS, RAM_SAVE_FLAG_MULTIFD_FLUSH):
        raise ValueError(f"{flag:#x} is not a flag-only record")
    return _BE64.pack(flag)


def _name(idstr: str) -> bytes:
    raw = idstr.encode("utf-8")
    if not 1 <= len(raw) <= 255:
        raise ValueError(f"a block name must be 1 to 255 bytes, got {idstr!r}")
    return bytes([len(raw)]) + raw


def encode_mem_size(blocks: Sequence[tuple[str, int]]) -> bytes:
    """The setup record: total RAM size, then each block's name and ``used_length``.

    Examples
    --------
    >>> encode_mem_size([("pc.ram", 8192)]).hex()
    '00000000000020040670632e72616d0000000000002000'
    """
    total = sum(length for _, length in blocks)
    out = [_BE64.pack(total | RAM_SAVE_FLAG_MEM_SIZE)]
    for idstr, length in blocks:
        out.append(_name(idstr) + _BE64.pack(length))
    return b"".join(out)


def encode_zero_records(idstr: str, offsets: OffsetArray, *, continued: bool) -> bytes:
    """Zero-page records for ``offsets`` of one block, in order.

    Parameters
    ----------
    idstr : str
        The block's name.
    offsets : numpy.ndarray
        Page-aligned ``uint64`` offsets.
    continued : bool
        True when the previous RAM record on the stream was for this block:
        every record then carries ``CONTINUE`` (9 bytes). Otherwise the first
        one names the block.

    Examples
    --------
    >>> encode_zero_records("pc.ram", np.array([4096, 8192], np.uint64), continued=True).hex()
    '000000000000102200000000000000202200'
    """
    n = int(offsets.size)
    if n == 0:
        return b""
    records = np.empty(n, dtype=_RECORD)
    records["word"] = offsets | np.uint64(_ZERO_CONT)
    records["byte"] = 0
    if continued:
        return records.tobytes()
    head = _BE64.pack(int(offsets[0]) | RAM_SAVE_FLAG_ZERO) + _name(idstr) + b"\0"
    return head + records[1:].tobytes()


@dataclass(frozen=True, eq=False)
class ZeroRun:
    """Consecutive zero-page records of one block, checked and ready to apply."""

    idstr: str
    offsets: OffsetArray


@dataclass(frozen=True)
class Flag:
    """A flag-only record (``EOS`` or ``MULTIFD_FLUSH``)."""

    flag: int


@dataclass(frozen=True)
class MemSize:
    """The setup record: ``used_length`` of each block, by name, in stream order."""

    blocks: dict[str, int]


class RamStreamReader:
    """Reads the main stream from a channel, a buffer at a time.

    All errors are :class:`~multifd_zero.PacketError` subclasses; a run
    of zero records is checked completely before it is returned.

    Parameters
    ----------
    channel : ByteSource
        The main channel, positioned after its first four bytes (the
        ``QEVM`` magic, which the caller used to tell it from a multifd
        channel), or at the start when ``magic_read`` is False.
    page_size : int
        The target page size: the flag bits are those below it.
    blocks : mapping of str to int
        ``used_length`` of each block the destination has.
    magic_read : bool, default True
        Whether the caller has already read the ``QEVM`` magic.
    keep_waiting : callable, optional
        Asked when a receive times out: True waits the channel's ``timeout``
        more (the main channel is idle while the multifd channels work).
    """

    def __init__(
        self,
        channel: ByteSource,
        *,
        page_size: int,
        blocks: Mapping[str, int],
        magic_read: bool = True,
        keep_waiting: Callable[[], bool] | None = None,
    ) -> None:
        self._channel = channel
        page_size = _kernels.check_page_size(page_size)
        self._page_size = page_size
        self._flag_mask = page_size - 1
        self._blocks = dict(blocks)
        self._buf = bytearray(_BUFFER)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._last_block: str | None = None
        self._magic_read = magic_read
        self._keep_waiting = keep_waiting
        self.bytes_read = 4 if magic_read else 0

    # -- buffering

    def _fill(self, need: int, what: str) -> bool:
        """Make ``need`` bytes available; False if the stream ended cleanly before any."""
        if need > _BUFFER:
            raise ValueError(f"a record of {need} bytes does not fit the buffer")
        if self._end - self._start >= need:
            return True
        if self._start:
            left = self._end - self._start
            self._view[:left] = self._view[self._start : self._end]
            self._start, self._end = 0, left
        while self._end < need:  # each pass reads a byte, ends, or waits while told to
            try:
                count = self._channel.recv_into(self._view[self._end :])
            except TimeoutError:
                if self._keep_waiting is not None and self._keep_waiting():
                    continue
                raise
            if count == 0:
                if self._end == 0:
                    return False
                raise TruncatedError(f"the main stream ended inside {what}")
            self._end += count
        return True

    def _take(self, count: int, what: str) -> bytes:
        if not self._fill(count, what):
            raise TruncatedError(f"the main stream ended before {what}")
        data = bytes(self._view[self._start : self._start + count])
        self._start += count
        self.bytes_read += count
        return data

    # -- stream structure

    def read_header(self) -> None:
        """Read and check the file header (only the version when the magic was read)."""
        if not self._magic_read:
            (magic,) = struct.unpack(">I", self._take(4, "the stream header"))
            if magic != QEMU_VM_FILE_MAGIC:
                raise MagicError(f"bad stream magic {magic:#010x}")
        (version,) = struct.unpack(">I", self._take(4, "the stream header"))
        if version != QEMU_VM_FILE_VERSION:
            raise VersionError(f"unsupported stream version {version}")

    def read_section(self) -> int:
        """Return the next section type (``START``, ``PART`` or ``QEMU_VM_EOF``)."""
        (kind,) = self._take(1, "a section")
        if kind not in (QEMU_VM_EOF, QEMU_VM_SECTION_START, QEMU_VM_SECTION_PART):
            raise FlagsError(f"unknown section type {kind:#x}")
        return kind

    def at_end(self) -> bool:
        """True if the peer closed the stream here, at a record boundary."""
        return not self._fill(1, "a section")

    def read_record(self) -> ZeroRun | Flag | MemSize:
        """Return the next record (a run of zero records counts as one)."""
        word = _BE64.unpack(self._take(8, "a record"))[0]
        flags = word & self._flag_mask
        offset = word & ~self._flag_mask
        if flags in (RAM_SAVE_FLAG_EOS, RAM_SAVE_FLAG_MULTIFD_FLUSH):
            if offset:
                raise FlagsError(f"record {word:#x}: a flag record with an offset")
            return Flag(flags)
        if flags == RAM_SAVE_FLAG_MEM_SIZE:
            return self._mem_size(offset)
        if flags & ~_ZERO_CONT or not flags & RAM_SAVE_FLAG_ZERO:
            raise FlagsError(f"unsupported RAM record flags {flags:#x}")
        idstr = self._block(flags)
        if self._take(1, "a zero record")[0] != 0:
            raise FlagsError("a zero-page record whose fill byte is not 0")
        first = np.array([offset], dtype=np.uint64)
        rest = self._zero_run()
        offsets = np.concatenate((first, rest)) if rest.size else first
        _check_offsets(offsets, idstr, self._blocks[idstr], self._page_size)
        return ZeroRun(idstr, offsets)

    def _block(self, flags: int) -> str:
        if flags & RAM_SAVE_FLAG_CONTINUE:
            if self._last_block is None:
                raise BlockError("a CONTINUE record before any block was named")
            return self._last_block
        (length,) = self._take(1, "a block name")
        raw = self._take(length, "a block name")
        try:
            idstr = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BlockError(f"block name {raw!r} is not UTF-8") from None
        if idstr not in self._blocks:
            raise BlockError(f"unknown RAM block {idstr!r}")
        self._last_block = idstr
        return idstr

    def _zero_run(self) -> OffsetArray:
        """Take the buffered ``ZERO|CONTINUE`` records that follow, as offsets."""
        count = (self._end - self._start) // _RECORD.itemsize
        if count == 0:
            return np.zeros(0, dtype=np.uint64)
        records = np.frombuffer(self._buf, dtype=_RECORD, count=count, offset=self._start)
        words = records["word"]
        not_zero = np.flatnonzero((words & np.uint64(self._flag_mask)) != _ZERO_CONT)
        run = int(not_zero[0]) if not_zero.size else count
        if run and records["byte"][:run].any():
            raise FlagsError("a zero-page record whose fill byte is not 0")
        offsets: OffsetArray = np.bitwise_and(
            words[:run], ~np.uint64(self._flag_mask), dtype=np.uint64
        )
        self._start += run * _RECORD.itemsize
        self.bytes_read += run * _RECORD.itemsize
        return offsets

    def _mem_size(self, total: int) -> MemSize:
        blocks: dict[str, int] = {}
        seen = 0
        while seen < total:  # each pass consumes a block of at least one page
            (length,) = self._take(1, "a block name")
            raw = self._take(length, "a block name")
            (used,) = _BE64.unpack(self._take(8, "a block size"))
            idstr = raw.decode("utf-8", errors="replace")
            if idstr not in self._blocks:
                raise BlockError(f"the source has a RAM block {idstr!r} the destination lacks")
            if used != self._blocks[idstr]:
                raise BlockError(
                    f"RAM block {idstr!r} is {used} bytes on the source, "
                    f"{self._blocks[idstr]} here"
                )
            if used == 0 or idstr in blocks:
                raise BlockError(f"bad MEM_SIZE entry for {idstr!r}")
            blocks[idstr] = used
            seen += used
        if seen != total:
            raise BlockError(f"MEM_SIZE total {total} does not match its blocks ({seen})")
        return MemSize(blocks)


def _check_offsets(offsets: OffsetArray, idstr: str, used_length: int, page_size: int) -> None:
    last = used_length - page_size
    bad = np.flatnonzero(offsets > np.uint64(max(last, 0))) if last >= 0 else np.arange(1)
    if bad.size:
        raise OffsetError(
            f"zero record for offset {int(offsets[int(bad[0])])} is past the last page "
            f"of {idstr!r} ({used_length} bytes)"
        )
