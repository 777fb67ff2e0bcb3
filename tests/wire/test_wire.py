"""The wire format: QEMU's multifd RAM packet, the channel handshake and the main stream.

The encoder is checked byte by byte against the field offsets of QEMU's
``MultiFDPacket_t`` (``migration/multifd.h``; read back with ``struct``, not with
the decoder), every field round-trips through the decoder, and every kind of
bad packet raises its :class:`~multifd_zero.wire.PacketError` subclass. The
main stream is QEMU 10's (:mod:`multifd_zero.wire.savevm`): its records are
laid out as ``migration/savevm.c`` and ``migration/ram.c`` write them, and
each kind of bad stream raises its :class:`~multifd_zero.errors.StreamError`
subclass, which is also the matching packet error.
"""

from __future__ import annotations

import doctest
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from multifd_zero import errors, wire
from multifd_zero.migration.transport import inprocess_pair
from multifd_zero.wire import savevm
from multifd_zero.wire.savevm import StreamReader, StreamWriter

PS = 4096
NAME = "pc.ram"
BLOCKS = {NAME: 64 * PS}


def u32(raw: bytes | bytearray, off: int) -> int:
    """The big-endian u32 at byte ``off``."""
    return int(struct.unpack_from(">I", raw, off)[0])


def u64(raw: bytes | bytearray, off: int) -> int:
    """The big-endian u64 at byte ``off``."""
    return int(struct.unpack_from(">Q", raw, off)[0])


def packet(
    normal: list[int],
    zero: list[int],
    *,
    page_count: int = 8,
    flags: int = 0,
    packet_num: int = 5,
    name: str = NAME,
    pages_alloc: int | None = None,
    next_packet_size: int | None = None,
) -> bytearray:
    """An encoded packet (no payload) as a mutable bytearray."""
    pkt = wire.RamPacket(
        flags=flags,
        pages_alloc=page_count if pages_alloc is None else pages_alloc,
        normal_pages=len(normal),
        zero_pages=len(zero),
        next_packet_size=len(normal) * PS if next_packet_size is None else next_packet_size,
        packet_num=packet_num,
        ramblock=name,
        offsets=np.array(normal + zero, dtype=np.uint64),
    )
    return bytearray(wire.encode_packet(pkt, page_count))


def decode(raw: bytes | bytearray, page_count: int = 8) -> wire.RamPacket:
    """Decode with the default block table."""
    return wire.decode_packet(raw, page_count=page_count, page_size=PS, blocks=BLOCKS)


# ------------------------------------------------------------------ the layout


def test_packet_len() -> None:
    """packet_len = 320 + 8 * page_count: 1344 bytes for QEMU's 128 pages of 4 KiB."""
    assert wire.packet_len(128) == 1344
    assert wire.PACKET_FIXED_SIZE == 320
    for count in (1, 2, 7, 512):
        assert wire.packet_len(count) == 320 + 8 * count
    with pytest.raises(ValueError):
        wire.packet_len(0)
    with pytest.raises(TypeError):
        wire.packet_len(True)
    # Past the limit an encoder would allocate gigabytes: refused before.
    assert wire.packet_len(wire.MAX_PAGE_COUNT) == 320 + 8 * wire.MAX_PAGE_COUNT
    with pytest.raises(ValueError, match="page_count must be between 1 and"):
        wire.packet_len(wire.MAX_PAGE_COUNT + 1)
    with pytest.raises(ValueError):
        wire.encode_packet(wire.RamPacket(ramblock="pc.ram"), 2**31)


def test_encoder_field_by_field_against_the_reference_table() -> None:
    """Every field sits at its MultiFDPacket_t offset, big-endian; reserved and unused are 0."""
    normal, zero = [3 * PS, 0], [7 * PS, 63 * PS, 9 * PS]
    payload = bytes(range(256)) * (2 * PS // 256)
    pkt = wire.RamPacket(
        flags=wire.MULTIFD_FLAG_SYNC,
        pages_alloc=8,
        normal_pages=2,
        zero_pages=3,
        next_packet_size=2 * PS,
        packet_num=0x0102030405060708,
        ramblock=NAME,
        offsets=np.array(normal + zero, dtype=np.uint64),
    )
    raw = wire.encode_packet(pkt, 8, payload)
    assert len(raw) == 320 + 8 * 8 + 2 * PS
    assert raw[0:4] == bytes.fromhex("11223344")  # magic, big-endian
    assert u32(raw, 0) == 0x11223344
    assert u32(raw, 4) == 1  # version
    assert u32(raw, 8) == 1  # flags: SYNC, NOCOMP
    assert u32(raw, 12) == 8  # pages_alloc
    assert u32(raw, 16) == 2  # normal_pages
    assert u32(raw, 20) == 2 * PS  # next_packet_size
    assert raw[24:32] == bytes.fromhex("0102030405060708")  # packet_num, BE64
    assert u32(raw, 32) == 3  # zero_pages
    assert raw[36:40] == bytes(4)  # unused32
    assert raw[40:64] == bytes(24)  # unused64[3]
    assert raw[64:70] == b"pc.ram" and raw[70:320] == bytes(250)  # name, NUL-padded
    slots = [u64(raw, 320 + 8 * i) for i in range(8)]
    assert slots == [3 * PS, 0, 7 * PS, 63 * PS, 9 * PS, 0, 0, 0]  # normal first, then zero
    assert raw[320 + 64 :] == payload


def test_flag_and_size_constants() -> None:
    """QEMU's flag values and sizes."""
    assert wire.MULTIFD_MAGIC == 0x11223344
    assert wire.MULTIFD_VERSION == 1
    assert wire.MULTIFD_FLAG_SYNC == 1
    assert wire.MULTIFD_FLAG_NOCOMP == 0
    assert wire.MULTIFD_FLAG_COMPRESSION_MASK == 0x3E
    assert wire.MULTIFD_FLAG_DEVICE_STATE == 64
    assert (wire.HEADER_SIZE, wire.RAMBLOCK_NAME_SIZE, wire.HANDSHAKE_SIZE) == (12, 256, 64)


def test_fill_packet_reuse_clears_stale_slots_and_name() -> None:
    """Filling a buffer again leaves no trace of the previous packet (as QEMU 9.2+ zeroes it)."""
    buf = bytearray(wire.packet_len(8))
    many = np.arange(8, dtype=np.uint64) * np.uint64(PS)
    wire.fill_packet(
        buf,
        8,
        offsets=many,
        normal_pages=8,
        ramblock="a-much-longer-block-name",
        packet_num=1,
        next_packet_size=8 * PS,
    )
    size = wire.fill_packet(
        buf,
        8,
        offsets=many[:2],
        normal_pages=1,
        ramblock="b",
        packet_num=2,
        next_packet_size=PS,
    )
    assert size == wire.packet_len(8)
    assert buf[64:66] == b"b\0" and buf[66:320] == bytes(254)
    assert [u64(buf, 320 + 8 * i) for i in range(8)] == [0, PS, 0, 0, 0, 0, 0, 0]


def test_sync_packet_as_qemu_sends_it() -> None:
    """QEMU 9.2+: a SYNC packet has no RAM part: pages_alloc, counts and name are 0."""
    buf = bytearray(wire.packet_len(4))
    wire.fill_packet(
        buf,
        4,
        offsets=np.zeros(0, np.uint64),
        normal_pages=0,
        ramblock=b"",
        packet_num=9,
        next_packet_size=0,
        flags=wire.MULTIFD_FLAG_SYNC,
        pages_alloc=0,
    )
    assert buf[8:24] == bytes.fromhex("00000001000000000000000000000000")
    assert buf[64:] == bytes(len(buf) - 64)
    pkt = decode(buf, 4)
    assert pkt.sync and pkt.ramblock == "" and pkt.offsets.size == 0


def test_encoder_refuses_values_that_do_not_fit() -> None:
    """Too many offsets, oversized fields, bad names and short buffers are refused."""
    buf = bytearray(wire.packet_len(2))
    three = np.zeros(3, np.uint64)
    common = {"ramblock": NAME, "packet_num": 0, "next_packet_size": 0}
    with pytest.raises(ValueError, match="do not fit"):
        wire.fill_packet(buf, 2, offsets=three, normal_pages=0, **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        wire.fill_packet(buf, 2, offsets=three[:1], normal_pages=2, **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="packet_num"):
        wire.fill_packet(
            buf,
            2,
            offsets=three[:1],
            normal_pages=0,
            ramblock=NAME,
            packet_num=1 << 64,
            next_packet_size=0,
        )
    with pytest.raises(ValueError, match="block name"):
        wire.encode_name("x" * 256)
    with pytest.raises(ValueError, match="block name"):
        wire.encode_name("a\0b")
    with pytest.raises(ValueError, match="bytes"):
        wire.fill_packet(bytearray(10), 2, offsets=three[:0], normal_pages=0, **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="offsets"):
        wire.encode_packet(wire.RamPacket(normal_pages=1, offsets=three), 4)


# --------------------------------------------------------------- round trips

names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\0"),
    min_size=1,
    max_size=80,
).filter(lambda s: len(s.encode("utf-8")) <= 255)


@st.composite
def packets(draw: st.DrawFn) -> tuple[wire.RamPacket, int, int, int]:
    """A valid packet with every field drawn, plus its page_count, page size and block size."""
    page_size = draw(st.sampled_from([1024, 4096, 65536]))
    page_count = draw(st.integers(1, 300))
    pages_alloc = draw(st.integers(0, page_count))
    normal = draw(st.integers(0, pages_alloc))
    zero = draw(st.integers(0, pages_alloc - normal))
    block_pages = draw(st.integers(1, 1 << 20))
    offsets = draw(
        st.lists(st.integers(0, block_pages - 1), min_size=normal + zero, max_size=normal + zero)
    )
    flags = draw(st.sampled_from([0, wire.MULTIFD_FLAG_SYNC]))
    pkt = wire.RamPacket(
        flags=flags,
        pages_alloc=pages_alloc,
        normal_pages=normal,
        zero_pages=zero,
        next_packet_size=normal * page_size,
        packet_num=draw(st.integers(0, (1 << 64) - 1)),
        ramblock=draw(names),
        offsets=np.array(offsets, dtype=np.uint64) * np.uint64(page_size),
    )
    return pkt, page_count, page_size, block_pages * page_size


@given(packets())
def test_every_packet_field_round_trips(case: tuple[wire.RamPacket, int, int, int]) -> None:
    """encode then decode gives back every field; the raw bytes sit at the table's offsets."""
    pkt, page_count, page_size, used_length = case
    raw = wire.encode_packet(pkt, page_count)
    assert len(raw) == 320 + 8 * page_count
    assert (u32(raw, 8), u32(raw, 12), u32(raw, 16), u32(raw, 20), u64(raw, 24), u32(raw, 32)) == (
        pkt.flags,
        pkt.pages_alloc,
        pkt.normal_pages,
        pkt.next_packet_size,
        pkt.packet_num,
        pkt.zero_pages,
    )
    num = pkt.normal_pages + pkt.zero_pages
    slots = np.frombuffer(raw, dtype=">u8", count=page_count, offset=320)
    assert slots[:num].tolist() == pkt.offsets.tolist()
    assert not slots[num:].any()
    got = wire.decode_packet(
        raw, page_count=page_count, page_size=page_size, blocks={pkt.ramblock: used_length}
    )
    assert (got.flags, got.pages_alloc, got.normal_pages, got.zero_pages) == (
        pkt.flags,
        pkt.pages_alloc,
        pkt.normal_pages,
        pkt.zero_pages,
    )
    assert (got.next_packet_size, got.packet_num) == (pkt.next_packet_size, pkt.packet_num)
    assert got.offsets.dtype == np.uint64
    assert got.normal.tolist() == pkt.normal.tolist()
    assert got.zero.tolist() == pkt.zero.tolist()
    assert got.sync == bool(pkt.flags & wire.MULTIFD_FLAG_SYNC)
    assert got.ramblock == (pkt.ramblock if num else "")  # no lookup without pages, as QEMU


@given(uuid=st.binary(min_size=16, max_size=16), channel=st.integers(0, 255))
def test_handshake_round_trip_and_layout(uuid: bytes, channel: int) -> None:
    """MultiFDInit_t: magic, version, uuid[16], id, then 39 zero bytes; decoded back."""
    raw = wire.encode_init(uuid, channel)
    assert len(raw) == 64
    assert u32(raw, 0) == 0x11223344 and u32(raw, 4) == 1
    assert raw[8:24] == uuid and raw[24] == channel and raw[25:] == bytes(39)
    assert wire.decode_init(raw, uuid=uuid, channels=256) == wire.MultiFDInit(uuid, channel)


# --------------------------------------------------------------- bad packets


def set_u32(raw: bytearray, off: int, value: int) -> bytearray:
    """``raw`` with a big-endian u32 written at ``off``."""
    struct.pack_into(">I", raw, off, value)
    return raw


BAD_PACKETS = {
    "magic": (lambda: set_u32(packet([PS], [0]), 0, 0x11223345), wire.MagicError),
    "version": (lambda: set_u32(packet([PS], [0]), 4, 2), wire.VersionError),
    "zlib": (lambda: packet([PS], [0], flags=2), wire.FlagsError),
    "zstd-sync": (lambda: packet([PS], [0], flags=4 | 1), wire.FlagsError),
    "device-state": (lambda: packet([PS], [0], flags=64), wire.FlagsError),
    "unknown-flag": (lambda: packet([PS], [0], flags=128), wire.FlagsError),
    "pages_alloc": (lambda: packet([PS], [0], pages_alloc=9), wire.CountError),
    "normal_pages": (lambda: set_u32(packet([PS], [0]), 16, 9), wire.CountError),
    "zero_pages": (lambda: set_u32(packet([PS], [0]), 32, 8), wire.CountError),
    "unknown-block": (lambda: packet([PS], [0], name="pc.rom"), wire.BlockError),
    "name-not-utf8": (
        lambda: packet([PS], [0], name="pc.ram")[:64] + b"\xff" + packet([PS], [0])[65:],
        wire.BlockError,
    ),
    "offset-past-end": (lambda: packet([PS], [64 * PS]), wire.OffsetError),
    "offset-huge": (lambda: packet([(1 << 64) - PS], []), wire.OffsetError),
    "offset-misaligned": (lambda: packet([PS + 8], [0]), wire.OffsetError),
    "next_packet_size": (lambda: packet([PS], [0], next_packet_size=PS - 1), wire.SizeError),
    "payload-for-zero-only": (lambda: packet([], [0], next_packet_size=PS), wire.SizeError),
    "unused32": (lambda: set_u32(packet([PS], [0]), 36, 1), wire.ReservedError),
    "unused64": (lambda: set_u32(packet([PS], [0]), 60, 1), wire.ReservedError),
    "truncated": (lambda: packet([PS], [0])[:-1], wire.TruncatedError),
    "truncated-header": (lambda: packet([PS], [0])[:11], wire.TruncatedError),
}


@pytest.mark.parametrize("kind", sorted(BAD_PACKETS))
def test_bad_packets_raise_their_packet_error(kind: str) -> None:
    """Each bad packet kind raises its own PacketError subclass (a ValueError)."""
    make, error = BAD_PACKETS[kind]
    with pytest.raises(error) as info:
        decode(make())
    assert isinstance(info.value, wire.PacketError) and isinstance(info.value, ValueError)


def test_qemu_limits_at_the_edge() -> None:
    """The count checks are QEMU's: equality passes, one more fails."""
    assert decode(packet([PS] * 8, [])).normal_pages == 8
    assert decode(packet([PS] * 3, [0] * 5)).zero_pages == 5
    assert decode(packet([], [63 * PS])).zero.tolist() == [63 * PS]  # the last page is fine
    with pytest.raises(wire.CountError):
        decode(set_u32(packet([PS] * 3, [0] * 5), 32, 6))


def test_accepted_like_qemu() -> None:
    """Stale slots, junk after the name's NUL, a 255-byte name, and no lookup for empty packets."""
    raw = packet([PS], [0])
    struct.pack_into(">Q", raw, 320 + 8 * 5, 12345)  # a stale slot past num (QEMU 9.0/9.1)
    raw[64 + 7 : 64 + 10] = b"xyz"  # junk after the NUL
    got = decode(raw)
    assert got.normal.tolist() == [PS] and got.zero.tolist() == [0]
    long_name = "n" * 255
    raw = packet([PS], [], name=long_name)
    raw[319] = ord("!")  # byte 255: QEMU forces it to NUL
    assert wire.decode_packet(raw, page_count=8, page_size=PS, blocks={long_name: PS * 4}).ramblock
    empty = packet([], [], name="no-such-block")
    assert decode(empty).offsets.size == 0


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda raw: set_u32(raw, 0, 0x5145564D), wire.MagicError),
        (lambda raw: set_u32(raw, 4, 3), wire.VersionError),
        (lambda raw: raw[:8] + bytes(16) + raw[24:], wire.HandshakeError),  # another uuid
        (lambda raw: raw[:24] + b"\x04" + raw[25:], wire.HandshakeError),  # id == channels
        (lambda raw: raw[:24] + b"\x05" + raw[25:], wire.HandshakeError),  # id > channels
        (lambda raw: raw[:30] + b"\x01" + raw[31:], wire.ReservedError),
        (lambda raw: raw[:63] + b"\x01", wire.ReservedError),
        (lambda raw: raw[:63], wire.TruncatedError),
    ],
)
def test_bad_handshakes(mutate: object, error: type[wire.PacketError]) -> None:
    """A handshake for another migration, an id out of range, dirty reserved bytes: refused."""
    uuid = bytes(range(1, 17))
    raw = bytearray(wire.encode_init(uuid, 1))
    assert callable(mutate)
    with pytest.raises(error):
        wire.decode_init(bytes(mutate(raw)), uuid=uuid, channels=4)


def test_doctests() -> None:
    """The examples in wire's and savevm's docstrings pass."""
    for module in (wire.multifd, savevm):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0


# ------------------------------------------------------- the main-stream records


def ram_stream(
    records: bytes, blocks: dict[str, int], *, mem_size: bytes | None = None, cut: bool = False
) -> bytes:
    """A whole QEMU 10 main stream whose one PART section holds ``records``.

    ``mem_size`` replaces the START section's block list; ``cut`` ends the
    stream right after ``records`` (for truncations).
    """
    w = StreamWriter(PS)
    head = [
        w.header(),
        w.configuration("multifd-zero"),
        w.section_start(1),
        w.mem_size(list(blocks.items())) if mem_size is None else mem_size,
        w.eos(),
        w.footer(1),
        w.section_part(1),
        records,
    ]
    if cut:
        return b"".join(head)
    tail = [
        w.eos(),
        w.footer(1),
        w.command(savevm.MIG_CMD_SWITCHOVER_START),
        w.section_part(1, end=True),
        w.eos(),
        w.footer(1),
        w.eof(),
        w.vmdescription(b'{"page_size": 4096, "devices": []}'),
    ]
    return b"".join(head + tail)


def read_all(
    records: bytes, blocks: dict[str, int], *, seen: list[object] | None = None, **kw: object
) -> list[object]:
    """The RAM events of ``records`` (the PART section's), read through a channel.

    ``seen`` collects every event as it comes, so a test sees what came before an error.
    """
    near, far = inprocess_pair(timeout=5)
    near.send([ram_stream(records, blocks, **kw)])  # type: ignore[arg-type]
    near.close()
    out: list[object] = [] if seen is None else seen
    in_part = False
    for event in StreamReader(far, page_size=PS).events():
        if isinstance(event, savevm.SectionHeader):
            in_part = event.kind == savevm.QEMU_VM_SECTION_PART
        elif isinstance(event, savevm.SectionFooter):
            in_part = False
        elif in_part and not isinstance(event, savevm.Eos):
            out.append(event)
    return out


@given(
    st.lists(st.lists(st.integers(0, 1023), min_size=1, max_size=300), min_size=1, max_size=5),
    st.booleans(),
)
def test_zero_records_round_trip(runs: list[list[int]], named_each: bool) -> None:
    """Zero records written a run at a time are read back as the same offsets, 9 bytes a
    page; one writer names the block once (CONTINUE after), a fresh one names it again."""
    blocks = {"pc.ram": 1024 * PS}
    data = b""
    expected: list[int] = []
    writer = StreamWriter(PS)
    for k, pages in enumerate(runs):
        offs = np.array(pages, dtype=np.uint64) * np.uint64(PS)
        if named_each:
            writer = StreamWriter(PS)
        chunk = writer.zero_pages("pc.ram", offs)
        assert len(chunk) == 9 * len(pages) + (0 if k > 0 and not named_each else 7)
        data += chunk
        expected += [p * PS for p in pages]
    got: list[int] = []
    for rec in read_all(data, blocks):
        assert isinstance(rec, savevm.ZeroPages) and rec.idstr == "pc.ram"
        got += rec.offsets.tolist()
    assert got == expected


def test_main_stream_records_layout() -> None:
    """The file header, configuration, section headers and footers, the command, EOS,
    MULTIFD_FLUSH, MEM_SIZE and the first zero record's name, as QEMU 10 lays them out
    (``migration/savevm.c``, ``migration/ram.c``)."""
    w = StreamWriter(PS)
    assert w.header() == bytes.fromhex("5145564d00000003")
    assert w.configuration("none") == bytes.fromhex("07 00000004") + b"none"
    assert w.section_start(1) == bytes.fromhex("01 00000001 03") + b"ram" + bytes.fromhex(
        "00000000 00000004"
    )
    assert w.section_part(1) == bytes.fromhex("02 00000001")
    assert w.section_part(1, end=True) == bytes.fromhex("03 00000001")
    assert w.footer(1) == bytes.fromhex("7e 00000001")
    assert w.command(savevm.MIG_CMD_SWITCHOVER_START) == bytes.fromhex("08 000b 0000")
    assert w.eof() + w.vmdescription(b"{}") == bytes.fromhex("00 06 00000002") + b"{}"
    assert w.eos() == (0x10).to_bytes(8, "big")
    flush = w.multifd_flush()
    assert flush == (0x200).to_bytes(8, "big")
    first = w.zero_pages("pc.ram", np.array([8192], np.uint64))
    assert first == (8192 | 0x02).to_bytes(8, "big") + b"\x06pc.ram" + b"\0"
    assert w.zero_pages("pc.ram", np.array([4096], np.uint64)) == (4096 | 0x22).to_bytes(
        8, "big"
    ) + b"\0"  # the same block again: CONTINUE, no name
    blocks = {"pc.ram": 8 * PS, "vga": 2 * PS}
    size = w.mem_size(list(blocks.items()))
    assert size[:8] == ((10 * PS) | 0x04).to_bytes(8, "big")
    assert size[8:] == b"\x06pc.ram" + (8 * PS).to_bytes(8, "big") + b"\x03vga" + (
        2 * PS
    ).to_bytes(8, "big")
    events = savevm.read_stream(ram_stream(flush, blocks, mem_size=size))
    assert savevm.MemSize(tuple(blocks.items())) in events
    assert events.count(savevm.MultifdFlush()) == 1


BAD_RECORDS = [
    ((PS | 0x22).to_bytes(8, "big") + b"\0", errors.StreamBlockError),  # CONTINUE before a name
    ((PS | 0x02).to_bytes(8, "big") + b"\x03vga\0", errors.StreamBlockError),  # unknown block
    ((PS | 0x02).to_bytes(8, "big") + b"\x06pc.ram\x01", errors.StreamFlagsError),  # fill byte
    ((8 * PS | 0x02).to_bytes(8, "big") + b"\x06pc.ram\0", errors.StreamOffsetError),  # past end
    ((8 * PS | 0x08).to_bytes(8, "big") + b"\x06pc.ram" + bytes(PS), errors.StreamOffsetError),
    ((PS | 0x40).to_bytes(8, "big"), errors.UnsupportedStreamError),  # XBZRLE
    ((PS | 0x80).to_bytes(8, "big"), errors.UnsupportedStreamError),  # HOOK (RDMA)
    ((PS | 0x400).to_bytes(8, "big"), errors.StreamFlagsError),  # no such flag
    ((PS | 0x10).to_bytes(8, "big"), errors.StreamFlagsError),  # EOS with an offset
    ((0x30).to_bytes(8, "big"), errors.StreamFlagsError),  # CONTINUE on EOS
    ((8 * PS | 0x04).to_bytes(8, "big"), errors.StreamBlockError),  # MEM_SIZE in a PART
]


@pytest.mark.parametrize(("data", "error"), BAD_RECORDS)
def test_bad_main_stream_records(data: bytes, error: type[errors.StreamError]) -> None:
    """Each bad RAM record raises its StreamError subclass (a PacketError, with the byte
    offset of the record in the stream)."""
    with pytest.raises(error) as caught:
        read_all(data, {"pc.ram": 8 * PS})
    assert isinstance(caught.value, wire.PacketError)
    # The record starts where the PART section's header ends.
    start = len(ram_stream(b"", {"pc.ram": 8 * PS}, cut=True))
    assert start <= caught.value.offset < start + len(data)


@pytest.mark.parametrize(
    "data",
    [
        (0x02).to_bytes(8, "big") + b"\x06pc.r",  # inside the block name
        (0x02).to_bytes(8, "big"),  # before the name
        (0x08).to_bytes(4, "big"),  # inside the record's word
    ],
)
def test_truncated_main_stream_records(data: bytes) -> None:
    """A stream that ends inside a record: StreamTruncatedError (a TruncatedError)."""
    with pytest.raises(errors.StreamTruncatedError):
        read_all(data, {"pc.ram": 8 * PS}, cut=True)
    assert issubclass(errors.StreamTruncatedError, wire.TruncatedError)


def _mem_size(total: int, *entries: tuple[bytes, int]) -> bytes:
    out = (total | 0x04).to_bytes(8, "big")
    for name, length in entries:
        out += bytes([len(name)]) + name + length.to_bytes(8, "big")
    return out


@pytest.mark.parametrize(
    ("mem_size", "error"),
    [
        (_mem_size(8 * PS, (b"pc.ram", 4 * PS), (b"vga", 8 * PS)), errors.StreamBlockError),
        (_mem_size(8 * PS, (b"pc.ram", 4 * PS), (b"pc.ram", 4 * PS)), errors.StreamBlockError),
        (_mem_size(8 * PS, (b"pc.ram", 8 * PS - 1)), errors.StreamSizeError),  # unaligned
        (_mem_size(8 * PS, (b"pc.ram", 0)), errors.StreamSizeError),
        (_mem_size(0), errors.StreamBlockError),  # no blocks
        (_mem_size(1 << 63), errors.StreamSizeError),
    ],
)
def test_bad_block_lists(mem_size: bytes, error: type[errors.StreamError]) -> None:
    """A MEM_SIZE block list that does not add up, repeats a block or has a bad length:
    refused (the destination then compares a good one with its own blocks)."""
    with pytest.raises(error):
        read_all(b"", {"pc.ram": 8 * PS}, mem_size=mem_size)


def test_pages_of_a_block_not_in_the_list_are_refused() -> None:
    """A zero record of a block the stream's MEM_SIZE did not list: StreamBlockError."""
    listed = _mem_size(8 * PS, (b"pc.ram", 8 * PS))
    record = (PS | 0x02).to_bytes(8, "big") + b"\x03vga\0"
    with pytest.raises(errors.StreamBlockError, match="unknown RAM block"):
        read_all(record, {"pc.ram": 8 * PS}, mem_size=listed)


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda raw: b"QEVN" + raw[4:], errors.StreamMagicError),
        (lambda raw: raw[:7] + b"\x02" + raw[8:], errors.StreamVersionError),
        (lambda raw: raw[:8] + b"\x01" + raw[9:], errors.StreamSectionError),  # no configuration
        (lambda raw: raw + b"\x00", errors.StreamTruncatedError),  # bytes after the description
    ],
)
def test_bad_main_stream_framing(mutate: object, error: type[errors.StreamError]) -> None:
    """The stream's framing: magic, version, the configuration section, its end."""
    assert callable(mutate)
    raw = ram_stream(b"", {"pc.ram": 8 * PS})
    with pytest.raises(error):
        savevm.read_stream(mutate(raw))
    assert issubclass(errors.StreamMagicError, wire.MagicError)


def test_bad_zero_record_inside_a_run_rejects_the_whole_run() -> None:
    """A bad fill byte in the middle of a buffered run: nothing of the run is returned."""
    offs = np.arange(1, 8, dtype=np.uint64) * np.uint64(PS)
    data = bytearray(StreamWriter(PS).zero_pages("pc.ram", offs))
    data[-10] = 1  # the fill byte of the next-to-last record
    seen: list[object] = []
    with pytest.raises(errors.StreamFlagsError):
        read_all(bytes(data), {"pc.ram": 8 * PS}, seen=seen)
    assert not any(isinstance(ev, savevm.ZeroPages) for ev in seen)
