"""The migration engine: mode x postcopy x channels x transport, dirty rounds, bad input.

Expectations come from the reference model (``tests/support/qemu_model.py``):
each round's pages are applied to a :class:`RefDestination` in QEMU's order,
so the destination memory, its receivedmap, the zero pages written and the
query-migrate counters must all match. Byte counters are checked exactly
against QEMU's costs (1344-byte packets, 9-byte legacy zero records, and the
framing of QEMU 10's main stream: configuration, section headers and
footers, the switchover command, the VM description).
Destinations start filled with a sentinel byte, so a page the engine never
wrote is visible.
"""

from __future__ import annotations

import ctypes
import doctest
import hashlib
import json
import math
import mmap
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from support.qemu_model import RefDestination

import multifd_zero as mz
from multifd_zero import guest, stats, wire
from multifd_zero.errors import StreamBlockError, StreamOffsetError, StreamSectionError
from multifd_zero.migration import engine, shm, source, transport
from multifd_zero.migration.destination import MigrationDestination
from multifd_zero.migration.engine import migrate
from multifd_zero.migration.shm import SharedRAM
from multifd_zero.migration.transport import Channel, inprocess_pair
from multifd_zero.wire import savevm
from multifd_zero.wire.savevm import MIG_CMD_SWITCHOVER_START, StreamWriter

PS = 4096
PAGES = 512  # a 2 MiB block
NAME = "pc.ram"
SENTINEL = 0xA5
MODES = ("none", "legacy", "multifd")
T = 30.0


# ----------------------------------------------------------------- the plan


@dataclass
class Plan:
    """A source block and what the guest does to it between rounds.

    ``changes[r]`` lists ``(page, value)`` applied before round ``r + 2``:
    value 0 zeroes the page, any other value zeroes it and then writes that
    byte at a place that depends on the page.
    """

    initial: np.ndarray
    changes: list[list[tuple[int, int]]] = field(default_factory=list)
    extra_dirty: list[list[int]] = field(default_factory=list)

    def apply(self, ram: np.ndarray, r: int) -> list[int]:
        """Change ``ram`` as before round ``r + 2``; return that round's dirty pages."""
        pages = ram.reshape(-1, PS)
        for page, value in self.changes[r]:
            pages[page] = 0
            if value:
                pages[page, (page * 37) % PS] = value
        extra = self.extra_dirty[r] if r < len(self.extra_dirty) else []
        return sorted({p for p, _ in self.changes[r]} | set(extra))

    def rounds(self, ram: np.ndarray) -> Iterator[np.ndarray]:
        """The dirty generator handed to migrate: changes the source, then yields offsets."""
        for r in range(len(self.changes)):
            yield np.array(self.apply(ram, r), dtype=np.uint64) * np.uint64(PS)


def make_plan(seed: int, rounds: int = 3) -> Plan:
    """A random block (half zero pages) and random changes: zeroed, written, re-zeroed pages."""
    initial = guest.make_guest_ram(PAGES * PS, zero_ratio=0.5, seed=seed)
    rng = np.random.default_rng(seed)
    changes = []
    for _ in range(rounds - 1):
        pages = rng.choice(PAGES, size=60, replace=False)
        values = rng.integers(0, 256, size=60) * (rng.random(60) < 0.5)
        changes.append([(int(p), int(v)) for p, v in zip(pages, values, strict=True)])
    return Plan(initial, changes)


@dataclass
class Expected:
    """What the reference model says the migration must produce."""

    memory: bytes
    received: list[int]
    written: int
    normal: int
    zero: int
    multifd_bytes: int
    qemu_file_bytes: int
    rounds: int


def expect(plan: Plan, mode: str, postcopy: bool, channels: int, page_count: int) -> Expected:
    """Replay the plan through the reference model, counting QEMU's bytes."""
    ref = RefDestination(bytes([SENTINEL]) * (PAGES * PS), PS, fresh=True)
    src = plan.initial.copy()
    plen = wire.packet_len(page_count)
    # Handshakes, and the setup sync's SYNC packet on every channel (ram_save_setup).
    multifd = 64 * channels + channels * plen
    qemu_file = 8 + (1 + 4 + len("multifd-zero"))  # file header; configuration, machine type
    qemu_file += 1 + 4 + (1 + len("ram")) + 4 + 4  # SECTION_START: id, idstr, instance, version
    qemu_file += (8 + 1 + len(NAME) + 8) + 8 + 8 + 5  # MEM_SIZE, MULTIFD_FLUSH, EOS, footer
    named = False  # the block is named by the stream's first ZERO record only
    normal_total = zero_total = written = 0
    sets: list[list[int]] = [list(range(PAGES))] + [[] for _ in plan.changes]
    for r, _ in enumerate(sets):
        if r:
            sets[r] = plan.apply(src, r - 1)
        host = src.tobytes()
        pages = sets[r]
        zero = [p * PS for p in pages if host[p * PS : (p + 1) * PS].count(0) == PS]
        normal = [p * PS for p in pages if p * PS not in set(zero)]
        if mode == "none":
            normal, zero = [p * PS for p in pages], []
        data = b"".join(host[o : o + PS] for o in normal)
        if mode == "legacy":
            written += ref.recv_legacy_zero_pages(zero)
            qemu_file += 9 * len(zero) + (1 + len(NAME) if zero and not named else 0)
            named = named or bool(zero)
            batches = math.ceil(len(normal) / page_count)
        else:
            written += ref.recv_zero_page_process(zero, postcopy_ram=postcopy)
            batches = math.ceil(len(pages) / page_count)
        ref.recv_normal_pages(normal, data)
        normal_total += len(normal)
        zero_total += len(zero)
        multifd += batches * plen + len(normal) * PS + channels * plen  # packets, data, SYNCs
        qemu_file += 5 + 8 + 8 + 5  # SECTION_PART, MULTIFD_FLUSH, EOS, footer
    # The last round's MULTIFD_FLUSH is in the END section, after SWITCHOVER_START
    # (the same bytes moved), which has its own header, EOS and footer.
    qemu_file += 5 + 5 + 8 + 5  # command, SECTION_END, EOS, footer
    qemu_file += 1 + 1 + 4 + len(b'{"page_size": 4096, "devices": []}')  # EOF, VM description
    received = [i for i, bit in enumerate(ref.received) if bit]
    return Expected(
        bytes(ref.memory),
        received,
        written,
        normal_total,
        zero_total,
        multifd,
        qemu_file,
        len(sets),
    )


def destination_block(kind: str) -> mz.RAMBlock:
    """A sentinel-filled destination: shared RAM (no staging) or a bytearray (staged).

    Claimed fresh, so that QEMU's precopy saving applies and the sentinel shows every
    page it did not touch (tests/migration/test_dirty_destination.py covers blocks that
    are not fresh)."""
    host: Any = SharedRAM(PAGES * PS) if kind == "shared" else bytearray(PAGES * PS)
    np.frombuffer(host, dtype=np.uint8)[:] = SENTINEL
    return mz.RAMBlock(NAME, host, PS, fresh=True)


def check(result: engine.MigrationResult, dst: mz.RAMBlock, exp: Expected, channels: int) -> None:
    """Destination memory, receivedmap, counters and bytes against the model."""
    assert bytes(memoryview(dst.host)) == exp.memory
    assert (dst.receivedmap.received_offsets() // PS).tolist() == exp.received
    ram = result.ram
    assert (ram["normal"], ram["duplicate"]) == (exp.normal, exp.zero)
    assert ram["normal-bytes"] == exp.normal * PS and ram["page-size"] == PS
    assert ram["multifd-bytes"] == exp.multifd_bytes
    assert ram["transferred"] == exp.multifd_bytes + exp.qemu_file_bytes
    assert ram["dirty-sync-count"] == exp.rounds and ram["total"] == PAGES * PS
    assert ram["pages-per-second"] > 0 and ram["mbps"] > 0
    report = result.destination
    assert report.zero_pages_written == exp.written
    assert report.rounds == exp.rounds
    # One SYNC per channel at setup (ram_save_setup syncs, as QEMU 10 does), then per round.
    assert report.sync_packets == channels * (exp.rounds + 1)
    assert report.bytes_received == ram["transferred"]
    assert report.received_pages == len(exp.received)
    assert result.pages_sent == exp.normal + exp.zero


# ------------------------------------------------------------ the round trips


@pytest.mark.parametrize("transport", ["inprocess", "tcp", "unix"])
@pytest.mark.parametrize("channels", [1, 2, 4])
@pytest.mark.parametrize("postcopy", [False, True], ids=["precopy", "postcopy"])
@pytest.mark.parametrize("mode", MODES)
def test_round_trip(mode: str, postcopy: bool, channels: int, transport: str) -> None:
    """Three rounds with dirtied, zeroed and re-zeroed pages end exactly as the model says."""
    plan = make_plan(seed=channels * 7 + len(mode))
    ram = plan.initial.copy()
    src = mz.RAMBlock(NAME, ram, PS)
    dst = destination_block("shared" if transport == "tcp" else "bytearray")
    options = mz.MigrationOptions(mz.ZeroPageDetection(mode), postcopy_ram=postcopy)
    result = migrate(
        src,
        dst,
        channels=channels,
        options=options,
        page_count=32,
        transport=transport,
        dirty=plan.rounds(ram),
        timeout=T,
    )
    check(result, dst, expect(plan, mode, postcopy, channels, 32), channels)
    assert (result.channels, result.transport, result.rounds) == (channels, transport, 3)
    if mode == "legacy":  # the queueing thread found the zero pages; packets carry none
        assert result.destination.zero_pages == 0
        assert result.destination.legacy_zero_pages == result.ram["duplicate"]
    else:
        assert result.destination.legacy_zero_pages == 0


@pytest.mark.parametrize("transport", ["inprocess", "tcp", "unix"])
def test_default_page_count_and_fresh_destination(transport: str) -> None:
    """QEMU's 128-page packets; no destination given: fresh memory, verified by its hash."""
    ram = guest.make_guest_ram(4 << 20, zero_ratio=0.7, seed=3)
    result = migrate(
        mz.RAMBlock(NAME, ram), channels=3, transport=transport, checksum=True, timeout=T
    )
    assert result.destination_sha256 == hashlib.sha256(ram.tobytes()).hexdigest()
    pages = ram.size // PS
    # Data, and a SYNC on each channel at setup and at the end of the one round.
    assert result.destination.packets == math.ceil(pages / 128) + 2 * 3
    assert result.ram["normal"] + result.ram["duplicate"] == pages
    assert result.gb_per_s > 0
    as_dict = result.as_dict()
    assert as_dict["ram"] == result.ram and as_dict["transport"] == transport


# -------------------------------------------------------------- dirty rounds


def two_round_plan() -> tuple[Plan, dict[str, list[int]]]:
    """Named pages: normal then zero, zero throughout, zero then normal, zero sent twice."""
    initial = np.zeros(PAGES * PS, dtype=np.uint8)
    pages = initial.reshape(-1, PS)
    groups = {
        "normal_then_zero": [1, 2, 3, 100, 511],
        "always_zero": [4, 5, 6, 200, 300],
        "zero_then_normal": [7, 8],
        "zero_sent_twice": [9, 10],
        "normal_throughout": [11, 12],
    }
    for p in groups["normal_then_zero"] + groups["normal_throughout"]:
        pages[p, p] = 1 + p % 200
    changes = [
        [(p, 0) for p in groups["normal_then_zero"]]
        + [(p, 77) for p in groups["zero_then_normal"]]
    ]
    extra = [groups["zero_sent_twice"]]  # dirty but still zero (the guest wrote zeros)
    return Plan(initial, changes, extra), groups


@pytest.mark.parametrize("transport", ["inprocess", "tcp"])
@pytest.mark.parametrize("channels", [1, 3])
def test_dirty_rounds_received_before_branch(transport: str, channels: int) -> None:
    """Multifd precopy: non-zero then zero ends zeroed (received before: written); zero
    pages sent once are never written (the sentinel survives); a zero page sent twice is
    zero-filled the second time, as QEMU does."""
    plan, groups = two_round_plan()
    ram = plan.initial.copy()
    dst = destination_block("shared" if transport == "tcp" else "bytearray")
    result = migrate(
        mz.RAMBlock(NAME, ram),
        dst,
        channels=channels,
        transport=transport,
        dirty=plan.rounds(ram),
        timeout=T,
    )
    out = np.frombuffer(dst.host, dtype=np.uint8).reshape(-1, PS)
    for p in groups["normal_then_zero"]:
        assert not out[p].any(), p
    for p in groups["always_zero"]:
        assert (out[p] == SENTINEL).all(), p  # never written
    for p in groups["zero_then_normal"]:
        assert out[p, (p * 37) % PS] == 77 and out[p].sum() == 77
    for p in groups["zero_sent_twice"]:
        assert not out[p].any(), p
    for p in groups["normal_throughout"]:
        assert (out[p] == ram.reshape(-1, PS)[p]).all()
    written = len(groups["normal_then_zero"]) + len(groups["zero_sent_twice"])
    assert result.destination.zero_pages_written == written
    assert dst.receivedmap.count() == PAGES
    check(result, dst, expect(plan, "multifd", False, channels, 128), channels)


def mincore(memory: mmap.mmap, pages: int) -> list[int]:
    """mincore(2) residency of each page of an mmap."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    vec = (ctypes.c_ubyte * pages)()
    holder = ctypes.c_char.from_buffer(memory)
    try:
        assert libc.mincore(ctypes.addressof(holder), pages * mmap.PAGESIZE, vec) == 0
    finally:
        del holder
    return [v & 1 for v in vec]


@pytest.mark.skipif(mmap.PAGESIZE != PS, reason="needs 4 KiB host pages")
@pytest.mark.parametrize("postcopy", [False, True], ids=["precopy", "postcopy"])
def test_zero_pages_are_never_touched_in_precopy(postcopy: bool) -> None:
    """On fresh private memory, pages zero in every round are not even faulted in (mincore),
    unless postcopy-ram makes every zero page be written."""
    plan, groups = two_round_plan()
    ram = plan.initial.copy()
    memory = mmap.mmap(-1, PAGES * PS, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        memory.madvise(mmap.MADV_NOHUGEPAGE)
    dst = mz.RAMBlock(NAME, memory, PS, fresh=True)  # new anonymous memory: known zero
    options = mz.MigrationOptions(postcopy_ram=postcopy)
    migrate(mz.RAMBlock(NAME, ram), dst, channels=2, options=options, dirty=plan.rounds(ram))
    resident = mincore(memory, PAGES)
    for p in groups["always_zero"]:
        assert resident[p] == (1 if postcopy else 0), p
    for p in groups["normal_then_zero"] + groups["zero_then_normal"]:
        assert resident[p] == 1, p
    memory.close()


def test_dirty_sets_are_sorted_deduplicated_and_checked() -> None:
    """Dirty offsets in any order with repeats are fine; a bad one fails the migration."""
    ram = np.ones(8 * PS, dtype=np.uint8)
    dst = mz.RAMBlock(NAME, bytearray(8 * PS))
    result = migrate(mz.RAMBlock(NAME, ram), dst, dirty=[[3 * PS, PS, 3 * PS]], timeout=T)
    assert result.pages_sent == 8 + 2
    for bad, error in (([PS + 1], ValueError), ([8 * PS], ValueError), (["x"], TypeError)):
        with pytest.raises(error):
            migrate(mz.RAMBlock(NAME, ram), bytearray_block(), dirty=[bad], timeout=T)


def bytearray_block(pages: int = 8) -> mz.RAMBlock:
    """A small writable destination."""
    return mz.RAMBlock(NAME, bytearray(pages * PS))


@pytest.mark.parametrize("transport", ["inprocess", "unix"])
def test_a_failing_dirty_generator_stops_everything(transport: str) -> None:
    """An exception from the dirty generator ends the migration with it, without hanging."""

    def rounds() -> Iterator[list[int]]:
        yield [0]
        raise KeyError("guest crashed")

    with pytest.raises(KeyError, match="guest crashed"):
        migrate(
            mz.RAMBlock(NAME, np.ones(8 * PS, np.uint8)),
            bytearray_block(),
            transport=transport,
            dirty=rounds(),
            timeout=T,
        )


def test_progress_reports_each_round() -> None:
    """progress(round, queued, total) reaches total in every round."""
    calls: list[tuple[int, int, int]] = []
    ram = np.ones(300 * PS, dtype=np.uint8)
    migrate(
        mz.RAMBlock(NAME, ram),
        bytearray_block(300),
        page_count=64,
        dirty=[list(range(0, 100 * PS, PS))],
        progress=lambda *a: calls.append(a),
    )
    assert calls[-1] == (2, 100, 100)
    assert [c for c in calls if c[0] == 1][-1] == (1, 300, 300)
    assert [c[1] for c in calls if c[0] == 1] == [64, 128, 192, 256, 300]


# ------------------------------------------------------------- refusals


def test_arguments_are_checked() -> None:
    """Bad arguments raise before anything starts."""
    src = mz.RAMBlock(NAME, bytes(8 * PS))
    with pytest.raises(ValueError, match="transport"):
        migrate(src, transport="udp")
    with pytest.raises(ValueError, match="channels"):
        migrate(src, channels=0)
    with pytest.raises(ValueError, match="channels"):
        migrate(src, channels=256)
    with pytest.raises(TypeError, match="channels"):
        migrate(src, channels=2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="options"):
        migrate(src, options="multifd")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="source"):
        migrate(b"", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="read-only"):
        migrate(src, mz.RAMBlock(NAME, bytes(8 * PS)))
    with pytest.raises(ValueError, match="page sizes"):
        migrate(src, mz.RAMBlock(NAME, bytearray(8 * PS), 1024))
    with pytest.raises(ValueError, match="page_count"):
        migrate(src, page_count=0)
    with pytest.raises(ValueError, match="timeout"):
        migrate(src, timeout=0)


@pytest.mark.parametrize("transport", ["inprocess", "tcp"])
def test_block_mismatch_is_refused_by_the_destination(transport: str) -> None:
    """The destination checks MEM_SIZE: another name or size is a BlockError, nothing written."""
    src = mz.RAMBlock(NAME, np.ones(8 * PS, np.uint8))
    for dst in (mz.RAMBlock("vga.ram", bytearray(8 * PS)), bytearray_block(16)):
        with pytest.raises(wire.BlockError):
            migrate(src, dst, transport=transport, timeout=T)
        assert not any(dst.host) and dst.receivedmap.count() == 0


# ------------------------------------------- bad packets at a live destination


class FakeSource:
    """Drives a MigrationDestination over in-process channels with hand-made bytes."""

    def __init__(self, channels: int = 2, page_count: int = 8) -> None:
        self.uuid = bytes(range(16))
        self.page_count = page_count
        self.writer = StreamWriter(PS)  # the main stream, QEMU 10's format
        host = bytearray([SENTINEL]) * (64 * PS)
        self.block = mz.RAMBlock(NAME, host, PS)
        self.dest = MigrationDestination(
            [self.block],
            channels=channels,
            options=mz.MigrationOptions(),
            page_count=page_count,
            uuid=self.uuid,
            timeout=5,
        )
        pairs = [inprocess_pair(timeout=5) for _ in range(channels + 1)]
        self.near: list[Channel] = [a for a, _ in pairs]
        self.far: list[Channel] = [b for _, b in pairs]
        self.outcome: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.outcome["report"] = self.dest.run(self.far)
        except BaseException as exc:
            self.outcome["error"] = exc

    def start(self, handshake: bool = True) -> None:
        """The main stream up to a round section's header; each channel's handshake."""
        w = self.writer
        self.near[0].send(
            [
                w.header(),
                w.configuration("multifd-zero"),
                w.section_start(1),
                w.mem_size([(NAME, self.block.used_length)]),
                w.eos(),  # no setup MULTIFD_FLUSH: the tests send the SYNCs they want
                w.footer(1),
                w.section_part(1),
            ]
        )
        if handshake:
            for i, chan in enumerate(self.near[1:]):
                chan.send([wire.encode_init(self.uuid, i)])

    def packet(self, normal: list[int], zero: list[int], **fields: Any) -> bytearray:
        """An encoded packet plus the normal pages' data (page p filled with byte p)."""
        pkt = wire.RamPacket(
            flags=fields.get("flags", 0),
            pages_alloc=fields.get("pages_alloc", self.page_count),
            normal_pages=len(normal),
            zero_pages=len(zero),
            next_packet_size=fields.get("next_packet_size", len(normal) * PS),
            packet_num=1,
            ramblock=fields.get("name", NAME),
            offsets=np.array([p * PS for p in normal + zero], dtype=np.uint64),
        )
        data = b"".join(bytes([p % 256]) * PS for p in normal)
        return bytearray(wire.encode_packet(pkt, self.page_count, data))

    def finish(self) -> BaseException | None:
        """Wait for the destination; return its error (None if it completed)."""
        self.thread.join(10)
        assert not self.thread.is_alive()
        return self.outcome.get("error")


def patch(raw: bytearray, off: int, value: int) -> bytearray:
    """``raw`` with a big-endian u32 at ``off``."""
    struct.pack_into(">I", raw, off, value)
    return raw


# Each: a function of the FakeSource giving the bytes to send, and the expected error.
BAD = {
    "magic": (lambda s: patch(s.packet([20, 21], [1]), 0, 0xDEADBEEF), wire.MagicError),
    "version": (lambda s: patch(s.packet([20, 21], [1]), 4, 7), wire.VersionError),
    "compression": (lambda s: s.packet([20, 21], [1], flags=2), wire.FlagsError),
    "device-state": (lambda s: s.packet([20, 21], [1], flags=64), wire.FlagsError),
    "pages_alloc": (lambda s: s.packet([20, 21], [1], pages_alloc=9), wire.CountError),
    "normal_pages": (lambda s: patch(s.packet([20, 21], [1]), 16, 9), wire.CountError),
    "zero_pages": (lambda s: patch(s.packet([20, 21], [1]), 32, 7), wire.CountError),
    "unknown-block": (lambda s: s.packet([20, 21], [1], name="vga"), wire.BlockError),
    "offset-range": (lambda s: s.packet([20, 64], [1]), wire.OffsetError),
    "offset-alignment": (
        lambda s: (
            s.packet([20, 21], [1])[:320]
            + struct.pack(">Q", 21 * PS + 1)
            + s.packet([20, 21], [1])[328:]
        ),
        wire.OffsetError,
    ),
    "next_packet_size": (
        lambda s: s.packet([20, 21], [1], next_packet_size=PS) + bytes(PS),
        wire.SizeError,
    ),
    "reserved": (lambda s: patch(s.packet([20, 21], [1]), 40, 1), wire.ReservedError),
    "truncated-header": (lambda s: s.packet([20, 21], [1])[:10], wire.TruncatedError),
    "truncated-packet": (lambda s: s.packet([20, 21], [1])[:300], wire.TruncatedError),
    "truncated-payload": (lambda s: s.packet([20, 21], [1])[:-1], wire.TruncatedError),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_packet_closes_the_channel_and_writes_nothing(kind: str) -> None:
    """After a good packet, a bad one: its PacketError is raised, none of its pages (normal
    or zero, even a zero page received before) is written or marked, every channel is closed."""
    make, error = BAD[kind]
    src = FakeSource()
    src.start()
    good = src.packet([1, 2], [3])  # page 1 received with data: a later zero would write it
    src.near[1].send([good])
    src.near[1].send([wire.encode_packet(wire.RamPacket(flags=1), src.page_count)])  # SYNC
    src.near[2].send([wire.encode_packet(wire.RamPacket(flags=1), src.page_count)])
    src.near[0].send([src.writer.multifd_flush()])
    src.near[2].send([make(src)])
    src.near[2].close()  # the end of the stream makes a truncation visible
    exc = src.finish()
    assert type(exc) is error and isinstance(exc, wire.PacketError)
    out = np.frombuffer(src.block.host, dtype=np.uint8).reshape(-1, PS)
    assert (out[1] == 1).all() and (out[2] == 2).all()  # the good packet was applied
    assert (out[20] == SENTINEL).all() and (out[21] == SENTINEL).all()
    assert (src.block.receivedmap.received_offsets() // PS).tolist() == [1, 2, 3]
    assert all(chan.closed for chan in src.far)
    for chan in src.near[:2]:  # the peers see the end of their streams
        assert chan.recv_into(memoryview(bytearray(1))) == 0


@pytest.mark.parametrize(
    ("first_bytes", "error"),
    [
        (lambda s: wire.encode_init(bytes(16), 0), wire.HandshakeError),  # another migration
        (lambda s: wire.encode_init(s.uuid, 2), wire.HandshakeError),  # id == channels
        (lambda s: wire.encode_init(s.uuid, 0), wire.HandshakeError),  # id 0 twice
        (lambda s: b"GARBAGE!", wire.MagicError),
        (lambda s: StreamWriter.header(), wire.HandshakeError),  # two mains
    ],
)
def test_bad_connections_are_refused(first_bytes: Any, error: type[Exception]) -> None:
    """Connections are told apart by their magic and handshakes are checked."""
    src = FakeSource()
    src.start(handshake=False)
    src.near[1].send([wire.encode_init(src.uuid, 0)])
    src.near[2].send([first_bytes(src)])
    assert type(src.finish()) is error
    assert all(chan.closed for chan in src.far)


def test_bad_main_stream_record_stops_the_destination() -> None:
    """A bad legacy zero record (offset past the block) is refused, the run not applied."""
    src = FakeSource()
    src.start()
    offs = np.array([2 * PS, 64 * PS], dtype=np.uint64)
    src.near[0].send([src.writer.zero_pages(NAME, offs)])
    assert type(src.finish()) is StreamOffsetError  # a wire.OffsetError, with the byte offset
    assert (np.frombuffer(src.block.host, np.uint8) == SENTINEL).all()


@pytest.mark.parametrize(
    ("blocks", "match"),
    [
        ([(NAME, 64 * PS), ("vga.ram", PS)], "lacks"),  # one block too many
        ([(NAME, 32 * PS)], "bytes on the source"),  # another size
        ([("vga.ram", 64 * PS)], "lacks"),  # another name
    ],
)
def test_block_list_disagreement_is_refused_before_any_channel_is_read(
    blocks: list[tuple[str, int]], match: str
) -> None:
    """MEM_SIZE must list exactly the destination's blocks: a StreamBlockError (a
    BlockError), and a channel's packet, already sent, is never applied."""
    src = FakeSource()
    w = src.writer
    src.near[0].send(
        [w.header(), w.configuration("multifd-zero"), w.section_start(1), w.mem_size(blocks)]
    )
    for i, chan in enumerate(src.near[1:]):
        chan.send([wire.encode_init(src.uuid, i), src.packet([1], [2])])
    exc = src.finish()
    assert isinstance(exc, StreamBlockError) and isinstance(exc, wire.BlockError)
    assert match in str(exc)
    head = w.header() + w.configuration("multifd-zero") + w.section_start(1)
    assert exc.offset == len(head)  # the MEM_SIZE record's
    assert (np.frombuffer(src.block.host, np.uint8) == SENTINEL).all()
    assert src.block.receivedmap.count() == 0


def test_setup_section_must_begin_with_mem_size() -> None:
    """A START section whose first record is not MEM_SIZE: refused, nothing waited for."""
    src = FakeSource()
    w = src.writer
    src.near[0].send(
        [w.header(), w.configuration("multifd-zero"), w.section_start(1), w.multifd_flush()]
    )
    for i, chan in enumerate(src.near[1:]):
        chan.send([wire.encode_init(src.uuid, i)])
    exc = src.finish()
    assert type(exc) is StreamSectionError and "MEM_SIZE" in str(exc)


def test_plain_precopy_stream_without_channels() -> None:
    """With no multifd channel the main stream carries everything: PAGE records are
    written with their data, ZERO records applied, rounds counted by PART section."""
    block = mz.RAMBlock(NAME, bytearray([SENTINEL]) * (8 * PS), PS)
    dest = MigrationDestination(
        [block], channels=0, options=mz.MigrationOptions(), page_count=8, uuid=None, timeout=5
    )
    near, far = inprocess_pair(timeout=5)
    w = StreamWriter(PS)
    data = b"".join(bytes([p]) * PS for p in (1, 2, 5))
    stream = b"".join(
        [
            w.header(),
            w.configuration("multifd-zero"),
            w.section_start(1),
            w.mem_size([(NAME, 8 * PS)]),
            w.eos(),
            w.footer(1),
            w.section_part(1),
            w.pages(NAME, np.array([1, 2, 5], np.uint64) * np.uint64(PS), data),
            w.zero_pages(NAME, np.array([3, 4], np.uint64) * np.uint64(PS)),
            w.eos(),
            w.footer(1),
            w.command(MIG_CMD_SWITCHOVER_START),
            w.section_part(1, end=True),
            w.zero_pages(NAME, np.array([5], np.uint64) * np.uint64(PS)),
            w.eos(),
            w.footer(1),
            w.eof(),
            w.vmdescription(source.vmdescription(PS)),
        ]
    )
    near.send([stream])
    near.close()
    report = dest.run([far])
    out = np.frombuffer(block.host, np.uint8).reshape(-1, PS)
    assert (out[1] == 1).all() and (out[2] == 2).all()
    assert not out[3:6].any()  # zero-filled: 3 and 4 held the sentinel, 5 held data
    assert (out[[0, 6, 7]] == SENTINEL).all()
    assert (block.receivedmap.received_offsets() // PS).tolist() == [1, 2, 3, 4, 5]
    assert (report.rounds, report.stream_pages, report.legacy_zero_pages) == (1, 3, 3)
    assert (report.zero_pages_written, report.packets) == (3, 0)
    assert report.bytes_received == len(stream)


class RecordingChannel(Channel):
    """A channel that keeps a copy of every byte sent through it."""

    def __init__(self, inner: Channel) -> None:
        super().__init__(inner.timeout)
        self.inner = inner
        self.sent = bytearray()

    def send(self, parts: Any) -> int:
        for part in parts:
            self.sent += memoryview(part).cast("B")
        return self.inner.send(parts)

    def recv_into(self, view: memoryview) -> int:
        return self.inner.recv_into(view)

    def close(self) -> None:
        self.inner.close()

    @property
    def closed(self) -> bool:
        return self.inner.closed


@pytest.mark.parametrize("mode", MODES)
def test_the_main_stream_is_qemu_10s(mode: str) -> None:
    """The source's main stream, recorded and read back with savevm's reader: QEMU 10's
    precopy layout for RAM with multifd, section by section, and byte-identical when
    re-encoded from its events."""
    ram = np.zeros(16 * PS, dtype=np.uint8)
    ram[PS * 2] = 1  # page 2 normal, the others zero
    channels = 2
    pairs = [inprocess_pair(timeout=T) for _ in range(channels + 1)]
    main = RecordingChannel(pairs[0][0])
    options = mz.MigrationOptions(mz.ZeroPageDetection(mode))
    dest = MigrationDestination(
        [mz.RAMBlock(NAME, bytearray(16 * PS))],
        channels=channels,
        options=options,
        page_count=4,
        uuid=None,
        timeout=T,
    )
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(r=dest.run([b for _, b in pairs])))
    thread.start()
    sender = source.MigrationSource(
        mz.RAMBlock(NAME, ram),
        main,
        [a for a, _ in pairs[1:]],
        options=options,
        stats=mz.MigrationStats(),
        page_count=4,
        uuid=bytes(16),
        timeout=T,
    )
    every = np.arange(16, dtype=np.uint64) * np.uint64(PS)
    sender.run([every, every[:4]])
    thread.join(T)
    assert outcome["r"].rounds == 2 and outcome["r"].sync_packets == 3 * channels
    raw = bytes(main.sent)
    events = savevm.read_stream(raw)
    assert savevm.encode_events(events) == raw

    def shape(ev: Any) -> Any:
        if isinstance(ev, savevm.SectionHeader):
            return ("section", ev.kind, ev.section_id, ev.idstr, ev.instance_id, ev.version_id)
        if isinstance(ev, savevm.ZeroPages):
            return ("zero", ev.idstr, (ev.offsets // PS).tolist())
        if isinstance(ev, savevm.DeviceState):
            return ("devices", ev.raw[:1], ev.vmdescription)
        return ev

    ram_id = ("ram", 0, 4)
    zeros: list[Any] = []
    got = [shape(ev) for ev in events]
    # The zero records come in runs of a batch: join them before comparing.
    for ev in got:
        if isinstance(ev, tuple) and ev[0] == "zero":
            zeros += ev[2]
    got = [ev for ev in got if not (isinstance(ev, tuple) and ev[0] == "zero")]
    assert got == [
        savevm.FileHeader(3),
        savevm.Configuration("multifd-zero", raw=StreamWriter.configuration("multifd-zero")),
        ("section", savevm.QEMU_VM_SECTION_START, 1, *ram_id),
        savevm.MemSize(((NAME, 16 * PS),)),
        savevm.MultifdFlush(),  # the setup sync (ram_save_setup)
        savevm.Eos(),
        savevm.SectionFooter(1),
        ("section", savevm.QEMU_VM_SECTION_PART, 1, *ram_id),  # round 1
        savevm.MultifdFlush(),
        savevm.Eos(),
        savevm.SectionFooter(1),
        ("section", savevm.QEMU_VM_SECTION_PART, 1, *ram_id),  # round 2: its sync is in END
        savevm.Eos(),
        savevm.SectionFooter(1),
        savevm.Command(savevm.MIG_CMD_SWITCHOVER_START, "SWITCHOVER_START"),
        ("section", savevm.QEMU_VM_SECTION_END, 1, *ram_id),
        savevm.MultifdFlush(),
        savevm.Eos(),
        savevm.SectionFooter(1),
        ("devices", bytes([savevm.QEMU_VM_EOF]), {"page_size": PS, "devices": []}),
    ]
    if mode == "legacy":  # the zero pages of both rounds, the block named once
        assert zeros == [p for p in range(16) if p != 2] + [0, 1, 3]
        assert raw.count(b"\x06" + NAME.encode()) == 2  # in MEM_SIZE and the first ZERO
    else:
        assert zeros == []


def test_channel_ending_before_sync_is_an_error() -> None:
    """A channel that ends while the main thread waits for its SYNC: TruncatedError."""
    src = FakeSource()
    src.start()
    src.near[1].send([wire.encode_packet(wire.RamPacket(flags=1), src.page_count)])
    src.near[2].close()
    src.near[0].send([src.writer.multifd_flush()])
    assert type(src.finish()) is wire.TruncatedError


def test_destination_without_source_times_out() -> None:
    """Nobody connects: the destination gives up after its timeout."""
    block = mz.RAMBlock(NAME, bytearray(8 * PS))
    dest = MigrationDestination(
        [block],
        channels=1,
        options=mz.MigrationOptions(),
        page_count=8,
        uuid=None,
        timeout=0.2,
    )
    _, b = inprocess_pair(timeout=0.2)
    _, d = inprocess_pair(timeout=0.2)
    with pytest.raises(TimeoutError):
        dest.run([b, d])
    assert b.closed  # the connection it waited on (d was never accepted)


def test_source_without_destination_times_out() -> None:
    """Nobody reads: the source gives up after its timeout (every wait is bounded)."""
    pairs = [inprocess_pair(timeout=0.3, capacity=1 << 16) for _ in range(2)]
    sender = source.MigrationSource(
        mz.RAMBlock(NAME, np.ones(256 * PS, np.uint8)),
        pairs[0][0],
        [pairs[1][0]],
        options=mz.MigrationOptions(),
        stats=mz.MigrationStats(),
        page_count=16,
        uuid=bytes(16),
        timeout=0.3,
    )
    with pytest.raises(TimeoutError):
        sender.run([np.arange(256, dtype=np.uint64) * np.uint64(PS)])
    assert pairs[1][0].closed


def test_doctests() -> None:
    """The examples in the engine's, transport's, stats' and shm's docstrings pass."""
    for module in (engine, transport, stats, shm):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0


# ------------------------------------------------------------ the migrate command


def run_cli(args: list[str], cwd: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``python -m multifd_zero ARGS`` from ``cwd`` (outside the checkout), bounded in time."""
    env = {k: v for k, v in os.environ.items() if k != "MULTIFD_ZERO_SIMD"}
    return subprocess.run(
        [sys.executable, "-m", "multifd_zero", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kwargs,
    )


@pytest.mark.parametrize(
    ("transport", "mode", "channels"),
    [("tcp", "multifd", 2), ("unix", "legacy", 3), ("inprocess", "none", 1), ("tcp", "legacy", 4)],
)
def test_migrate_command_json(tmp_path: Any, transport: str, mode: str, channels: int) -> None:
    """The command migrates with dirty rounds, verifies by hash and reports query-migrate names."""
    proc = run_cli(
        [
            "migrate",
            "--size-mib",
            "4",
            "--transport",
            transport,
            "--channels",
            str(channels),
            "--zero-page-detection",
            mode,
            "--rounds",
            "3",
            "--dirty-ratio",
            "0.1",
            "--json",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["verified"] is True and data["source_sha256"] == data["destination_sha256"]
    assert (data["transport"], data["channels"], data["rounds"]) == (transport, channels, 3)
    ram = data["ram"]
    for key in (
        "normal",
        "duplicate",
        "normal-bytes",
        "transferred",
        "multifd-bytes",
        "pages-per-second",
    ):
        assert key in ram
    assert ram["normal"] + ram["duplicate"] == data["pages_sent"] > 1024
    assert ram["dirty-sync-count"] == 3
    if mode == "none":
        assert ram["duplicate"] == 0


def test_migrate_command_from_an_image(tmp_path: Any) -> None:
    """--image: a RAM image file is migrated (dirty rounds change a private copy, not the file)."""
    image = tmp_path / "guest.ram"
    data = np.zeros(256 * PS, dtype=np.uint8)
    data[:: PS * 3] = 7
    image.write_bytes(data.tobytes())
    proc = run_cli(["migrate", "--image", str(image), "--rounds", "2"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "verify: OK" in proc.stdout and "duplicate:" in proc.stdout
    assert "GB/s" in proc.stdout
    assert image.read_bytes() == data.tobytes()
    bad = tmp_path / "odd.ram"
    bad.write_bytes(b"x" * 5000)
    proc = run_cli(["migrate", "--image", str(bad)], tmp_path)
    # A file that cannot be used is a failed run (1), as in every command; 2 is for usage.
    assert proc.returncode == 1 and "multiple of the page size" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_migrate_command_progress_bar(tmp_path: Any) -> None:
    """A tqdm bar on a terminal's stderr; none with --no-progress or when not a TTY."""
    import fcntl  # POSIX only, like the pseudo-terminal
    import termios

    leader, follower = os.openpty()
    # A terminal of 24 x 120 (a fresh pty is 0 x 0, where tqdm draws nothing).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "multifd_zero", "migrate", "--size-mib", "16", "--rounds", "2"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=follower,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0
        os.set_blocking(leader, False)
        output = b""
        for _ in range(1000):  # bounded: drain what the bar wrote
            try:
                chunk = os.read(leader, 65536)
            except (BlockingIOError, OSError):
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(leader)
        os.close(follower)
    assert b"round 1" in output and b"page" in output
    quiet = run_cli(["migrate", "--size-mib", "4", "--rounds", "1"], tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_idle_channels_wait_while_the_migration_moves() -> None:
    """Legacy detection on all-zero memory sends nothing on the multifd channels for a whole
    round, longer than the timeout: they wait, because the main channel makes progress."""
    ram = np.zeros(128 * 64 * PS, dtype=np.uint8)  # 64 batches of 128 zero pages
    start = time.monotonic()
    result = migrate(
        mz.RAMBlock(NAME, ram),
        channels=2,
        options=mz.MigrationOptions(zero_page_detection=mz.ZeroPageDetection.LEGACY),
        progress=lambda *_: time.sleep(0.02),  # a slow queueing thread: about 1.3 s a round
        timeout=0.5,
    )
    assert time.monotonic() - start > 1.0
    # Only SYNC packets: one per channel at setup (ram_save_setup) and at the round's end.
    assert result.ram["duplicate"] == 128 * 64 and result.destination.packets == 2 * 2


def test_a_stalled_source_times_out() -> None:
    """Nothing moves for longer than the timeout (a dirty generator that hangs): TimeoutError."""

    def rounds() -> Iterator[list[int]]:
        time.sleep(1.0)
        yield [0]

    with pytest.raises(TimeoutError):
        migrate(
            mz.RAMBlock(NAME, np.ones(8 * PS, np.uint8)),
            bytearray_block(),
            dirty=rounds(),
            timeout=0.3,
        )
