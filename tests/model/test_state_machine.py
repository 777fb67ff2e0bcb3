"""A whole migration as a hypothesis state machine, checked against a plain model.

One source block, one destination block, several multifd channels plus the
main channel, and a guest that keeps changing the source. Hypothesis chooses,
step by step:

- guest writes: data, zeros, or nothing (a page left alone);
- a batch of any subset of the pages not in flight, in any order, sent on any
  channel: legacy check on the main thread (``save_zero_pages``), then the
  channel's detection (``send_zero_page_detect``), with the release rule;
- every packet goes through the wire format: a multifd RAM packet
  (``wire.encode_packet``, decoded with ``wire.decode_packet`` when its
  delivery starts) or main-stream zero records (``wire.savevm``, read back
  inside a RAM PART section of a QEMU 10 main stream), and must
  decode to exactly what was sent (``[wire]``);
- the start and the end of a packet's delivery on any channel (channels are
  FIFO, as a socket is, but independent of each other), so deliveries of
  different channels interleave, even in the middle of one another;
- a full dirty round (every changed page sent, everything delivered: QEMU's
  multifd sync);
- the switch to postcopy (with the ``postcopy-ram`` capability).

Detection is ``multifd``, ``legacy`` or ``none``; ``postcopy-ram`` and
``release-ram`` are on or off; page size 1 or 4 KiB; 1 to 130 pages (three
64-bit words of receivedmap); 1 to 4 channels.

The destination starts as *sentinel* pages (see ``support.receivers``): a
page still holding its sentinel was never written by the receiver, and reads
as zero, like an unpopulated page of fresh anonymous memory. The model
(``tests/support/qemu_model.py``) runs on sentinel memory too, so the two must
agree byte for byte.

Invariants, checked after every step (each failure names its tag):

- ``[stats]`` the shared ``MigrationStats`` equal the model's counts;
- ``[receivedmap]`` the receivedmap holds exactly the pages ever delivered
  (pages of a packet whose delivery is half done may be either);
- ``[dest==source]`` the destination, read as a guest would, equals the source
  for every page delivered since it last changed;
- ``[precopy-never-written]`` without postcopy-ram, a page whose only arrival
  was one multifd zero page was never written (QEMU 9.1's receivedmap rule);
- ``[postcopy-populated]`` with postcopy-ram, every page marked received has
  been written at least once (QEMU 10.1's fix);
- ``[release]`` ``release-ram`` in postcopy discards exactly the zero pages
  the model discards, in QEMU's order, and nothing otherwise;
- ``[model]`` destination bytes equal the model's, the source is untouched by
  sending, and every packet equals the model's (order, ``normal_num``, data).

The machine catches the two receiver bugs QEMU shipped (tests at the end).
Hypothesis finds each one with the machine unchanged, only the receiver
swapped; shrunk, the counterexamples read:

1. A receiver that skips the postcopy write (QEMU before 10.1, fixed by
   commit 249543d0c0): a first-arrival zero page is only marked received::

       state.start(page_size=1024, num_pages=1, channels=1, mode='multifd',
                   postcopy_ram=True, release_ram=False)
       state.start_postcopy()
       state.full_round(first_channel=0)
       -> AssertionError: [postcopy-populated] pages marked received but never
          written: [0]

2. A non-atomic receivedmap set (QEMU uses ``set_bit_atomic``), modelled as
   a channel whose bit set is a load step (``begin_delivery``) and a later
   store step (``finish_delivery``): two channels on neighbouring bits of one
   64-bit word, the second store overwrites the first::

       state.start(page_size=1024, num_pages=2, channels=2, mode='multifd',
                   postcopy_ram=False, release_ram=False)
       state.send_batch(channel=0, pages=[0])
       state.begin_delivery(channel='ch0')       # loads word 0
       state.send_batch(channel=1, pages=[1])
       state.begin_delivery(channel='ch1')       # loads word 0 (bit 0 not yet stored)
       state.full_round(first_channel=0)         # ch0 stores bit 0, ch1 stores bit 1
                                                 # over the old word: bit 0 is lost
       -> AssertionError: [receivedmap] delivered pages with no bit: [0]

Both searches are deterministic (``derandomize=True``, no example database)
and involve no timing: the interleaving is a choice hypothesis makes. In the
``ci`` profile they stop at the first counterexample (a few to a few hundred
examples); with ``HYPOTHESIS_PROFILE=release`` they also shrink it to the
examples above.

Budget: the main machine runs three times ``max_examples`` of the active
profile (``ci``: 300 examples of up to 40 steps, a few seconds;
``HYPOTHESIS_PROFILE=release``: 4500 examples of up to 100 steps). The bug
hunts may run up to 3000 examples of 20 steps in any profile, and pass as
soon as hypothesis finds the bug.
"""

from __future__ import annotations

import collections
import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from support.qemu_model import (
    LEGACY,
    MULTIFD,
    NONE,
    RefDestination,
    RefStats,
    ref_gather,
    ref_save_zero_pages,
    ref_send_zero_page_detect,
)
from support.receivers import (
    PackageReceiver,
    Packet,
    SkipPostcopyWriteReceiver,
    SplitBitSetReceiver,
    logical,
    sentinel_mask,
    sentinel_pages,
)

import multifd_zero as mz
from multifd_zero import wire
from multifd_zero.wire import savevm

PAGE_SIZES = (1024, 4096)
MAX_PAGES = 130
GUEST_KINDS = ("zero", "byte", "fill")

# Figures for the closing note, summed over every machine run in this process.
FIGURES: collections.Counter[str] = collections.Counter()


class MigrationMachine(RuleBasedStateMachine):
    """Source, channels and destination of one migration, with the model beside them."""

    RECEIVER: type[PackageReceiver] = PackageReceiver

    def __init__(self) -> None:
        super().__init__()
        self.ready = False

    # ------------------------------------------------------------------ setup

    @initialize(
        page_size=st.sampled_from(PAGE_SIZES),
        num_pages=st.integers(1, MAX_PAGES),
        channels=st.integers(1, 4),
        mode=st.sampled_from((MULTIFD, LEGACY, NONE)),
        postcopy_ram=st.booleans(),
        release_ram=st.booleans(),
    )
    def start(
        self,
        page_size: int,
        num_pages: int,
        channels: int,
        mode: str,
        postcopy_ram: bool,
        release_ram: bool,
    ) -> None:
        FIGURES["examples"] += 1
        self.ps = page_size
        self.n = num_pages
        self.mode = mode
        self.options = mz.MigrationOptions(
            zero_page_detection=mode, postcopy_ram=postcopy_ram, release_ram=release_ram
        )
        self.capacity = mz.multifd_ram_page_count(page_size)
        self.channels = [f"ch{k}" for k in range(channels)]
        self.queues: dict[str, collections.deque[Packet]] = {
            name: collections.deque() for name in [*self.channels, "main"]
        }
        # Source: the guest's memory, and the model's copy of it.
        self.src = np.zeros((num_pages, page_size), dtype=np.uint8)
        self.released: list[int] = []
        self.src_block = mz.RAMBlock(
            "pc.ram", self.src.reshape(-1), page_size, on_release=self._on_release
        )
        self.m_src = bytearray(self.src.tobytes())
        # Destination: sentinel pages stand for never-populated memory.
        self.sentinel = sentinel_pages(num_pages, page_size)
        self.dst = self.sentinel.copy()
        # Claimed fresh: QEMU's own assumption, which the sentinels make visible.
        self.dst_block = mz.RAMBlock("pc.ram", self.dst.reshape(-1), page_size, fresh=True)
        self.receiver = self.RECEIVER(self.dst_block, self.options)
        self.m_dst = RefDestination(self.sentinel.tobytes(), page_size, fresh=True)
        self.stats = mz.MigrationStats()
        self.m_stats = RefStats()
        self.m_released: list[int] = []
        self.in_postcopy = False
        self.packet_num = 0
        # Per page: guest version, version last delivered, arrivals so far.
        self.version = [0] * num_pages
        self.delivered_version = [-1] * num_pages
        self.arrivals: list[list[str]] = [[] for _ in range(num_pages)]
        self.in_flight: set[int] = set()
        self.ready = True

    def _on_release(self, offsets: np.ndarray) -> None:
        self.released.extend(int(o) for o in offsets)

    # ----------------------------------------------------------------- guest

    @precondition(lambda self: self.ready)
    @rule(data=st.data())
    def guest_writes(self, data: st.DataObject) -> None:
        """The guest writes data or zeros into some pages (the others are left alone)."""
        writes = data.draw(
            st.lists(
                st.tuples(
                    st.integers(0, self.n - 1),
                    st.sampled_from(GUEST_KINDS),
                    st.integers(1, 255),
                    st.integers(0, self.ps - 1),
                ),
                min_size=1,
                max_size=8,
            ),
            label="writes",
        )
        for page, kind, value, position in writes:
            page_bytes = bytearray(self.ps)
            if kind == "byte":
                page_bytes[position] = value
            elif kind == "fill":
                page_bytes[:] = bytes([value]) * self.ps
            self.src[page] = np.frombuffer(page_bytes, dtype=np.uint8)
            self.m_src[page * self.ps : (page + 1) * self.ps] = page_bytes
            self.version[page] += 1
            FIGURES["guest writes"] += 1

    # ------------------------------------------------------------------ send

    def _available(self) -> list[int]:
        return [p for p in range(self.n) if p not in self.in_flight]

    @precondition(lambda self: self.ready and len(self.in_flight) < self.n)
    @rule(data=st.data())
    def send_batch(self, data: st.DataObject) -> None:
        """Queue any subset of the pages not in flight, in any order, on one channel."""
        channel = data.draw(st.integers(0, len(self.channels) - 1), label="channel")
        available = self._available()
        pages = data.draw(
            st.lists(
                st.sampled_from(available),
                unique=True,
                min_size=1,
                max_size=min(len(available), self.capacity),
            ),
            label="pages",
        )
        self._send(self.channels[channel], pages)

    def _send(self, channel: str, pages: list[int]) -> None:
        ps = self.ps
        offsets = [p * ps for p in pages]
        versions = {p: self.version[p] for p in pages}
        released_before = len(self.released)
        # The main thread: legacy detection (returns every page unless legacy).
        rest, legacy_zero = mz.save_zero_pages(
            self.src_block,
            offsets,
            options=self.options,
            stats=self.stats,
            in_postcopy=self.in_postcopy,
        )
        m_rest, m_legacy_zero, m_released = ref_save_zero_pages(
            self.m_src,
            offsets,
            ps,
            self.m_stats,
            mode=self.mode,
            release_ram=self.options.release_ram,
            in_postcopy=self.in_postcopy,
        )
        assert rest.tolist() == m_rest, "[model] save_zero_pages left other pages for multifd"
        assert legacy_zero.tolist() == m_legacy_zero, "[model] legacy zero pages differ"
        self.m_released += m_released
        if legacy_zero.size:
            zero_pages = {int(o) // ps: versions[int(o) // ps] for o in legacy_zero}
            packet = Packet("main", "legacy", np.zeros(0, np.uint64), b"", legacy_zero, zero_pages)
            # On the wire: RAM_SAVE_FLAG_ZERO records of the main stream.
            packet.private["wire"] = savevm.StreamWriter(ps).zero_pages("pc.ram", legacy_zero)
            self.queues["main"].append(packet)
        # The channel: multifd detection on what is left.
        if rest.size:
            batch = mz.MultiFDPages(self.src_block, rest)
            mz.send_zero_page_detect(
                batch, options=self.options, stats=self.stats, in_postcopy=self.in_postcopy
            )
            model = ref_send_zero_page_detect(
                self.m_src,
                m_rest,
                ps,
                self.m_stats,
                mode=self.mode,
                release_ram=self.options.release_ram,
                in_postcopy=self.in_postcopy,
            )
            assert batch.offset.tolist() == model.offsets, "[model] partition order differs"
            assert batch.normal_num == model.normal_num, "[model] normal_num differs"
            self.m_released += model.released
            payload = bytes(batch.normal_data())
            assert payload == ref_gather(self.m_src, batch.normal.tolist(), ps), (
                "[model] normal page data differs"
            )
            rest_pages = {int(o) // ps: versions[int(o) // ps] for o in rest}
            packet = Packet(
                channel,
                "multifd",
                np.array(batch.normal, dtype=np.uint64),
                payload,
                np.array(batch.zero, dtype=np.uint64),
                rest_pages,
            )
            # On the wire: QEMU's multifd RAM packet, then the normal pages.
            self.packet_num += 1
            packet.private["wire"] = wire.encode_packet(
                wire.RamPacket(
                    flags=wire.MULTIFD_FLAG_NOCOMP,
                    pages_alloc=self.capacity,
                    normal_pages=batch.normal_num,
                    zero_pages=batch.zero_num,
                    next_packet_size=len(payload),
                    packet_num=self.packet_num,
                    ramblock="pc.ram",
                    offsets=batch.offset,
                ),
                self.capacity,
                payload,
            )
            self.queues[channel].append(packet)
        assert self.released[released_before:] == self.m_released[released_before:], (
            "[release] released pages differ from the model's"
        )
        self.in_flight.update(pages)
        FIGURES["pages sent"] += len(pages)
        FIGURES["batches"] += 1

    # --------------------------------------------------------------- receive

    def _heads(self, state: str) -> list[str]:
        return [
            name for name, queue in self.queues.items() if queue and queue[0].state == state
        ]

    @precondition(lambda self: self.ready and self._heads("queued"))
    @rule(data=st.data())
    def begin_delivery(self, data: st.DataObject) -> None:
        """A channel's receiver starts on its oldest packet."""
        channel = data.draw(st.sampled_from(self._heads("queued")), label="channel")
        self._begin(self.queues[channel][0])

    def _begin(self, packet: Packet) -> None:
        """Decode the packet as the receiving channel reads it, then apply it."""
        self._decode(packet)
        packet.state = "delivering"
        self.receiver.begin(packet)

    def _decode(self, packet: Packet) -> None:
        raw = packet.private.pop("wire")
        blocks = {"pc.ram": self.n * self.ps}
        if packet.kind == "legacy":
            # The records go into a RAM PART section of a whole stream, as the engine sends them.
            w = savevm.StreamWriter(self.ps)
            setup = [w.header(), w.configuration("multifd-zero"), w.section_start(1)]
            setup += [w.mem_size(list(blocks.items())), w.eos(), w.footer(1), w.section_part(1)]
            reader = savevm.StreamReader(_BytesChannel(b"".join([*setup, raw, w.eos()])),
                                         page_size=self.ps)
            events = list(itertools.islice(reader.events(), len(setup) + 2))
            record = events[-2]
            assert isinstance(record, savevm.ZeroPages) and record.idstr == "pc.ram"
            assert record.offsets.tolist() == packet.zero.tolist(), "[wire] zero records"
            assert events[-1] == savevm.Eos(), "[wire] the records end where they were cut"
            packet.zero = record.offsets
            return
        size = wire.packet_len(self.capacity)
        got = wire.decode_packet(raw, page_count=self.capacity, page_size=self.ps, blocks=blocks)
        assert got.normal.tolist() == packet.normal.tolist(), "[wire] normal offsets"
        assert got.zero.tolist() == packet.zero.tolist(), "[wire] zero offsets"
        assert raw[size:] == packet.data, "[wire] payload"
        assert got.next_packet_size == len(raw) - size, "[wire] next_packet_size"
        packet.normal, packet.zero, packet.data = got.normal, got.zero, raw[size:]

    @precondition(lambda self: self.ready and self._heads("delivering"))
    @rule(data=st.data())
    def finish_delivery(self, data: st.DataObject) -> None:
        """A channel's receiver finishes its packet."""
        channel = data.draw(st.sampled_from(self._heads("delivering")), label="channel")
        self._finish(channel)

    def _finish(self, channel: str) -> None:
        packet = self.queues[channel].popleft()
        self.receiver.finish(packet)
        # The model applies the same packet, in QEMU's order.
        zero = packet.zero.tolist()
        if packet.kind == "legacy":
            self.m_dst.recv_legacy_zero_pages(zero)
        else:
            self.m_dst.recv_zero_page_process(zero, postcopy_ram=self.options.postcopy_ram)
            self.m_dst.recv_normal_pages(packet.normal.tolist(), packet.data)
        for off in zero:
            self.arrivals[off // self.ps].append(
                "legacy-zero" if packet.kind == "legacy" else "multifd-zero"
            )
        for off in packet.normal.tolist():
            self.arrivals[off // self.ps].append("normal")
        for page, version in packet.versions.items():
            self.delivered_version[page] = version
            self.in_flight.discard(page)
        FIGURES["pages received"] += len(packet.versions)
        FIGURES["packets"] += 1

    def _deliver_everything(self) -> None:
        for name, queue in self.queues.items():
            while queue:
                if queue[0].state == "queued":
                    self._begin(queue[0])
                self._finish(name)

    @precondition(lambda self: self.ready)
    @rule(first_channel=st.integers(0, 3))
    def full_round(self, first_channel: int) -> None:
        """Sync, send every changed page round-robin over the channels, sync again."""
        self._deliver_everything()
        dirty = [p for p in range(self.n) if self.delivered_version[p] != self.version[p]]
        for k, start in enumerate(range(0, len(dirty), self.capacity)):
            channel = self.channels[(first_channel + k) % len(self.channels)]
            self._send(channel, dirty[start : start + self.capacity])
        self._deliver_everything()
        FIGURES["full rounds"] += 1

    @precondition(lambda self: self.ready and self.options.postcopy_ram and not self.in_postcopy)
    @rule()
    def start_postcopy(self) -> None:
        """The source switches to postcopy (release-ram now discards zero pages)."""
        self.in_postcopy = True

    # ------------------------------------------------------------ invariants

    @invariant()
    def check(self) -> None:
        """Every invariant, in a fixed order, so that a failure names the first broken one."""
        if not self.ready:
            return
        FIGURES["invariant checks"] += 1
        n, ps = self.n, self.ps
        delivering = {p for q in self.queues.values() for k in q if k.state == "delivering"
                      for p in k.pages}
        settled = np.array([p not in delivering for p in range(n)])
        ever = np.array([bool(a) for a in self.arrivals])

        # [stats]
        assert self.stats.snapshot() == (self.m_stats.normal_pages, self.m_stats.zero_pages), (
            f"[stats] {self.stats} but the model counts {self.m_stats}"
        )
        assert self.stats.query_migrate(ps) == self.m_stats.query_migrate(ps), "[stats] query"

        # [receivedmap]
        bits = np.unpackbits(
            self.dst_block.receivedmap.bitmap.view(np.uint8), bitorder="little"
        ).astype(bool)
        past = (np.flatnonzero(bits[n:]) + n).tolist()
        assert not past, f"[receivedmap] bits past the last page: {past}"
        lost = np.flatnonzero(ever & ~bits[:n] & settled).tolist()
        extra = np.flatnonzero(~ever & bits[:n] & settled).tolist()
        assert not lost, f"[receivedmap] delivered pages with no bit: {lost}"
        assert not extra, f"[receivedmap] bits of pages never delivered: {extra}"
        FIGURES["bits checked"] += n

        # [dest==source]
        clean = np.array(
            [self.delivered_version[p] == self.version[p] and p not in self.in_flight
             for p in range(n)]
        )
        seen = logical(self.dst, self.sentinel)
        wrong = np.flatnonzero(clean & (seen != self.src).any(axis=1)).tolist()
        assert not wrong, f"[dest==source] pages differ from the source: {wrong}"

        untouched = sentinel_mask(self.dst, self.sentinel)
        # [precopy-never-written]
        if not self.options.postcopy_ram:
            once_zero = np.array([a == ["multifd-zero"] for a in self.arrivals]) & settled
            written = np.flatnonzero(once_zero & ~untouched).tolist()
            assert not written, (
                f"[precopy-never-written] first-arrival zero pages were written: {written}"
            )
        # [postcopy-populated]
        else:
            hollow = np.flatnonzero(bits[:n] & untouched & settled).tolist()
            assert not hollow, (
                f"[postcopy-populated] pages marked received but never written: {hollow}"
            )

        # [release]
        assert self.released == self.m_released, "[release] released pages differ"
        if not (self.options.release_ram and self.in_postcopy):
            assert not self.released, "[release] pages released outside release-ram + postcopy"

        # [model]
        assert self.src.tobytes() == bytes(self.m_src), "[model] the source changed by sending"
        model = np.frombuffer(bytes(self.m_dst.memory), dtype=np.uint8).reshape(n, ps)
        differ = np.flatnonzero(settled & (model != self.dst).any(axis=1)).tolist()
        assert not differ, f"[model] destination pages differ from the model's: {differ}"
        assert self.m_dst.received == ever.tolist(), "[model] the model's own receivedmap"


class _BytesChannel:
    """What StreamReader reads from: ``recv_into`` over fixed bytes."""

    def __init__(self, raw: bytes) -> None:
        self.raw, self.pos = raw, 0

    def recv_into(self, view: memoryview) -> int:
        piece = self.raw[self.pos : self.pos + len(view)]
        view[: len(piece)] = piece
        self.pos += len(piece)
        return len(piece)


def machine_with(receiver: type[PackageReceiver]) -> type[MigrationMachine]:
    """The same machine with another receiver plugged in."""
    name = f"MigrationMachine_{receiver.__name__}"
    return type(name, (MigrationMachine,), {"RECEIVER": receiver})


MAIN_STEPS = {"ci": 40, "release": 100}


def test_migration_state_machine() -> None:
    """The package's receiver keeps every invariant over the profile's examples."""
    profile = os.environ.get("HYPOTHESIS_PROFILE", "ci")  # the profile conftest.py loaded
    steps = MAIN_STEPS.get(profile, 40)
    before = FIGURES.copy()
    run_state_machine_as_test(
        MigrationMachine,
        settings=settings(
            settings.default,
            max_examples=3 * settings.default.max_examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                   HealthCheck.filter_too_much],
        ),
    )
    ran = FIGURES - before
    assert ran["examples"] >= 1 and ran["invariant checks"] > ran["examples"]
    print(f"\nstate machine ({profile}): {dict(ran)}")


# -------------------------------------------------------------- the QEMU bugs

HUNT = settings(
    max_examples=3000,
    stateful_step_count=20,
    derandomize=True,
    database=None,
    deadline=None,
    report_multiple_bugs=False,
    print_blob=False,
    suppress_health_check=list(HealthCheck),
    # ci: stop at the first counterexample; release: shrink it too.
    phases=(Phase.generate, Phase.shrink)
    if os.environ.get("HYPOTHESIS_PROFILE") == "release"
    else (Phase.generate,),
)


@contextmanager
def counted() -> Iterator[collections.Counter[str]]:
    before = FIGURES.copy()
    ran: collections.Counter[str] = collections.Counter()
    try:
        yield ran
    finally:
        ran.update(FIGURES - before)


def test_finds_the_skipped_postcopy_write() -> None:
    """QEMU < 10.1 only marked a first-arrival zero page received, even with postcopy-ram.

    Hypothesis finds a run where a page is marked received but was never
    written, which in postcopy means a fault on it is never served.
    """
    with counted() as ran, pytest.raises(AssertionError, match=r"\[postcopy-populated\]"):
        run_state_machine_as_test(machine_with(SkipPostcopyWriteReceiver), settings=HUNT)
    print(f"\nskipped postcopy write found after {ran['examples']} examples: {dict(ran)}")


def test_finds_the_non_atomic_bitmap_set() -> None:
    """A receivedmap set split into load and store loses a neighbour's bit.

    Hypothesis interleaves two channels' deliveries inside one 64-bit word and
    finds a delivered page whose bit is missing; no timing is involved.
    """
    with counted() as ran, pytest.raises(AssertionError, match=r"\[receivedmap\]"):
        run_state_machine_as_test(machine_with(SplitBitSetReceiver), settings=HUNT)
    print(f"\nlost bit found after {ran['examples']} examples: {dict(ran)}")


def test_broken_receivers_really_differ_from_the_package() -> None:
    """Control: both broken receivers pass when their bug cannot show.

    With postcopy-ram off the skipped write is QEMU's correct precopy rule, and
    with one delivery at a time the split bit set loses nothing; so the hunts
    above fail because of the bugs, not because the variants are broken otherwise.
    """
    for receiver, postcopy in ((SkipPostcopyWriteReceiver, False), (SplitBitSetReceiver, True)):
        machine = machine_with(receiver)()
        machine.start(page_size=1024, num_pages=70, channels=2, mode=MULTIFD,
                      postcopy_ram=postcopy, release_ram=False)
        for page in range(70):
            machine.src[page, page % 1024] = page % 3  # a third of the pages are zero
        machine.m_src[:] = machine.src.tobytes()
        machine._send("ch0", list(range(0, 70, 2)))
        machine._send("ch1", list(range(1, 70, 2)))
        machine._deliver_everything()
        machine.check()
        machine.full_round(0)
        machine.check()
        machine.teardown()
