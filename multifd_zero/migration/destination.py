"""The migration destination: the main-stream loop and the multifd receiver channels.

As in QEMU (``multifd_recv_thread``, ``multifd_nocomp_recv``, ``ram_load``):

- every incoming connection is told apart by its first four bytes: the
  ``QEVM`` magic for the main channel, the multifd magic for a channel, whose
  64-byte handshake is then checked (migration uuid, channel id);
- each **receiver channel** is a thread that reads the 12-byte packet
  header, checks it, reads the rest of the fixed-size packet into a
  preallocated buffer, decodes and checks it
  (:func:`~multifd_zero.wire.decode_packet`), reads the payload into a
  preallocated buffer, and only then applies the packet:
  :func:`~multifd_zero.recv_zero_page_process` for the zero pages, then
  :func:`~multifd_zero.recv_normal_pages`. So a bad or truncated packet
  changes no page. On a ``SYNC`` packet it waits for the main thread;
- the **main thread** (the caller of :meth:`MigrationDestination.run`)
  reads the main stream, QEMU 10's precopy format, with
  :class:`~multifd_zero.wire.savevm.StreamReader` (``qemu_loadvm_state`` in
  ``migration/savevm.c``, ``ram_load_precopy`` in ``migration/ram.c``),
  which checks the framing (configuration, section ids, footers, the device
  state's end). The RAM START section must begin with ``MEM_SIZE``, whose
  block list must name exactly the destination's blocks with their sizes
  (``parse_ramblocks``); that is checked before any channel is read, so a
  mismatched destination is left untouched (QEMU's channels start reading
  at once). Then ``ZERO`` records are applied with
  :func:`~multifd_zero.recv_legacy_zero_pages` (``ram_handle_zero``),
  ``PAGE`` records with :func:`~multifd_zero.recv_normal_pages` (plain
  precopy), and at each ``MULTIFD_FLUSH`` (at setup, and once per round) it
  waits for every channel's ``SYNC`` before letting them go on (QEMU's
  ``multifd_recv_sync_main``), which orders the rounds. The stream ends with
  the device state (``QEMU_VM_EOF`` and the VM description), read to the
  end of the main channel.

Channels are bound to the one migration: exactly ``channels + 1``
connections are taken, each channel id once; any further connection while
the migration runs (a second claim to a channel id, an intruder that
connected first and took a real channel's place, one connection too many)
fails the migration on the destination with a
:class:`~multifd_zero.errors.HandshakeError` naming its peer, checked once
more before the destination reports completion. The channels share a
:class:`~multifd_zero.migration.transport.ProgressDeadline`: a peer that
trickles ends with :class:`~multifd_zero.errors.NoProgressError`.

Any error closes every channel of the destination and is raised by
:meth:`MigrationDestination.run`.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

from .._threads import WorkerThread
from ..errors import NoProgressError, StreamBlockError, StreamSectionError
from ..multifd_zero_page import recv_normal_pages, recv_zero_page_process
from ..options import MigrationOptions
from ..ram import recv_legacy_zero_pages
from ..ramblock import RAMBlock
from ..wire import (
    HANDSHAKE_SIZE,
    HEADER_SIZE,
    MULTIFD_MAGIC,
    HandshakeError,
    MagicError,
    PacketDecoder,
    TruncatedError,
    check_header,
    decode_init,
    packet_len,
)
from ..wire.savevm import (
    QEMU_VM_FILE_MAGIC,
    QEMU_VM_SECTION_PART,
    QEMU_VM_SECTION_START,
    DeviceState,
    MemSize,
    MultifdFlush,
    Pages,
    SectionHeader,
    StreamReader,
    ZeroPages,
)
from ._failure import POLL, Failure
from .transport import DEFAULT_MIN_PROGRESS_BYTES, Channel, ProgressDeadline

Extra = Callable[[float], "Channel | None"]
"""``extra(wait)``: a connection beyond the expected ones, if one is waiting (within ``wait``)."""

__all__ = ["DestinationReport", "MigrationDestination"]


@dataclass
class DestinationReport:
    """What the destination received and wrote.

    Attributes
    ----------
    rounds : int
        RAM ``SECTION_PART`` sections received (the engine's source sends
        one per round).
    packets, sync_packets : int
        Multifd packets received, and how many of them were SYNC packets.
    normal_pages, zero_pages : int
        Pages received in multifd packets.
    legacy_zero_pages : int
        Zero-page records received on the main channel.
    stream_pages : int
        ``PAGE`` records received on the main channel (plain precopy).
    zero_pages_written : int
        Zero pages that were written (zero-filled) rather than only marked.
    received_pages : int
        Pages marked in the receivedmap at the end.
    bytes_received : int
        Bytes read over every channel.
    """

    rounds: int = 0
    packets: int = 0
    sync_packets: int = 0
    normal_pages: int = 0
    zero_pages: int = 0
    legacy_zero_pages: int = 0
    stream_pages: int = 0
    zero_pages_written: int = 0
    received_pages: int = 0
    bytes_received: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a dict (JSON-ready)."""
        return asdict(self)


class _Receiver:
    """One multifd receiver channel and its thread."""

    def __init__(self, index: int, channel: Channel, owner: MigrationDestination) -> None:
        self.index = index
        self.channel = channel
        self.owner = owner
        self.packet = memoryview(bytearray(packet_len(owner.page_count)))
        self.payload = memoryview(bytearray(owner.page_count * owner.page_size))
        self.synced = threading.Semaphore(0)
        self.release = threading.Semaphore(0)
        self.ended = threading.Event()
        self.report = DestinationReport()
        self.thread = WorkerThread(target=self._run, name=f"multifd-recv-{index}", daemon=True)

    def _run(self) -> None:
        try:
            while self._one_packet():  # ends at a clean end of stream, or raises
                pass
        except BaseException as exc:
            self.owner.failure.fail(exc)
        finally:
            self.ended.set()

    def _one_packet(self) -> bool:
        owner = self.owner
        head = self.packet[:HEADER_SIZE]
        if not self.channel.recv_exact(
            head, what="a packet header", eof_ok=True, keep_waiting=owner.keep_waiting
        ):
            return False
        flags = check_header(head)
        self.channel.recv_exact(self.packet[HEADER_SIZE:], what="a packet")
        pkt = owner.decoder.decode_body(self.packet, flags)
        data = self.payload[: pkt.next_packet_size]
        if pkt.next_packet_size:
            self.channel.recv_exact(data, what="a packet's payload")
        report = self.report
        if pkt.normal_pages or pkt.zero_pages:
            block = owner.blocks[pkt.ramblock]
            if pkt.zero_pages:  # zero pages first, as QEMU's nocomp receiver
                report.zero_pages_written += recv_zero_page_process(
                    block, pkt.zero, options=owner.options
                )
            if pkt.normal_pages:
                recv_normal_pages(block, pkt.normal, data)
            report.normal_pages += pkt.normal_pages
            report.zero_pages += pkt.zero_pages
        report.packets += 1
        owner.progress_at = time.monotonic()
        if pkt.sync:
            report.sync_packets += 1
            self.synced.release()
            owner.failure.wait(
                self.release,
                owner.timeout,
                f"the main channel's MULTIFD_FLUSH to release {self.channel.label}",
            )
        return True


class MigrationDestination:
    """The destination side of a migration into RAM blocks.

    Parameters
    ----------
    blocks : sequence of RAMBlock
        Writable destination blocks, named and sized as on the source.
    channels : int
        Multifd channels to expect.
    options : MigrationOptions
        The destination's settings (``postcopy_ram`` changes how zero pages
        are written).
    page_count : int
        Offset slots per packet (the source's batch size).
    uuid : bytes, optional
        The migration's 16-byte uuid; handshakes with another one are
        refused. None accepts any uuid, as long as every channel has the same.
    timeout : float
        Seconds any single wait may last.
    min_progress_bytes : int, default 4096
        The no-progress rule: at least this many bytes over all channels...
    progress_seconds : float, optional
        ...every this many seconds (default: ``timeout``); else
        :class:`~multifd_zero.errors.NoProgressError`.
    """

    def __init__(
        self,
        blocks: Sequence[RAMBlock],
        *,
        channels: int,
        options: MigrationOptions,
        page_count: int,
        uuid: bytes | None,
        timeout: float,
        min_progress_bytes: int = DEFAULT_MIN_PROGRESS_BYTES,
        progress_seconds: float | None = None,
    ) -> None:
        if not blocks:
            raise ValueError("at least one RAM block is needed")
        page_sizes = {b.page_size for b in blocks}
        if len(page_sizes) != 1:
            raise ValueError("every block must have the same page size")
        for block in blocks:
            block.check_writable()
        self.blocks = {b.idstr: b for b in blocks}
        if len(self.blocks) != len(blocks):
            raise ValueError("block names must be unique")
        self.lengths = {name: b.used_length for name, b in self.blocks.items()}
        self.page_size = page_sizes.pop()
        self.channels = channels
        self.options = options
        self.page_count = page_count
        self.decoder = PacketDecoder(
            page_count=page_count, page_size=self.page_size, blocks=self.lengths
        )
        self.uuid = uuid
        self.timeout = timeout
        self.failure = Failure()
        self.report = DestinationReport()
        self.progress_at = time.monotonic()
        self.progress = ProgressDeadline(
            timeout if progress_seconds is None else progress_seconds,
            min_bytes=min_progress_bytes,
        )
        self._receivers: list[_Receiver] = []
        self._done = threading.Event()

    def keep_waiting(self) -> bool:
        """Whether an idle channel should wait on: the migration moved within ``timeout``.

        A channel may stay idle for long (a legacy round of zero pages sends
        nothing on the multifd channels, a multifd round nothing on the main
        channel); it is not an error as long as another channel makes progress.
        """
        if self.failure.event.is_set():
            return False
        return time.monotonic() - self.progress_at < self.timeout

    # -- connections

    def _classify(self, accept: Callable[[], Channel]) -> tuple[Channel, dict[int, Channel]]:
        main: Channel | None = None
        multifd: dict[int, Channel] = {}
        accepted: list[Channel] = []
        # Every connection first, then their first bytes: a source may connect all its
        # channels (each with its TLS handshake) before it writes to any.
        for k in range(self.channels + 1):  # exactly channels + 1 connections
            try:
                channel = accept()
            except TimeoutError as exc:
                raise TimeoutError(
                    f"{exc} ({k} of the {self.channels + 1} connections arrived)"
                ) from None
            self.failure.add_channel(channel)
            channel.progress = self.progress
            accepted.append(channel)
        for channel in accepted:
            peer = channel.label
            head = bytearray(HANDSHAKE_SIZE)
            view = memoryview(head)
            channel.recv_exact(view[:4], what="its magic (main or multifd channel?)")
            (magic,) = struct.unpack(">I", head[:4])
            if magic == QEMU_VM_FILE_MAGIC:
                if main is not None:
                    raise HandshakeError(f"a second main channel, from {peer}")
                main = channel
                channel.label = f"main channel ({peer})"
            elif magic == MULTIFD_MAGIC:
                channel.recv_exact(view[4:], what="its multifd handshake")
                init = decode_init(head, uuid=self.uuid, channels=self.channels)
                if self.uuid is None:
                    self.uuid = init.uuid
                if init.id in multifd:
                    raise HandshakeError(
                        f"channel id {init.id} claimed twice: by {multifd[init.id].label}, "
                        f"then by {peer}"
                    )
                multifd[init.id] = channel
                channel.label = f"multifd channel {init.id} ({peer})"
            else:
                raise MagicError(f"{peer}: a connection starting with unknown magic {magic:#010x}")
        if main is None:
            raise HandshakeError("no main channel among the connections")
        return main, multifd

    def _refuse_extra(self, channel: Channel) -> None:
        self.failure.add_channel(channel)
        channel.close()
        raise HandshakeError(
            f"a connection from {channel.label} beyond the main channel and the "
            f"{self.channels} multifd channels of this migration (a second claim to a channel, "
            "or a connection that took a channel's place): the migration is refused"
        )

    def _watch(self, extra: Extra) -> None:
        """Fail the migration on any connection beyond the expected ones, while it runs."""
        try:
            while not self._done.is_set() and not self.failure.event.is_set():  # until the end
                channel = extra(POLL)
                if channel is not None:
                    self._refuse_extra(channel)
        except BaseException as exc:
            self.failure.fail(exc)

    # -- main thread

    def _sync_channels(self) -> None:
        """QEMU's ``multifd_recv_sync_main``: every channel's SYNC, then release them."""
        for receiver in self._receivers:
            deadline = time.monotonic() + self.timeout
            while not receiver.synced.acquire(timeout=POLL):  # bounded by the deadline
                self.failure.check()
                if receiver.ended.is_set():
                    if receiver.synced.acquire(blocking=False):
                        break
                    raise TruncatedError(f"{receiver.channel.label} ended before its SYNC packet")
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{receiver.channel.label}: waited {self.timeout:g} s for its SYNC "
                        "packet (the main channel's MULTIFD_FLUSH needs one from each channel)"
                    )
        for receiver in self._receivers:
            receiver.release.release()

    def _check_blocks(self, mem_size: MemSize, at: int) -> None:
        """``parse_ramblocks``: the source's block list must be the destination's."""
        theirs = dict(mem_size.blocks)
        for idstr, length in mem_size.blocks:
            if idstr not in self.lengths:
                raise StreamBlockError(
                    f"the source has a RAM block {idstr!r} the destination lacks", at
                )
            if length != self.lengths[idstr]:
                raise StreamBlockError(
                    f"RAM block {idstr!r} is {length} bytes on the source, "
                    f"{self.lengths[idstr]} here",
                    at,
                )
        missing = sorted(set(self.lengths) - set(theirs))
        if missing:
            raise StreamBlockError(f"the source did not send RAM blocks {missing}", at)

    def _main_loop(self, reader: StreamReader) -> None:
        """Apply the main stream's events; start the channels once the blocks match."""
        events = reader.events()
        expect_mem_size = False
        at = reader.offset  # where the next event starts in the stream
        for event in events:  # the stream is finite and every read is bounded
            self.progress_at = time.monotonic()
            if expect_mem_size:
                if not isinstance(event, MemSize):
                    raise StreamSectionError(
                        "the RAM START section does not begin with MEM_SIZE", at
                    )
                expect_mem_size = False
                self._check_blocks(event, at)
                # The channels are read only once the blocks are known to match, so a
                # mismatched destination is refused before any page is written.
                for receiver in self._receivers:
                    receiver.thread.start()
            elif isinstance(event, ZeroPages):
                block = self.blocks[event.idstr]
                self.report.zero_pages_written += recv_legacy_zero_pages(block, event.offsets)
                self.report.legacy_zero_pages += int(event.offsets.size)
            elif isinstance(event, Pages):
                recv_normal_pages(self.blocks[event.idstr], event.offsets, event.data)
                self.report.stream_pages += int(event.offsets.size)
            elif isinstance(event, MultifdFlush):
                self._sync_channels()
            elif isinstance(event, SectionHeader):
                if event.kind == QEMU_VM_SECTION_START:
                    expect_mem_size = True
                elif event.kind == QEMU_VM_SECTION_PART:
                    self.report.rounds += 1
            elif isinstance(event, DeviceState):
                return  # RAM only: QEMU's device sections would go to their vmstate
            at = reader.offset
        # The reader raises unless the stream ends with the device state.
        raise StreamSectionError(  # pragma: no cover
            "the main stream ended without its device state", reader.offset
        )

    # -- the whole migration

    def run(
        self,
        connections: Callable[[], Channel] | Iterable[Channel],
        *,
        extra: Extra | None = None,
    ) -> DestinationReport:
        """Accept the channels, receive the migration, and return the report.

        Parameters
        ----------
        connections : callable or iterable of Channel
            Where the ``channels + 1`` connections come from: a function
            that waits for the next one (such as ``Listener.accept``) or the
            channels themselves (any more of them than ``channels + 1`` fail
            the migration).
        extra : callable, optional
            ``extra(wait)`` returns a further connection if one is waiting
            (such as ``Listener.poll``): watched while the migration runs and
            once more before it completes; any such connection fails it.

        Raises
        ------
        PacketError
            Bad data from the source (every channel is closed by then);
            :class:`~multifd_zero.errors.HandshakeError` for a connection
            beyond the expected ones.
        Exception
            Any other first error (transport errors, timeouts).
        """
        accept = _acceptor(connections)
        if extra is None and not callable(connections):
            extra = _leftover(accept)
        main: Channel | None = None
        watcher: threading.Thread | None = None
        try:
            main, multifd = self._classify(accept)
            if extra is not None:
                watcher = WorkerThread(
                    target=self._watch, args=(extra,), name="multifd-recv-watch", daemon=True
                )
                watcher.start()
            self._receivers = [_Receiver(i, multifd[i], self) for i in sorted(multifd)]
            self.progress.restart()
            main.waiting_for = "the main stream"
            reader = StreamReader(
                _Patient(main, self.keep_waiting), page_size=self.page_size, magic_read=True
            )
            self._main_loop(reader)
            self._join()
            self._done.set()
            if watcher is not None:
                watcher.join(self.timeout)
            if extra is not None and not self.failure.event.is_set():
                late = extra(0.0)  # connected before the end, not yet seen by the watcher
                if late is not None:
                    self._refuse_extra(late)
            self.report.bytes_received = reader.offset
        except BaseException as exc:
            self.failure.fail(exc)
            self._join()
        finally:
            self._done.set()
        if self.failure.error is not None:
            raise self.failure.error
        self._finish()
        if main is not None:
            main.close()
        return self.report

    def _join(self) -> None:
        deadline = time.monotonic() + self.timeout
        for receiver in self._receivers:
            if receiver.thread.ident is not None:
                receiver.thread.join(max(0.0, deadline - time.monotonic()))
        alive = [r.index for r in self._receivers if r.thread.is_alive()]
        if alive:
            self.failure.fail(TimeoutError(f"receiver channels {alive} did not end"))

    def _finish(self) -> None:
        report = self.report
        for receiver in self._receivers:
            part = receiver.report
            report.packets += part.packets
            report.sync_packets += part.sync_packets
            report.normal_pages += part.normal_pages
            report.zero_pages += part.zero_pages
            report.zero_pages_written += part.zero_pages_written
            report.bytes_received += receiver.channel.bytes_received
            receiver.channel.close()
        report.received_pages = sum(b.receivedmap.count() for b in self.blocks.values())


class _Patient:
    """The main channel as the stream reader sees it: a receive that times out is
    retried while the migration moves on elsewhere (the main channel is idle
    while the multifd channels work)."""

    def __init__(self, channel: Channel, keep_waiting: Callable[[], bool]) -> None:
        self._channel = channel
        self._keep_waiting = keep_waiting

    def recv_into(self, view: memoryview, /) -> int:
        while True:  # each pass reads, ends, or waits while told to
            try:
                return self._channel.recv_into(view)
            except NoProgressError:
                raise
            except TimeoutError:
                if not self._keep_waiting():
                    raise


def _acceptor(connections: Callable[[], Channel] | Iterable[Channel]) -> Callable[[], Channel]:
    if callable(connections):
        return connections
    iterator: Iterator[Channel] = iter(connections)

    def take() -> Channel:
        try:
            return next(iterator)
        except StopIteration:
            raise HandshakeError("fewer connections than channels + 1") from None

    return take


def _leftover(take: Callable[[], Channel]) -> Extra:
    """For a given list of connections: the ones left after the expected ones."""

    def extra(wait: float) -> Channel | None:
        try:
            return take()
        except HandshakeError:
            time.sleep(wait)  # nothing can come later: the watcher just idles
            return None

    return extra
