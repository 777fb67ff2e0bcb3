"""The codec against streams recorded from a real QEMU 10 (``migration/savevm.c``, ``ram.c``).

The recordings are made by :mod:`support.recordings`: a fresh paused 64 MiB
``-M pc`` guest migrated to a socket that keeps every byte.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from support.qemu_vm import require_qemu
from support.recordings import Recorder

from multifd_zero.wire import MULTIFD_FLAG_SYNC, decode_packet, packet_len
from multifd_zero.wire.savevm import (
    MIG_CMD_SWITCHOVER_START,
    QEMU_VM_SECTION_END,
    QEMU_VM_SECTION_PART,
    QEMU_VM_SECTION_START,
    Command,
    Configuration,
    DeviceState,
    Eos,
    Event,
    MemSize,
    MultifdFlush,
    Pages,
    SectionFooter,
    SectionHeader,
    StreamReader,
    ZeroPages,
    encode_events,
)

pytestmark = pytest.mark.qemu

PAGE = 4096
BLOCKS = (
    ("ram0", 64 << 20),
    ("/rom@etc/acpi/tables", 128 << 10),
    ("pc.bios", 256 << 10),
    ("pc.rom", 128 << 10),
    ("/rom@etc/table-loader", 4 << 10),
    ("/rom@etc/acpi/rsdp", 4 << 10),
)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorder:
    """``recorded(channels, mode)``: a real QEMU 10 migration's bytes (once per module)."""
    require_qemu(10)
    return Recorder(tmp_path_factory.mktemp)


class Source:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def recv_into(self, view: memoryview, /) -> int:
        count = min(len(view), len(self.data) - self.pos)
        view[:count] = self.data[self.pos : self.pos + count]
        self.pos += count
        return count


def located(data: bytes) -> list[tuple[int, int, Event]]:
    """(start, end, event) for every event: stream offsets before and after it."""
    reader = StreamReader(Source(data))
    out = []
    start = 0
    for ev in reader.events():
        out.append((start, reader.offset, ev))
        start = reader.offset
    return out


def multifd_totals(channels: list[bytes]) -> tuple[int, int, list[int]]:
    """Normal pages, zero pages and SYNC packets per channel, decoded with multifd_zero.wire."""
    normal = zero = 0
    syncs = []
    size = packet_len(128)
    blocks = dict(BLOCKS)
    for raw in channels:
        pos, count = 64, 0  # after the handshake
        while pos < len(raw):
            pkt = decode_packet(
                raw[pos : pos + size], page_count=128, page_size=PAGE, blocks=blocks
            )
            normal += pkt.normal_pages
            zero += pkt.zero_pages
            count += bool(pkt.flags & MULTIFD_FLAG_SYNC)
            pos += size + pkt.next_packet_size
        assert pos == len(raw)
        syncs.append(count)
    return normal, zero, syncs


def test_byte_table_of_a_multifd_stream(recorded: Recorder) -> None:
    rec = recorded(2, "multifd")
    main = rec.main
    events = located(main)
    assert main[:8] == struct.pack(">II", 0x5145564D, 3)
    # Configuration at 8, 19 bytes: type 7, BE32 14, the machine type, no subsection.
    start, end, cfg = events[1]
    assert (start, end) == (8, 27) and isinstance(cfg, Configuration)
    assert main[8:27] == b"\x07" + struct.pack(">I", 14) + b"pc-i440fx-10.0"
    assert cfg.capabilities == () and cfg.uuid is None and cfg.target_page_bits is None
    # SECTION_START of ram at 27: id 1, instance 0, version 4; 176 bytes with its footer.
    start, _, head = events[2]
    assert start == 27 and head == SectionHeader(QEMU_VM_SECTION_START, 1, "ram", 0, 4)
    assert main[27:44] == b"\x01" + struct.pack(">I", 1) + b"\x03ram" + struct.pack(">II", 0, 4)
    kinds = [type(ev) for _, _, ev in events[3:7]]
    assert kinds == [MemSize, MultifdFlush, Eos, SectionFooter]
    mem = events[3][2]
    assert isinstance(mem, MemSize) and mem.blocks == BLOCKS
    assert events[6][1] == 203
    # Then PART sections (EOS only: 18 bytes; with a round's flush: 26), the
    # SWITCHOVER_START command (5 bytes), and the END section with flush (26 bytes).
    sections: list[tuple[int, int, int, int]] = []  # kind, start, end, flushes
    cmd_at = None
    for i, (s, _, ev) in enumerate(events):
        if isinstance(ev, SectionHeader) and ev.kind != QEMU_VM_SECTION_START:
            j = i
            while not isinstance(events[j][2], SectionFooter):
                j += 1
            flushes = sum(isinstance(e, MultifdFlush) for _, _, e in events[i:j])
            sections.append((ev.kind, s, events[j][1], flushes))
        if isinstance(ev, Command):
            assert ev == Command(MIG_CMD_SWITCHOVER_START, "SWITCHOVER_START")
            cmd_at = (s, events[i][1])
    assert sections[-1][0] == QEMU_VM_SECTION_END
    assert all(k == QEMU_VM_SECTION_PART for k, *_ in sections[:-1]) and len(sections) >= 2
    for _kind, s, e, flushes in sections:
        assert e - s == 18 + 8 * flushes
    assert sections[-1][3] == 1
    assert cmd_at is not None and cmd_at[1] - cmd_at[0] == 5 and cmd_at[1] == sections[-1][1]
    assert main[cmd_at[0] : cmd_at[1]] == bytes([8, 0, 11, 0, 0])
    # No page on the main channel; the device state runs from the END footer to the end.
    assert not any(isinstance(ev, ZeroPages | Pages) for _, _, ev in events)
    s, e, tail = events[-1]
    assert isinstance(tail, DeviceState) and s == sections[-1][2] and e == len(main)
    assert tail.raw == main[s:]
    assert tail.raw[:1] == b"\x04" and tail.raw[5:11] == b"\x05timer"
    names = [d["name"] for d in tail.vmdescription["devices"]]
    assert names[0] == "timer" and "globalstate" in names and "ram" not in names
    # Every flush is matched by one SYNC packet per channel; counts equal QEMU's.
    flushes = sum(isinstance(ev, MultifdFlush) for _, _, ev in events)
    normal, zero, syncs = multifd_totals(rec.multifd)
    assert syncs == [flushes] * 2
    assert (normal, zero) == (rec.info["ram"]["normal"], rec.info["ram"]["duplicate"])
    # QEMU's SYNC packet (the first after the handshake): flags SYNC, every RAM field 0.
    first = rec.multifd[0][64 : 64 + packet_len(128)]
    assert struct.unpack_from(">IIIIII", first) == (0x11223344, 1, MULTIFD_FLAG_SYNC, 0, 0, 0)
    assert first[32:] == bytes(len(first) - 32)
    # And the writer reproduces the stream byte for byte.
    assert encode_events([ev for _, _, ev in events]) == main


def test_legacy_stream_without_multifd(recorded: Recorder) -> None:
    rec = recorded(0, "legacy")
    events = [ev for _, _, ev in located(rec.main)]
    assert not any(isinstance(ev, MultifdFlush) for ev in events)
    ram = bytearray(64 << 20)
    zero = normal = 0
    for ev in events:
        if isinstance(ev, ZeroPages):
            zero += len(ev.offsets)
            assert ev.idstr != "ram0" or not any(
                ram[o : o + PAGE] != bytes(PAGE) for o in ev.offsets.tolist()[:4]
            )
        elif isinstance(ev, Pages):
            normal += len(ev.offsets)
            if ev.idstr == "ram0":
                for i, off in enumerate(ev.offsets.tolist()):
                    ram[off : off + PAGE] = ev.data[i * PAGE : (i + 1) * PAGE]
    assert (normal, zero) == (rec.info["ram"]["normal"], rec.info["ram"]["duplicate"])
    assert bytes(ram) == rec.guest
    # Only the first record of ram0 names the block; CONTINUE carries it on, across
    # section boundaries, exactly as the writer re-creates it.
    assert rec.main.count(b"\x04ram0") == 2  # MEM_SIZE and the first page record
    assert encode_events(events) == rec.main
    zero_in_guest = int(
        np.count_nonzero(~np.frombuffer(rec.guest, np.uint8).reshape(-1, PAGE).any(axis=1))
    )
    assert zero_in_guest <= zero
