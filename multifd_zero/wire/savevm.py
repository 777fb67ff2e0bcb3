"""QEMU 10's precopy main migration stream: an incremental reader and a writer.

The layout, as QEMU 10.0 writes it (``migration/savevm.c``:
``qemu_savevm_state_header``, ``qemu_savevm_state_setup``,
``qemu_savevm_state_iterate``, ``qemu_savevm_state_complete_precopy``) and
reads it (``qemu_loadvm_state``, ``qemu_loadvm_state_main``); every integer is
big-endian:

- file header: ``QEVM`` (``QEMU_VM_FILE_MAGIC``) and version 3;
- ``QEMU_VM_CONFIGURATION`` (7): the ``configuration`` vmstate: BE32 length
  and the machine type, then optional subsections (``QEMU_VM_SUBSECTION`` 5,
  counted name, BE32 version): ``configuration/target-page-bits`` (BE32),
  ``configuration/capabilities`` (BE32 count, counted capability names; only
  the capabilities QEMU validates, ``x-ignore-shared`` and ``mapped-ram``) and
  ``configuration/uuid`` (16 bytes, with ``validate-uuid``). ``-M pc`` with
  default capabilities sends none of them. No footer.
- sections: ``SECTION_START`` (1) and ``SECTION_FULL`` (4) carry a header
  (BE32 section id, counted idstr, BE32 instance id, BE32 version id);
  ``SECTION_PART`` (2) and ``SECTION_END`` (3) only the BE32 section id. Each
  ends with a footer, ``QEMU_VM_SECTION_FOOTER`` (0x7e) and the BE32 section
  id (``save_section_footer`` / ``check_section_footer``).
- the RAM section (``ram``, version 4, ``migration/ram.c``) holds records up
  to ``EOS``: a BE64 word, the page offset OR'ed with ``RAM_SAVE_FLAG_*``
  below the target page size (``migration/ram.h``): ``MEM_SIZE`` (the START
  section: total, then a counted name and BE64 ``used_length`` per block,
  ``ram_save_setup`` / ``parse_ramblocks``), ``ZERO`` (block name unless
  ``CONTINUE``, then one 0 byte), ``PAGE`` (block name unless ``CONTINUE``,
  then the page), ``MULTIFD_FLUSH`` (the destination waits for every multifd
  channel's SYNC, ``multifd_recv_sync_main``) and ``EOS``.
- ``QEMU_VM_COMMAND`` (8): BE16 command, BE16 length, data
  (``loadvm_process_command``); precopy sends ``MIG_CMD_SWITCHOVER_START``
  (11, length 0) before the END sections.
- after the RAM END section: the non-iterable devices (``SECTION_FULL``),
  ``QEMU_VM_EOF`` (0) and ``QEMU_VM_VMDESCRIPTION`` (6: BE32 length, JSON).
  Their vmstate cannot be skipped without the devices' descriptions, so the
  reader hands everything from there to the end of the stream over as one
  :class:`DeviceState`, byte for byte, after checking its frame (it ends with
  ``QEMU_VM_EOF`` and a well-formed VM description).

What the reader refuses (every error a :class:`~multifd_zero.errors.StreamError`
with the byte offset): a bad magic or version; a missing configuration; an
unknown subsection, ``x-ignore-shared`` or ``mapped-ram`` (they change the
RAM records); a machine type or name longer than QEMU allows; unknown section
types; iterable sections other than ``ram``; a footer that is missing or
names another section; RAM records with ``XBZRLE``, ``HOOK`` (RDMA),
``COMPRESS_PAGE`` or unknown flags; ``CONTINUE`` before any block was named;
block lists that do not add up, repeat a block, have a zero, unaligned or
2**63-and-more length; a page of an unknown block or past its block; pages
before ``MEM_SIZE``; postcopy, return-path, COLO and packaged commands;
device state larger than ``max_device_state``; and a stream that ends
anywhere but at the end of the VM description.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import (
    StreamBlockError,
    StreamError,
    StreamFlagsError,
    StreamMagicError,
    StreamOffsetError,
    StreamSectionError,
    StreamSizeError,
    StreamTruncatedError,
    StreamVersionError,
    UnsupportedStreamError,
)
from ._source import ByteSource

__all__ = [
    "MIG_CMD_SWITCHOVER_START",
    "QEMU_VM_COMMAND",
    "QEMU_VM_CONFIGURATION",
    "QEMU_VM_EOF",
    "QEMU_VM_FILE_MAGIC",
    "QEMU_VM_FILE_VERSION",
    "QEMU_VM_SECTION_END",
    "QEMU_VM_SECTION_FOOTER",
    "QEMU_VM_SECTION_FULL",
    "QEMU_VM_SECTION_PART",
    "QEMU_VM_SECTION_START",
    "QEMU_VM_SUBSECTION",
    "QEMU_VM_VMDESCRIPTION",
    "RAM_SAVE_FLAG_CONTINUE",
    "RAM_SAVE_FLAG_EOS",
    "RAM_SAVE_FLAG_MEM_SIZE",
    "RAM_SAVE_FLAG_MULTIFD_FLUSH",
    "RAM_SAVE_FLAG_PAGE",
    "RAM_SAVE_FLAG_ZERO",
    "RAM_SECTION_VERSION",
    "Command",
    "Configuration",
    "DeviceState",
    "Eos",
    "Event",
    "FileHeader",
    "MemSize",
    "MultifdFlush",
    "Pages",
    "SectionFooter",
    "SectionHeader",
    "StreamReader",
    "StreamWriter",
    "ZeroPages",
    "check_device_state",
    "encode_events",
    "read_stream",
]

QEMU_VM_FILE_MAGIC = 0x5145564D
QEMU_VM_FILE_VERSION_COMPAT = 0x00000002
QEMU_VM_FILE_VERSION = 0x00000003

QEMU_VM_EOF = 0x00
QEMU_VM_SECTION_START = 0x01
QEMU_VM_SECTION_PART = 0x02
QEMU_VM_SECTION_END = 0x03
QEMU_VM_SECTION_FULL = 0x04
QEMU_VM_SUBSECTION = 0x05
QEMU_VM_VMDESCRIPTION = 0x06
QEMU_VM_CONFIGURATION = 0x07
QEMU_VM_COMMAND = 0x08
QEMU_VM_SECTION_FOOTER = 0x7E

RAM_SAVE_FLAG_FULL = 0x01  # obsolete
RAM_SAVE_FLAG_ZERO = 0x02
RAM_SAVE_FLAG_MEM_SIZE = 0x04
RAM_SAVE_FLAG_PAGE = 0x08
RAM_SAVE_FLAG_EOS = 0x10
RAM_SAVE_FLAG_CONTINUE = 0x20
RAM_SAVE_FLAG_XBZRLE = 0x40
RAM_SAVE_FLAG_HOOK = 0x80
RAM_SAVE_FLAG_COMPRESS_PAGE = 0x100
RAM_SAVE_FLAG_MULTIFD_FLUSH = 0x200

RAM_SECTION_VERSION = 4
"""``register_savevm_live("ram", 0, 4, ...)`` in ``migration/ram.c``."""

# enum qemu_vm_cmd, migration/savevm.c
MIG_CMD_INVALID = 0
MIG_CMD_OPEN_RETURN_PATH = 1
MIG_CMD_PING = 2
MIG_CMD_POSTCOPY_ADVISE = 3
MIG_CMD_POSTCOPY_LISTEN = 4
MIG_CMD_POSTCOPY_RUN = 5
MIG_CMD_POSTCOPY_RAM_DISCARD = 6
MIG_CMD_PACKAGED = 7
MIG_CMD_ENABLE_COLO = 8
MIG_CMD_POSTCOPY_RESUME = 9
MIG_CMD_RECV_BITMAP = 10
MIG_CMD_SWITCHOVER_START = 11
MIG_CMD_MAX = 12

_COMMAND_NAMES = {
    MIG_CMD_OPEN_RETURN_PATH: "OPEN_RETURN_PATH",
    MIG_CMD_PING: "PING",
    MIG_CMD_POSTCOPY_ADVISE: "POSTCOPY_ADVISE",
    MIG_CMD_POSTCOPY_LISTEN: "POSTCOPY_LISTEN",
    MIG_CMD_POSTCOPY_RUN: "POSTCOPY_RUN",
    MIG_CMD_POSTCOPY_RAM_DISCARD: "POSTCOPY_RAM_DISCARD",
    MIG_CMD_PACKAGED: "PACKAGED",
    MIG_CMD_ENABLE_COLO: "ENABLE_COLO",
    MIG_CMD_POSTCOPY_RESUME: "POSTCOPY_RESUME",
    MIG_CMD_RECV_BITMAP: "RECV_BITMAP",
    MIG_CMD_SWITCHOVER_START: "SWITCHOVER_START",
}
# Fixed lengths from mig_cmd_args (None: variable).
_COMMAND_LENGTHS: dict[int, int | None] = {
    MIG_CMD_OPEN_RETURN_PATH: 0,
    MIG_CMD_PING: 4,
    MIG_CMD_POSTCOPY_ADVISE: None,
    MIG_CMD_POSTCOPY_LISTEN: 0,
    MIG_CMD_POSTCOPY_RUN: 0,
    MIG_CMD_POSTCOPY_RAM_DISCARD: None,
    MIG_CMD_PACKAGED: 4,
    MIG_CMD_ENABLE_COLO: 0,
    MIG_CMD_POSTCOPY_RESUME: 0,
    MIG_CMD_RECV_BITMAP: None,
    MIG_CMD_SWITCHOVER_START: 0,
}

_CAP_UNSUPPORTED = {"x-ignore-shared", "mapped-ram"}
_LIMIT_63 = 1 << 63
_BUFFER = 1 << 20
_DEFAULT_MAX_DEVICE_STATE = 256 << 20
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")
_SECTION_NAMES = {
    QEMU_VM_EOF: "QEMU_VM_EOF",
    QEMU_VM_SECTION_START: "QEMU_VM_SECTION_START",
    QEMU_VM_SECTION_PART: "QEMU_VM_SECTION_PART",
    QEMU_VM_SECTION_END: "QEMU_VM_SECTION_END",
    QEMU_VM_SECTION_FULL: "QEMU_VM_SECTION_FULL",
    QEMU_VM_SUBSECTION: "QEMU_VM_SUBSECTION",
    QEMU_VM_VMDESCRIPTION: "QEMU_VM_VMDESCRIPTION",
    QEMU_VM_CONFIGURATION: "QEMU_VM_CONFIGURATION",
    QEMU_VM_COMMAND: "QEMU_VM_COMMAND",
    QEMU_VM_SECTION_FOOTER: "QEMU_VM_SECTION_FOOTER",
}

OffsetArray = npt.NDArray[np.uint64]


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class FileHeader:
    """The file header (``QEVM``, version 3)."""

    version: int = QEMU_VM_FILE_VERSION


@dataclass(frozen=True)
class Configuration:
    """The ``QEMU_VM_CONFIGURATION`` section.

    Attributes
    ----------
    machine_type : str
        E.g. ``pc-i440fx-10.0``.
    target_page_bits : int or None
        From the ``configuration/target-page-bits`` subsection, if sent.
    capabilities : tuple of str
        From ``configuration/capabilities``, if sent.
    uuid : bytes or None
        From ``configuration/uuid``, if sent.
    raw : bytes
        The section as received, type byte included (a restore replays it).
    """

    machine_type: str
    target_page_bits: int | None = None
    capabilities: tuple[str, ...] = ()
    uuid: bytes | None = None
    raw: bytes = b""


@dataclass(frozen=True)
class SectionHeader:
    """The start of a RAM section (``START``, ``PART`` or ``END``).

    ``idstr``, ``instance_id`` and ``version_id`` are those of the RAM
    section's START header, repeated for PART and END (which only carry the id).
    """

    kind: int
    section_id: int
    idstr: str = "ram"
    instance_id: int = 0
    version_id: int = RAM_SECTION_VERSION


@dataclass(frozen=True)
class SectionFooter:
    """A section footer (``0x7e`` and the section id)."""

    section_id: int


@dataclass(frozen=True)
class MemSize:
    """The block list: ``(idstr, used_length)`` of every block, in stream order."""

    blocks: tuple[tuple[str, int], ...]

    @property
    def total(self) -> int:
        """Sum of the block lengths (the record's offset field)."""
        return sum(length for _, length in self.blocks)


@dataclass(frozen=True, eq=False)
class ZeroPages:
    """Consecutive ``ZERO`` records of one block (``ram_handle_zero`` on the destination)."""

    idstr: str
    offsets: OffsetArray


@dataclass(frozen=True, eq=False)
class Pages:
    """Consecutive ``PAGE`` records of one block: ``data`` holds the pages in order."""

    idstr: str
    offsets: OffsetArray
    data: bytes


@dataclass(frozen=True)
class MultifdFlush:
    """``RAM_SAVE_FLAG_MULTIFD_FLUSH``: wait for every multifd channel's SYNC."""


@dataclass(frozen=True)
class Eos:
    """``RAM_SAVE_FLAG_EOS``: the end of a RAM section's records."""


@dataclass(frozen=True)
class Command:
    """A ``QEMU_VM_COMMAND`` record this reader accepts (``MIG_CMD_SWITCHOVER_START``)."""

    cmd: int
    name: str
    data: bytes = b""


@dataclass(frozen=True, eq=False)
class DeviceState:
    """Everything after the RAM END section, byte for byte (device sections, EOF, VM description).

    Attributes
    ----------
    raw : bytes
    vmdescription : dict
        The parsed ``QEMU_VM_VMDESCRIPTION`` JSON.
    """

    raw: bytes
    vmdescription: dict[str, Any] = field(default_factory=dict)


Event = (
    FileHeader
    | Configuration
    | SectionHeader
    | SectionFooter
    | MemSize
    | ZeroPages
    | Pages
    | MultifdFlush
    | Eos
    | Command
    | DeviceState
)
"""What :meth:`StreamReader.events` yields: one of the event classes above."""


# ---------------------------------------------------------------- reader


class StreamReader:
    """Reads a QEMU 10 precopy main stream, yielding its records as events as they arrive.

    Input is buffered (1 MiB reads), so that a 9-byte ``ZERO`` record costs
    no system call; runs of ``ZERO`` or ``PAGE`` records of one block that are
    in the buffer come out as one event, decoded with numpy.

    Parameters
    ----------
    source : ByteSource
        Anything with ``recv_into(memoryview) -> int`` (0 at end of stream).
    page_size : int, default 4096
        The target page size (``TARGET_PAGE_SIZE``; 4 KiB for x86).
    magic_read : bool, default False
        True when the caller already consumed the four ``QEVM`` bytes (to
        tell the main channel from multifd channels).
    max_device_state : int, optional
        Largest device-state tail accepted, in bytes (default 256 MiB).

    Attributes
    ----------
    offset : int
        Bytes of the stream consumed so far.
    blocks : dict of str to int
        The block list, once ``MEM_SIZE`` has been read.
    """

    def __init__(
        self,
        source: ByteSource,
        *,
        page_size: int = 4096,
        magic_read: bool = False,
        max_device_state: int = _DEFAULT_MAX_DEVICE_STATE,
    ) -> None:
        if page_size < 1024 or page_size & (page_size - 1) or page_size > (1 << 21):
            raise ValueError(f"page_size must be a power of two from 1 KiB to 2 MiB: {page_size}")
        self._source = source
        self._page_size = page_size
        self._mask = page_size - 1
        self._magic_read = magic_read
        self._max_device_state = max_device_state
        self._buf = bytearray(max(_BUFFER, 4 * (page_size + 8)))
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._eof = False
        self.offset = 4 if magic_read else 0
        self.blocks: dict[str, int] = {}
        self._last_block: str | None = None
        self._ram: SectionHeader | None = None
        self._ram_done = False
        self._page_rec = np.dtype([("word", ">u8"), ("data", "u1", (page_size,))])
        self._zero_rec = np.dtype([("word", ">u8"), ("byte", "u1")])

    # -- buffering

    def _fill(self, need: int) -> bool:
        """Make ``need`` bytes available; False if the stream ends first."""
        if self._end - self._start >= need:
            return True
        if need > len(self._buf):
            raise ValueError(f"a read of {need} bytes does not fit the buffer")
        if self._start:
            left = self._end - self._start
            self._view[:left] = self._view[self._start : self._end]
            self._start, self._end = 0, left
        while self._end < need and not self._eof:
            count = self._source.recv_into(self._view[self._end :])
            if count == 0:
                self._eof = True
            self._end += count
        return self._end >= need

    def _take(self, count: int, what: str) -> memoryview:
        if not self._fill(count):
            raise StreamTruncatedError(f"the stream ended inside {what}", self.offset)
        view = self._view[self._start : self._start + count]
        self._start += count
        self.offset += count
        return view

    def _u8(self, what: str) -> int:
        return int(self._take(1, what)[0])

    def _be16(self, what: str) -> int:
        return int(_BE16.unpack(self._take(2, what))[0])

    def _be32(self, what: str) -> int:
        return int(_BE32.unpack(self._take(4, what))[0])

    def _be64(self, what: str) -> int:
        return int(_BE64.unpack(self._take(8, what))[0])

    def _counted(self, what: str) -> str:
        """Read a counted string (``qemu_get_counted_string``): a length byte, then the text."""
        at = self.offset
        length = self._u8(what)
        raw = bytes(self._take(length, what))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise StreamFlagsError(f"{what} {raw!r} is not UTF-8", at) from None

    def _at_clean_end(self) -> bool:
        return not self._fill(1)

    # -- the stream

    def events(self) -> Iterator[Event]:
        """Yield the stream's events in order, up to and including :class:`DeviceState`.

        Raises
        ------
        StreamError
            One of its subclasses, at the first bad byte; nothing after it is yielded.
        """
        yield self._header()
        yield self._configuration()
        while True:
            at = self.offset
            if self._ram_done:
                yield self._device_state()
                return
            kind = self._u8("a section type")
            if kind in (QEMU_VM_SECTION_START, QEMU_VM_SECTION_FULL):
                yield from self._section_start_full(kind, at)
            elif kind in (QEMU_VM_SECTION_PART, QEMU_VM_SECTION_END):
                yield from self._section_part_end(kind, at)
            elif kind == QEMU_VM_COMMAND:
                yield self._command(at)
            elif kind == QEMU_VM_EOF:
                raise StreamSectionError("QEMU_VM_EOF before the RAM END section", at)
            elif kind in _SECTION_NAMES:
                raise StreamSectionError(f"unexpected {_SECTION_NAMES[kind]} here", at)
            else:
                raise StreamFlagsError(f"unknown section type {kind:#x}", at)

    def _header(self) -> FileHeader:
        if not self._magic_read:
            magic = self._be32("the file header")
            if magic != QEMU_VM_FILE_MAGIC:
                raise StreamMagicError(
                    f"bad file magic {magic:#010x}, not a migration stream (QEVM)", 0
                )
        version = self._be32("the file header")
        if version == QEMU_VM_FILE_VERSION_COMPAT:
            raise StreamVersionError("stream version 2 is obsolete", 4)
        if version != QEMU_VM_FILE_VERSION:
            raise StreamVersionError(f"unsupported stream version {version}", 4)
        return FileHeader(version)

    def _configuration(self) -> Configuration:
        at = self.offset
        kind = self._u8("the configuration section")
        if kind != QEMU_VM_CONFIGURATION:
            raise StreamSectionError(f"configuration section missing (got type {kind:#x})", at)
        at = self.offset
        length = self._be32("the machine type")
        if not 1 <= length <= 255:
            raise StreamSizeError(f"machine type length {length} is not 1 to 255", at)
        name = bytes(self._take(length, "the machine type"))
        try:
            machine = name.decode("ascii")
        except UnicodeDecodeError:
            raise StreamFlagsError(f"machine type {name!r} is not ASCII", at + 4) from None
        page_bits: int | None = None
        caps: list[str] = []
        uuid: bytes | None = None
        seen: set[str] = set()
        while self._fill(1) and self._buf[self._start] == QEMU_VM_SUBSECTION:
            sub_at = self.offset
            self._take(1, "a subsection")
            sub = self._counted("a subsection name")
            version = self._be32("a subsection version")
            if sub in seen:
                raise StreamSectionError(f"subsection {sub!r} appears twice", sub_at)
            seen.add(sub)
            if version != 1:
                raise StreamVersionError(f"subsection {sub!r} version {version}", sub_at)
            if sub == "configuration/target-page-bits":
                page_bits = self._be32("target-page-bits")
                if 1 << page_bits != self._page_size:
                    raise UnsupportedStreamError(
                        f"target page bits {page_bits}, this reader uses {self._page_size}",
                        sub_at,
                    )
            elif sub == "configuration/capabilities":
                count = self._be32("the capability count")
                if count > 64:
                    raise StreamSizeError(f"{count} capabilities", sub_at)
                for _ in range(count):
                    cap_at = self.offset
                    cap = self._counted("a capability name")
                    if cap in _CAP_UNSUPPORTED:
                        raise UnsupportedStreamError(
                            f"capability {cap!r} changes the RAM records; not supported",
                            cap_at,
                        )
                    caps.append(cap)
            elif sub == "configuration/uuid":
                uuid = bytes(self._take(16, "the uuid"))
            else:
                raise UnsupportedStreamError(f"unknown configuration subsection {sub!r}", sub_at)
        # Re-encoded in QEMU's subsection order: the bytes a restore sends.
        raw_all = StreamWriter.configuration(
            machine, target_page_bits=page_bits, capabilities=caps, uuid=uuid
        )
        return Configuration(machine, page_bits, tuple(caps), uuid, raw_all)

    def _section_start_full(self, kind: int, at: int) -> Iterator[Event]:
        section_id = self._be32("a section header")
        idstr = self._counted("a section idstr")
        instance_id = self._be32("a section header")
        version_id = self._be32("a section header")
        if idstr != "ram":
            if kind == QEMU_VM_SECTION_START:
                raise UnsupportedStreamError(
                    f"iterable section {idstr!r} (only 'ram' is supported)", at
                )
            raise StreamSectionError(f"device section {idstr!r} before the RAM END section", at)
        if kind == QEMU_VM_SECTION_FULL:
            raise UnsupportedStreamError("RAM in a SECTION_FULL (savevm snapshot)", at)
        if self._ram is not None:
            raise StreamSectionError("a second RAM START section", at)
        if version_id != RAM_SECTION_VERSION:
            raise StreamVersionError(
                f"RAM section version {version_id}, expected {RAM_SECTION_VERSION}", at
            )
        header = SectionHeader(kind, section_id, idstr, instance_id, version_id)
        self._ram = header
        yield header
        yield from self._ram_records(kind)
        yield self._footer(section_id)

    def _section_part_end(self, kind: int, at: int) -> Iterator[Event]:
        section_id = self._be32("a section header")
        ram = self._ram
        if ram is None or section_id != ram.section_id:
            raise StreamSectionError(f"unknown section id {section_id}", at)
        yield SectionHeader(kind, section_id, ram.idstr, ram.instance_id, ram.version_id)
        yield from self._ram_records(kind)
        yield self._footer(section_id)
        if kind == QEMU_VM_SECTION_END:
            self._ram_done = True

    def _footer(self, section_id: int) -> SectionFooter:
        at = self.offset
        mark = self._u8("a section footer")
        if mark != QEMU_VM_SECTION_FOOTER:
            raise StreamSectionError(
                f"missing section footer for section {section_id} (got {mark:#x})", at
            )
        got = self._be32("a section footer")
        if got != section_id:
            raise StreamSectionError(
                f"mismatched section id in footer: {got:#x}, expected {section_id:#x}", at
            )
        return SectionFooter(section_id)

    def _command(self, at: int) -> Command:
        cmd = self._be16("a command")
        length = self._be16("a command")
        if cmd == MIG_CMD_INVALID or cmd >= MIG_CMD_MAX:
            raise StreamFlagsError(f"unknown command {cmd:#x} (length {length})", at)
        name = _COMMAND_NAMES[cmd]
        fixed = _COMMAND_LENGTHS[cmd]
        if fixed is not None and fixed != length:
            raise StreamSizeError(f"MIG_CMD_{name} with length {length}, expected {fixed}", at)
        if cmd != MIG_CMD_SWITCHOVER_START:
            raise UnsupportedStreamError(
                f"MIG_CMD_{name} is not supported (precopy without a return path only)", at
            )
        return Command(cmd, name, bytes(self._take(length, "a command")))

    # -- RAM records

    def _ram_records(self, kind: int) -> Iterator[Event]:
        """``ram_load_precopy``: records up to ``EOS``."""
        while True:
            at = self.offset
            word = self._be64("a RAM record")
            flags = word & self._mask
            addr = word & ~self._mask
            base = flags & ~RAM_SAVE_FLAG_CONTINUE
            if flags & RAM_SAVE_FLAG_CONTINUE and base not in (
                RAM_SAVE_FLAG_ZERO,
                RAM_SAVE_FLAG_PAGE,
            ):
                raise StreamFlagsError(f"CONTINUE on record flags {flags:#x}", at)
            if base == RAM_SAVE_FLAG_EOS:
                if addr:
                    raise StreamFlagsError(f"EOS record with an offset ({word:#x})", at)
                yield Eos()
                return
            if base == RAM_SAVE_FLAG_MULTIFD_FLUSH:
                if addr:
                    raise StreamFlagsError(f"MULTIFD_FLUSH record with an offset ({word:#x})", at)
                yield MultifdFlush()
            elif base == RAM_SAVE_FLAG_MEM_SIZE:
                if kind != QEMU_VM_SECTION_START or self.blocks:
                    raise StreamBlockError("MEM_SIZE outside the RAM START section", at)
                yield self._mem_size(addr, at)
            elif base == RAM_SAVE_FLAG_ZERO:
                yield self._zero_run(flags, addr, at)
            elif base == RAM_SAVE_FLAG_PAGE:
                yield self._page_run(flags, addr, at)
            else:
                raise self._bad_flags(flags, at)

    @staticmethod
    def _bad_flags(flags: int, at: int) -> StreamError:
        names = (
            (RAM_SAVE_FLAG_XBZRLE, "XBZRLE"),
            (RAM_SAVE_FLAG_HOOK, "HOOK (RDMA)"),
            (RAM_SAVE_FLAG_COMPRESS_PAGE, "COMPRESS_PAGE"),
            (RAM_SAVE_FLAG_FULL, "FULL (obsolete)"),
        )
        for bit, name in names:
            if flags & bit:
                return UnsupportedStreamError(f"RAM record flag {name} ({flags:#x})", at)
        return StreamFlagsError(f"unknown combination of RAM record flags {flags:#x}", at)

    def _mem_size(self, total: int, at: int) -> MemSize:
        """``parse_ramblocks`` with precopy defaults (no postcopy page size, no ``addr``)."""
        if total >= _LIMIT_63:
            raise StreamSizeError(f"MEM_SIZE total {total} is 2**63 or more", at)
        if total == 0:
            raise StreamBlockError("MEM_SIZE with a total of 0", at)
        blocks: list[tuple[str, int]] = []
        left = total
        while left:
            entry = self.offset
            idstr = self._counted("a block name")
            length = self._be64("a block length")
            if not idstr:
                raise StreamBlockError("a block with an empty name", entry)
            if any(idstr == name for name, _ in blocks):
                raise StreamBlockError(f"block {idstr!r} listed twice", entry)
            if length >= _LIMIT_63:
                raise StreamSizeError(f"block {idstr!r} length {length} is 2**63 or more", entry)
            if length == 0 or length & self._mask:
                raise StreamSizeError(
                    f"block {idstr!r} length {length} is not a positive multiple of "
                    f"the page size {self._page_size}",
                    entry,
                )
            if length > left:
                raise StreamBlockError(
                    f"block {idstr!r} ({length} bytes) is past the MEM_SIZE total {total}",
                    entry,
                )
            blocks.append((idstr, length))
            left -= length
        self.blocks = dict(blocks)
        return MemSize(tuple(blocks))

    def _block(self, flags: int, at: int) -> str:
        """``ram_block_from_stream``."""
        if flags & RAM_SAVE_FLAG_CONTINUE:
            if self._last_block is None:
                raise StreamBlockError("CONTINUE before any block was named", at)
            return self._last_block
        idstr = self._counted("a block name")
        if idstr not in self.blocks:
            raise StreamBlockError(f"page of unknown RAM block {idstr!r}", at)
        self._last_block = idstr
        return idstr

    def _check_offset(self, idstr: str, addr: int, at: int) -> None:
        length = self.blocks[idstr]
        if addr >= length:
            raise StreamOffsetError(
                f"page at offset {addr} is past the end of {idstr!r} ({length} bytes)", at
            )

    def _zero_run(self, flags: int, addr: int, at: int) -> ZeroPages:
        idstr = self._block(flags, at)
        self._check_offset(idstr, addr, at)
        fill_at = self.offset
        if self._u8("a zero record") != 0:
            raise StreamFlagsError("a zero-page record whose fill byte is not 0", fill_at)
        offsets = [np.array([addr], dtype=np.uint64)]
        # Then the buffered ZERO|CONTINUE records, decoded in one numpy pass.
        size = self._zero_rec.itemsize
        count = (self._end - self._start) // size
        if count:
            recs = np.frombuffer(self._buf, dtype=self._zero_rec, count=count, offset=self._start)
            words = recs["word"]
            want = np.uint64(RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_CONTINUE)
            stop = np.flatnonzero((words & np.uint64(self._mask)) != want)
            run = int(stop[0]) if stop.size else count
            if run:
                offs = words[:run] & ~np.uint64(self._mask)
                bad = np.flatnonzero(offs >= np.uint64(self.blocks[idstr]))
                fills = np.flatnonzero(recs["byte"][:run])
                first_bad = min(
                    int(bad[0]) if bad.size else run, int(fills[0]) if fills.size else run
                )
                if first_bad < run:
                    # Consume the good ones, then fail on the bad one, as a record-by-record
                    # reader would.
                    self._start += first_bad * size
                    self.offset += first_bad * size
                    bad_at = self.offset
                    if bad.size and int(bad[0]) == first_bad:
                        raise StreamOffsetError(
                            f"page at offset {int(offs[first_bad])} is past the end of "
                            f"{idstr!r} ({self.blocks[idstr]} bytes)",
                            bad_at,
                        )
                    raise StreamFlagsError(
                        "a zero-page record whose fill byte is not 0", bad_at + 8
                    )
                offsets.append(offs.astype(np.uint64))
                self._start += run * size
                self.offset += run * size
        out = np.concatenate(offsets) if len(offsets) > 1 else offsets[0]
        return ZeroPages(idstr, out)

    def _page_run(self, flags: int, addr: int, at: int) -> Pages:
        idstr = self._block(flags, at)
        self._check_offset(idstr, addr, at)
        first = bytes(self._take(self._page_size, "a page"))
        size = self._page_rec.itemsize
        count = (self._end - self._start) // size
        if not count:
            return Pages(idstr, np.array([addr], dtype=np.uint64), first)
        recs = np.frombuffer(self._buf, dtype=self._page_rec, count=count, offset=self._start)
        words = recs["word"]
        want = np.uint64(RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_CONTINUE)
        stop = np.flatnonzero((words & np.uint64(self._mask)) != want)
        run = int(stop[0]) if stop.size else count
        offs = words[:run] & ~np.uint64(self._mask)
        bad = np.flatnonzero(offs >= np.uint64(self.blocks[idstr]))
        if bad.size:
            run = int(bad[0])  # stop before it: the next call reports it at its offset
            offs = offs[:run]
        data = first + recs["data"][:run].tobytes()
        self._start += run * size
        self.offset += run * size
        offsets = np.concatenate((np.array([addr], dtype=np.uint64), offs.astype(np.uint64)))
        return Pages(idstr, offsets, data)

    # -- device state

    def _device_state(self) -> DeviceState:
        """Everything up to the end of the stream, framed as QEMU ends it."""
        at = self.offset
        chunks: list[bytes] = []
        total = 0
        while self._fill(1):
            chunk = bytes(self._view[self._start : self._end])
            total += len(chunk)
            if total > self._max_device_state:
                raise StreamSizeError(
                    f"device state larger than {self._max_device_state} bytes", at
                )
            chunks.append(chunk)
            self.offset += len(chunk)
            self._start = self._end
        raw = b"".join(chunks)
        desc = check_device_state(raw, at)
        return DeviceState(raw, desc)


def check_device_state(raw: bytes, at: int = 0) -> dict[str, Any]:
    """Check the frame of a device-state tail; return its VM description, if any.

    The tail must start with a section type QEMU sends after the RAM END
    section (``SECTION_FULL``, ``QEMU_VM_COMMAND`` or ``QEMU_VM_EOF``) and end
    with ``QEMU_VM_EOF`` followed by ``QEMU_VM_VMDESCRIPTION`` whose BE32
    length runs exactly to the end and whose JSON parses to an object
    (``qemu_savevm_state_complete_precopy_non_iterable``). QEMU only leaves
    the description out for machines with ``suppress_vmdesc`` or in
    postcopy (``should_send_vmdesc``), neither of which this reader handles;
    requiring it means a stream cut short anywhere in the device state is
    always detected.

    Raises
    ------
    StreamError
        A tail QEMU could not have sent; ``at`` is its offset in the stream.
    """
    if not raw:
        raise StreamTruncatedError("the stream ended before the device state", at)
    if raw[0] not in (QEMU_VM_SECTION_FULL, QEMU_VM_COMMAND, QEMU_VM_EOF):
        raise StreamSectionError(
            f"device state starts with section type {raw[0]:#x}, not SECTION_FULL", at
        )
    # JSON text holds no raw 0x06 byte: the description's type byte is one of the last few
    # 0x06 bytes (its BE32 length may hold some too).
    end = len(raw)
    for _ in range(5):
        pos = raw.rfind(bytes([QEMU_VM_VMDESCRIPTION]), 0, end)
        if pos < 1:
            break
        end = pos
        if raw[pos - 1] != QEMU_VM_EOF or pos + 5 > len(raw):
            continue
        (length,) = _BE32.unpack_from(raw, pos + 1)
        if pos + 5 + length != len(raw):
            continue
        try:
            desc = json.loads(raw[pos + 5 :])
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(desc, dict):
            return desc
    raise StreamTruncatedError(
        "the stream did not end with QEMU_VM_EOF and a complete QEMU_VM_VMDESCRIPTION",
        at + len(raw),
    )


def read_stream(data: bytes, *, page_size: int = 4096) -> list[Event]:
    """Parse a whole main stream held in memory; return its events (a convenience)."""
    return list(StreamReader(_BytesSource(data), page_size=page_size).events())


class _BytesSource:
    """A :class:`Readable` over bytes, handing out at most ``chunk`` bytes a call."""

    def __init__(self, data: bytes, chunk: int = 1 << 20) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._chunk = chunk

    def recv_into(self, view: memoryview, /) -> int:
        count = min(len(view), len(self._data) - self._pos, self._chunk)
        view[:count] = self._data[self._pos : self._pos + count]
        self._pos += count
        return count


# ---------------------------------------------------------------- writer


def _counted(text: str, what: str) -> bytes:
    raw = text.encode("utf-8")
    if not 1 <= len(raw) <= 255:
        raise ValueError(f"{what} must be 1 to 255 bytes, got {text!r}")
    return bytes([len(raw)]) + raw


def _encode_config_subsections(
    page_bits: int | None, caps: Sequence[str], uuid: bytes | None
) -> bytes:
    out = bytearray()
    if page_bits is not None:
        out += bytes([QEMU_VM_SUBSECTION]) + _counted("configuration/target-page-bits", "name")
        out += _BE32.pack(1) + _BE32.pack(page_bits)
    if caps:
        out += bytes([QEMU_VM_SUBSECTION]) + _counted("configuration/capabilities", "name")
        out += _BE32.pack(1) + _BE32.pack(len(caps))
        for cap in caps:
            out += _counted(cap, "a capability")
    if uuid is not None:
        if len(uuid) != 16:
            raise ValueError("uuid must be 16 bytes")
        out += bytes([QEMU_VM_SUBSECTION]) + _counted("configuration/uuid", "name")
        out += _BE32.pack(1) + uuid
    return bytes(out)


class StreamWriter:
    """Builds a QEMU 10 precopy main stream, record by record, as bytes.

    Every method returns the bytes of its records. The writer remembers the
    last block named by a ``ZERO`` or ``PAGE`` record, across sections, and
    sets ``CONTINUE`` as QEMU's ``save_page_header`` does.

    Parameters
    ----------
    page_size : int, default 4096

    Examples
    --------
    >>> w = StreamWriter()
    >>> (w.header() + w.configuration("pc-i440fx-10.0")).hex()[:24]
    '5145564d0000000307000000'
    """

    def __init__(self, page_size: int = 4096) -> None:
        self._page_size = page_size
        self._mask = page_size - 1
        self._last_block: str | None = None
        self._zero_rec = np.dtype([("word", ">u8"), ("byte", "u1")])
        self._page_rec = np.dtype([("word", ">u8"), ("data", "u1", (page_size,))])

    @staticmethod
    def header() -> bytes:
        """``QEVM`` and version 3."""
        return _BE32.pack(QEMU_VM_FILE_MAGIC) + _BE32.pack(QEMU_VM_FILE_VERSION)

    @staticmethod
    def configuration(
        machine_type: str,
        *,
        target_page_bits: int | None = None,
        capabilities: Sequence[str] = (),
        uuid: bytes | None = None,
    ) -> bytes:
        """Return the configuration section (``qemu_savevm_state_header``)."""
        name = machine_type.encode("ascii")
        if not 1 <= len(name) <= 255:
            raise ValueError(f"machine type must be 1 to 255 bytes: {machine_type!r}")
        return (
            bytes([QEMU_VM_CONFIGURATION])
            + _BE32.pack(len(name))
            + name
            + _encode_config_subsections(target_page_bits, capabilities, uuid)
        )

    @staticmethod
    def section_start(
        section_id: int,
        idstr: str = "ram",
        instance_id: int = 0,
        version_id: int = RAM_SECTION_VERSION,
        *,
        kind: int = QEMU_VM_SECTION_START,
    ) -> bytes:
        """Return a START (or FULL) section header (``save_section_header``)."""
        if kind not in (QEMU_VM_SECTION_START, QEMU_VM_SECTION_FULL):
            raise ValueError(f"not a START or FULL section type: {kind}")
        return (
            bytes([kind])
            + _BE32.pack(section_id)
            + _counted(idstr, "an idstr")
            + _BE32.pack(instance_id)
            + _BE32.pack(version_id)
        )

    @staticmethod
    def section_part(section_id: int, *, end: bool = False) -> bytes:
        """Return a PART (or END) section header."""
        kind = QEMU_VM_SECTION_END if end else QEMU_VM_SECTION_PART
        return bytes([kind]) + _BE32.pack(section_id)

    @staticmethod
    def footer(section_id: int) -> bytes:
        """``QEMU_VM_SECTION_FOOTER`` and the section id."""
        return bytes([QEMU_VM_SECTION_FOOTER]) + _BE32.pack(section_id)

    def mem_size(self, blocks: Sequence[tuple[str, int]]) -> bytes:
        """``MEM_SIZE``: the total, then each block's name and ``used_length``."""
        total = 0
        out = bytearray()
        for idstr, length in blocks:
            if length <= 0 or length & self._mask or length >= _LIMIT_63:
                raise ValueError(f"bad length {length} for block {idstr!r}")
            total += length
            out += _counted(idstr, "a block name") + _BE64.pack(length)
        if total >= _LIMIT_63:
            raise ValueError("total RAM of 2**63 bytes or more")
        return _BE64.pack(total | RAM_SAVE_FLAG_MEM_SIZE) + bytes(out)

    @staticmethod
    def eos() -> bytes:
        """``RAM_SAVE_FLAG_EOS``."""
        return _BE64.pack(RAM_SAVE_FLAG_EOS)

    @staticmethod
    def multifd_flush() -> bytes:
        """``RAM_SAVE_FLAG_MULTIFD_FLUSH``."""
        return _BE64.pack(RAM_SAVE_FLAG_MULTIFD_FLUSH)

    @staticmethod
    def command(cmd: int, data: bytes = b"") -> bytes:
        """Return a ``QEMU_VM_COMMAND`` record (``qemu_savevm_command_send``)."""
        return bytes([QEMU_VM_COMMAND]) + _BE16.pack(cmd) + _BE16.pack(len(data)) + data

    @staticmethod
    def eof() -> bytes:
        """``QEMU_VM_EOF``."""
        return bytes([QEMU_VM_EOF])

    @staticmethod
    def vmdescription(text: bytes) -> bytes:
        """``QEMU_VM_VMDESCRIPTION``: BE32 length and the JSON."""
        return bytes([QEMU_VM_VMDESCRIPTION]) + _BE32.pack(len(text)) + text

    def _check(self, offsets: Any) -> OffsetArray:
        offs = np.asarray(offsets, dtype=np.uint64)
        if offs.ndim != 1:
            raise ValueError("offsets must be one-dimensional")
        if offs.size and int(np.bitwise_or.reduce(offs)) & self._mask:
            raise ValueError("offsets must be multiples of the page size")
        return offs

    def _head(self, idstr: str, first: int, flag: int) -> tuple[bytes, bool]:
        if self._last_block == idstr:
            return b"", True
        self._last_block = idstr
        return _BE64.pack(first | flag) + _counted(idstr, "a block name"), False

    def zero_pages(self, idstr: str, offsets: Any) -> bytes:
        """``ZERO`` records for ``offsets`` of block ``idstr``, in order."""
        offs = self._check(offsets)
        if not offs.size:
            return b""
        head, cont = self._head(idstr, int(offs[0]), RAM_SAVE_FLAG_ZERO)
        recs = np.empty(offs.size, dtype=self._zero_rec)
        recs["word"] = offs | np.uint64(RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_CONTINUE)
        recs["byte"] = 0
        if cont:
            return recs.tobytes()
        return head + b"\0" + recs[1:].tobytes()

    def pages(self, idstr: str, offsets: Any, data: Any) -> bytes:
        """``PAGE`` records: page ``k`` of ``data`` at ``offsets[k]``."""
        offs = self._check(offsets)
        raw = np.frombuffer(data, dtype=np.uint8)
        if raw.size != offs.size * self._page_size:
            raise ValueError(f"{raw.size} bytes of data for {offs.size} pages")
        if not offs.size:
            return b""
        head, cont = self._head(idstr, int(offs[0]), RAM_SAVE_FLAG_PAGE)
        recs = np.empty(offs.size, dtype=self._page_rec)
        recs["word"] = offs | np.uint64(RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_CONTINUE)
        recs["data"] = raw.reshape(offs.size, self._page_size)
        if cont:
            return recs.tobytes()
        return bytes(head + recs[0]["data"].tobytes() + recs[1:].tobytes())


def encode_events(events: Iterator[Event] | Sequence[Event], page_size: int = 4096) -> bytes:
    """Encode events back into a main stream: the inverse of :meth:`StreamReader.events`.

    A stream QEMU 10 wrote comes out byte for byte (``CONTINUE`` is set as
    ``save_page_header`` sets it; the configuration and device state are kept raw).
    """
    w = StreamWriter(page_size)
    out: list[bytes] = []
    for ev in events:
        if isinstance(ev, ZeroPages):
            out.append(w.zero_pages(ev.idstr, ev.offsets))
        elif isinstance(ev, Pages):
            out.append(w.pages(ev.idstr, ev.offsets, ev.data))
        elif isinstance(ev, MultifdFlush):
            out.append(w.multifd_flush())
        elif isinstance(ev, Eos):
            out.append(w.eos())
        elif isinstance(ev, SectionFooter):
            out.append(w.footer(ev.section_id))
        elif isinstance(ev, SectionHeader):
            if ev.kind == QEMU_VM_SECTION_START:
                out.append(w.section_start(ev.section_id, ev.idstr, ev.instance_id, ev.version_id))
            else:
                out.append(w.section_part(ev.section_id, end=ev.kind == QEMU_VM_SECTION_END))
        elif isinstance(ev, MemSize):
            out.append(w.mem_size(ev.blocks))
        elif isinstance(ev, Command):
            out.append(w.command(ev.cmd, ev.data))
        elif isinstance(ev, FileHeader):
            out.append(w.header())
        elif isinstance(ev, Configuration):
            out.append(ev.raw)
        else:
            out.append(ev.raw)
    return b"".join(out)
