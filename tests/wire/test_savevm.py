"""The main-stream codec (``multifd_zero.wire.savevm``) without QEMU: round trips, hostile
streams, truncation."""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multifd_zero import PacketError
from multifd_zero.errors import (
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
from multifd_zero.wire import BlockError, MagicError, OffsetError, TruncatedError
from multifd_zero.wire.savevm import (
    MIG_CMD_SWITCHOVER_START,
    QEMU_VM_SECTION_END,
    QEMU_VM_SECTION_FULL,
    QEMU_VM_SECTION_PART,
    QEMU_VM_SECTION_START,
    Command,
    Configuration,
    DeviceState,
    Eos,
    MemSize,
    MultifdFlush,
    Pages,
    SectionFooter,
    SectionHeader,
    StreamReader,
    StreamWriter,
    ZeroPages,
    read_stream,
)

PAGE = 4096
BLOCKS = [("pc.ram", 64 * PAGE), ("/rom@etc/acpi/tables", 4 * PAGE)]
SID = 2


def device_tail(extra: bytes = b"") -> bytes:
    """A device-state tail as QEMU frames it: a FULL section, EOF, the VM description."""
    w = StreamWriter()
    desc = json.dumps({"page_size": PAGE, "devices": []}).encode()
    full = w.section_start(0, "timer", 0, 2, kind=QEMU_VM_SECTION_FULL) + bytes(8) + extra
    return full + w.footer(0) + w.eof() + w.vmdescription(desc)


def small_stream(body: bytes = b"", *, flush: bool = True) -> bytes:
    """Header, configuration, RAM START/PART/END around ``body`` (PART records), device tail."""
    w = StreamWriter()
    out = w.header() + w.configuration("pc-i440fx-10.0")
    out += w.section_start(SID) + w.mem_size(BLOCKS)
    out += (w.multifd_flush() if flush else b"") + w.eos() + w.footer(SID)
    out += w.section_part(SID) + body + w.eos() + w.footer(SID)
    out += w.command(MIG_CMD_SWITCHOVER_START)
    out += w.section_part(SID, end=True) + (w.multifd_flush() if flush else b"")
    out += w.eos() + w.footer(SID)
    return out + device_tail()


class Chunked:
    """A source that hands out the bytes in the given chunk sizes (cycled)."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.sizes = sizes or [1 << 20]
        self.calls = 0

    def recv_into(self, view: memoryview, /) -> int:
        size = self.sizes[self.calls % len(self.sizes)]
        self.calls += 1
        count = min(len(view), size, len(self.data) - self.pos)
        view[:count] = self.data[self.pos : self.pos + count]
        self.pos += count
        return count


def pages_of(events: Sequence[object]) -> list[tuple[str, str, list[int], bytes]]:
    """The page events, one entry per page, merged across event boundaries."""
    out: list[tuple[str, str, list[int], bytes]] = []
    for ev in events:
        if isinstance(ev, ZeroPages):
            for off in ev.offsets.tolist():
                out.append(("zero", ev.idstr, [off], b""))
        elif isinstance(ev, Pages):
            for i, off in enumerate(ev.offsets.tolist()):
                out.append(("page", ev.idstr, [off], ev.data[i * PAGE : (i + 1) * PAGE]))
    return out


def test_round_trip_structure() -> None:
    w = StreamWriter()
    data = bytes(range(256)) * 16
    body = w.zero_pages("pc.ram", [0, PAGE, 5 * PAGE]) + w.pages("pc.ram", [2 * PAGE], data)
    body += w.zero_pages("/rom@etc/acpi/tables", [3 * PAGE])
    events = read_stream(small_stream(body))
    kinds = [type(e).__name__ for e in events]
    assert kinds[:3] == ["FileHeader", "Configuration", "SectionHeader"]
    assert isinstance(events[1], Configuration) and events[1].machine_type == "pc-i440fx-10.0"
    assert isinstance(events[3], MemSize) and events[3].blocks == tuple(BLOCKS)
    assert isinstance(events[4], MultifdFlush) and isinstance(events[5], Eos)
    assert events[6] == SectionFooter(SID)
    headers = [e for e in events if isinstance(e, SectionHeader)]
    assert [h.kind for h in headers] == [
        QEMU_VM_SECTION_START,
        QEMU_VM_SECTION_PART,
        QEMU_VM_SECTION_END,
    ]
    assert all(h.section_id == SID and h.version_id == 4 for h in headers)
    assert [e for e in events if isinstance(e, Command)] == [
        Command(MIG_CMD_SWITCHOVER_START, "SWITCHOVER_START")
    ]
    assert pages_of(events) == [
        ("zero", "pc.ram", [0], b""),
        ("zero", "pc.ram", [PAGE], b""),
        ("zero", "pc.ram", [5 * PAGE], b""),
        ("page", "pc.ram", [2 * PAGE], data),
        ("zero", "/rom@etc/acpi/tables", [3 * PAGE], b""),
    ]
    tail = events[-1]
    assert isinstance(tail, DeviceState) and tail.raw == device_tail()
    assert tail.vmdescription == {"page_size": PAGE, "devices": []}


def test_continue_is_set_as_qemu_does() -> None:
    w = StreamWriter()
    first = w.zero_pages("pc.ram", [PAGE])
    again = w.zero_pages("pc.ram", [2 * PAGE])
    other = w.pages("/rom@etc/acpi/tables", [0], bytes(PAGE))
    # First record names the block (8 + 1 + 6 + fill byte), the next one continues (9 bytes).
    assert first == struct.pack(">Q", PAGE | 0x02) + b"\x06pc.ram\x00"
    assert again == struct.pack(">Q", 2 * PAGE | 0x22) + b"\x00"
    assert other[:8] == struct.pack(">Q", 0x08) and other[8:29] == b"\x14/rom@etc/acpi/tables"


def test_configuration_subsections_round_trip() -> None:
    w = StreamWriter()
    uuid = bytes(range(16))
    config = w.configuration(
        "pc-q35-10.0", target_page_bits=12, capabilities=("x-colo",), uuid=uuid
    )
    data = w.header() + config + small_stream()[27:]
    events = read_stream(data)
    cfg = events[1]
    assert isinstance(cfg, Configuration)
    assert (cfg.machine_type, cfg.target_page_bits, cfg.capabilities, cfg.uuid) == (
        "pc-q35-10.0",
        12,
        ("x-colo",),
        uuid,
    )
    assert cfg.raw == config


record_kind = st.sampled_from(["zero", "page"])


@st.composite
def ram_records(draw: st.DrawFn) -> list[tuple[str, str, list[int], bytes]]:
    out = []
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(record_kind)
        name, length = draw(st.sampled_from(BLOCKS))
        page = draw(st.integers(0, length // PAGE - 1))
        data = bytes([draw(st.integers(0, 255))]) * PAGE if kind == "page" else b""
        out.append((kind, name, [page * PAGE], data))
    return out


@settings(max_examples=150, deadline=None)
@given(
    records=ram_records(),
    sizes=st.lists(st.integers(1, 9000), max_size=5),
    split=st.integers(0, 40),
)
def test_random_ram_records_round_trip(
    records: list[tuple[str, str, list[int], bytes]], sizes: list[int], split: int
) -> None:
    w = StreamWriter()
    body = b""
    for i, (kind, name, offs, data) in enumerate(records):
        if i == split:  # a MULTIFD_FLUSH in the middle must not disturb the pages
            body += w.multifd_flush()
        body += w.zero_pages(name, offs) if kind == "zero" else w.pages(name, offs, data)
    events = list(StreamReader(Chunked(small_stream(body), sizes)).events())
    assert pages_of(events) == records
    flushes = sum(isinstance(e, MultifdFlush) for e in events)
    assert flushes == 2 + (1 if split < len(records) else 0)


def test_reads_are_buffered() -> None:
    w = StreamWriter()
    offsets = np.arange(64, dtype=np.uint64) * np.uint64(PAGE)
    source = Chunked(small_stream(w.zero_pages("pc.ram", offsets)), [1 << 20])
    events = list(StreamReader(source).events())
    zero = [e for e in events if isinstance(e, ZeroPages)]
    # One run event and a handful of reads, not one per 9-byte record.
    assert len(zero) == 1 and zero[0].offsets.tolist() == offsets.tolist()
    assert source.calls <= 3


# ---------------------------------------------------------------- hostile streams


def expect(data: bytes, exc: type[BaseException], match: str | None = None) -> StreamError:
    with pytest.raises(exc, match=match) as info:
        read_stream(data)
    assert isinstance(info.value, StreamError) and isinstance(info.value, PacketError)
    return info.value


def test_bad_magic() -> None:
    err = expect(b"QEVN" + small_stream()[4:], StreamMagicError, "magic")
    assert isinstance(err, MagicError) and err.offset == 0


def test_bad_versions() -> None:
    good = small_stream()
    expect(good[:4] + struct.pack(">I", 2) + good[8:], StreamVersionError, "obsolete")
    expect(good[:4] + struct.pack(">I", 4) + good[8:], StreamVersionError, "version 4")


def test_missing_configuration() -> None:
    good = small_stream()
    err = expect(good[:8] + good[27:], StreamSectionError, "configuration section missing")
    assert err.offset == 8


def test_unknown_section_type() -> None:
    good = small_stream()
    err = expect(good[:27] + b"\x09" + good[28:], StreamFlagsError, "unknown section type 0x9")
    assert err.offset == 27


def test_wrong_footer_id_and_missing_footer() -> None:
    w = StreamWriter()
    head = w.header() + w.configuration("pc") + w.section_start(SID) + w.mem_size(BLOCKS)
    expect(head + w.eos() + w.footer(SID + 1), StreamSectionError, "mismatched section id")
    expect(head + w.eos() + b"\x02" + bytes(4), StreamSectionError, "missing section footer")


def test_unknown_section_id() -> None:
    w = StreamWriter()
    head = w.header() + w.configuration("pc") + w.section_start(SID) + w.mem_size(BLOCKS)
    head += w.eos() + w.footer(SID)
    err = expect(head + w.section_part(7) + w.eos(), StreamSectionError, "unknown section id 7")
    assert err.offset == len(head)


def test_truncated_at_every_byte() -> None:
    w = StreamWriter()
    body = w.zero_pages("pc.ram", [0, PAGE]) + w.pages("pc.ram", [2 * PAGE], b"\x01" * PAGE)
    data = small_stream(body)
    step = 7  # every byte of the framing; pages are long, so the payload every 7th
    cuts = [n for n in range(len(data)) if n < 400 or n % step == 0 or n > len(data) - 300]
    for n in cuts:
        with pytest.raises(StreamTruncatedError) as info:
            read_stream(data[:n])
        assert isinstance(info.value, TruncatedError)
    assert pages_of(read_stream(data))[2][3] == b"\x01" * PAGE


def test_block_list_disagrees_with_pages() -> None:
    w = StreamWriter()
    err = expect(small_stream(w.zero_pages("nope", [0])), StreamBlockError, "unknown RAM block")
    assert isinstance(err, BlockError)
    past = small_stream(w.zero_pages("pc.ram", [64 * PAGE]))
    err = expect(past, StreamOffsetError, "past the end of 'pc.ram'")
    assert isinstance(err, OffsetError)
    cont = StreamWriter()
    cont.zero_pages("pc.ram", [0])  # the writer now believes pc.ram was named
    err = expect(small_stream(cont.zero_pages("pc.ram", [PAGE])), StreamBlockError, "CONTINUE")


def test_past_block_inside_a_run_is_reported_at_its_record() -> None:
    w = StreamWriter()
    offsets = [0, PAGE, 2 * PAGE, 64 * PAGE, 3 * PAGE]
    data = small_stream(w.zero_pages("pc.ram", offsets))
    err = expect(data, StreamOffsetError, str(64 * PAGE))
    first = data.index(struct.pack(">Q", 0x02) + b"\x06pc.ram")
    assert err.offset == first + 16 + 9 * 2  # the fourth record


def mem_size_stream(mem: bytes) -> bytes:
    w = StreamWriter()
    return w.header() + w.configuration("pc") + w.section_start(SID) + mem + w.eos()


def test_mem_size_limits() -> None:
    big = 1 << 63
    expect(mem_size_stream(struct.pack(">Q", big | 4)), StreamSizeError, "2\\*\\*63")
    entry = b"\x06pc.ram" + struct.pack(">Q", big)
    expect(mem_size_stream(struct.pack(">Q", PAGE | 4) + entry), StreamSizeError, "2\\*\\*63")
    unaligned = b"\x06pc.ram" + struct.pack(">Q", PAGE + 1)
    expect(
        mem_size_stream(struct.pack(">Q", 2 * PAGE | 4) + unaligned),
        StreamSizeError,
        "multiple of the page size",
    )
    over = b"\x06pc.ram" + struct.pack(">Q", 2 * PAGE)
    expect(
        mem_size_stream(struct.pack(">Q", PAGE | 4) + over),
        StreamBlockError,
        "past the MEM_SIZE total",
    )
    twice = (b"\x01a" + struct.pack(">Q", PAGE)) * 2
    expect(mem_size_stream(struct.pack(">Q", 2 * PAGE | 4) + twice), StreamBlockError, "twice")


@pytest.mark.parametrize(
    ("flag", "name"), [(0x40, "XBZRLE"), (0x80, "HOOK"), (0x100, "COMPRESS_PAGE")]
)
def test_unsupported_record_flags(flag: int, name: str) -> None:
    expect(small_stream(struct.pack(">Q", flag)), UnsupportedStreamError, name)


def test_unknown_record_flags() -> None:
    expect(small_stream(struct.pack(">Q", 0x400)), StreamFlagsError, "unknown combination")
    expect(small_stream(struct.pack(">Q", 0x02 | 0x08) + b"\x06pc.ram\x00"), StreamFlagsError)


def test_bad_zero_fill_byte() -> None:
    expect(
        small_stream(struct.pack(">Q", 0x02) + b"\x06pc.ram\x07"), StreamFlagsError, "fill byte"
    )


@pytest.mark.parametrize(
    ("cmd", "data", "name"),
    [
        (3, bytes(16), "POSTCOPY_ADVISE"),
        (1, b"", "OPEN_RETURN_PATH"),
        (7, bytes(4), "PACKAGED"),
        (8, b"", "ENABLE_COLO"),
    ],
)
def test_unsupported_commands(cmd: int, data: bytes, name: str) -> None:
    good = small_stream()
    at = good.index(b"\x08\x00\x0b\x00\x00")
    bad = good[:at] + StreamWriter.command(cmd, data) + good[at + 5 :]
    err = expect(bad, UnsupportedStreamError, name)
    assert err.offset == at


def test_bad_command_length_and_number() -> None:
    good = small_stream()
    at = good.index(b"\x08\x00\x0b\x00\x00")
    expect(
        good[:at] + StreamWriter.command(11, b"x") + good[at + 5 :], StreamSizeError, "length 1"
    )
    expect(
        good[:at] + StreamWriter.command(99) + good[at + 5 :], StreamFlagsError, "unknown command"
    )


def test_other_iterable_sections_are_refused() -> None:
    w = StreamWriter()
    data = w.header() + w.configuration("pc") + w.section_start(3, "dirty-bitmap", 0, 1)
    expect(data, UnsupportedStreamError, "dirty-bitmap")


@pytest.mark.parametrize("cap", ["x-ignore-shared", "mapped-ram"])
def test_capabilities_that_change_ram_records(cap: str) -> None:
    w = StreamWriter()
    good = small_stream()
    data = good[:8] + w.configuration("pc-i440fx-10.0", capabilities=(cap,)) + good[27:]
    expect(data, UnsupportedStreamError, cap)


def test_unknown_subsection() -> None:
    good = small_stream()
    sub = b"\x05" + b"\x0dconfiguration" + struct.pack(">I", 1)
    expect(good[:27] + sub + good[27:], UnsupportedStreamError, "unknown configuration")


def test_device_state_needs_eof_and_description() -> None:
    good = small_stream()
    tail = device_tail()
    cut = good[: len(good) - len(tail)]
    expect(cut + tail[:-5], StreamTruncatedError)  # inside the JSON
    eof_at = tail.rindex(b"\x00\x06")
    expect(cut + tail[: eof_at + 1], StreamTruncatedError, "VMDESCRIPTION")  # EOF, no description
    expect(cut + b"\x07" + tail[1:], StreamSectionError, "device state starts")


def test_device_state_limit() -> None:
    data = small_stream()
    with pytest.raises(StreamSizeError, match="device state larger"):
        list(StreamReader(Chunked(data, []), max_device_state=40).events())


def test_eof_before_ram_end() -> None:
    w = StreamWriter()
    data = w.header() + w.configuration("pc") + w.section_start(SID) + w.mem_size(BLOCKS)
    data += w.eos() + w.footer(SID) + w.eof()
    expect(data, StreamSectionError, "QEMU_VM_EOF before the RAM END")


def test_errors_pickle_with_their_offset() -> None:
    import pickle

    err = StreamOffsetError("page past", 42)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is StreamOffsetError and again.offset == 42 and str(again) == str(err)
