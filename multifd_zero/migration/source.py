"""The migration source: the queueing thread and the multifd sender channels.

As in QEMU (``ram_save_target_page``, ``multifd_queue_page``,
``multifd_send_thread``):

- the **queueing thread** (the caller of :meth:`MigrationSource.run`) walks
  each round's dirty pages in ascending order, in batches of ``page_count``
  pages of the block. With ``legacy`` detection it checks the pages itself
  (:func:`~multifd_zero.save_zero_pages`) and writes the zero ones to the main
  channel as ``RAM_SAVE_FLAG_ZERO`` records; only the others are queued to
  multifd, in batches refilled up to ``page_count``. With ``multifd`` or
  ``none`` every page is queued;
- a full batch goes to the next idle sender channel, round-robin from the
  one after the last used (it waits on the next one when all are busy);
- each **sender channel** is a thread that runs
  :func:`~multifd_zero.send_zero_page_detect` on its batch (the nogil kernel),
  fills a RAM packet, gathers the normal pages' data and sends both in one
  gather write;
- a sync (QEMU's ``multifd_ram_flush_and_sync``) sends a ``SYNC`` packet on
  every channel, waits until each has been sent (``multifd_send_sync_main``),
  and writes ``RAM_SAVE_FLAG_MULTIFD_FLUSH`` to the main channel. There is
  one at setup and one at the end of each round; the next round's dirty set
  is asked for only once every SYNC packet is out, so the source memory may
  change between rounds without racing a sender.

The main channel is QEMU 10's precopy stream (:mod:`multifd_zero.wire.savevm`),
as ``migration/savevm.c`` and ``migration/ram.c`` write it for RAM with multifd:

- the file header and the configuration section, with the machine type
  :data:`MACHINE_TYPE` (QEMU's destination would compare it with its own;
  the engine's destination has no machine and accepts any);
- ``QEMU_VM_SECTION_START`` of ``ram`` (section :data:`RAM_SECTION_ID`,
  instance 0, version 4): ``MEM_SIZE`` with the block list, the setup sync's
  ``MULTIFD_FLUSH``, ``EOS``, the footer (``ram_save_setup``);
- per round a ``QEMU_VM_SECTION_PART``: the legacy ``ZERO`` records (the
  block is named once in the whole stream, then ``CONTINUE``, as
  ``save_page_header`` does), the round's ``MULTIFD_FLUSH`` (after the SYNC
  packets), ``EOS``, the footer (``ram_save_iterate``);
- the last round's ``MULTIFD_FLUSH`` instead goes, after
  ``MIG_CMD_SWITCHOVER_START``, into the ``QEMU_VM_SECTION_END``, with its
  ``EOS`` and footer (``qemu_savevm_state_complete_precopy``,
  ``ram_save_complete``); the last PART then ends with ``EOS`` alone;
- no device sections (the engine migrates RAM only), ``QEMU_VM_EOF`` and a
  minimal VM description (:func:`vmdescription`).
"""

from __future__ import annotations

import collections
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _kernels
from .._checks import OffsetArray
from .._threads import WorkerThread
from ..multifd_zero_page import send_zero_page_detect
from ..options import MigrationOptions, ZeroPageDetection
from ..pages import MultiFDPages
from ..ram import save_zero_pages
from ..ramblock import RAMBlock
from ..stats import MigrationStats
from ..wire import MULTIFD_FLAG_SYNC, encode_init, encode_name, fill_packet, packet_len
from ..wire.savevm import MIG_CMD_SWITCHOVER_START, RAM_SECTION_VERSION, StreamWriter
from ._failure import POLL, Failure
from .transport import Channel

__all__ = [
    "MACHINE_TYPE",
    "RAM_SECTION_ID",
    "MigrationSource",
    "ProgressCallback",
    "SourceReport",
    "vmdescription",
]

MACHINE_TYPE = "multifd-zero"
"""The machine type of the configuration section (QEMU sends e.g. ``pc-i440fx-10.0``)."""

RAM_SECTION_ID = 1
"""The RAM section's id: QEMU numbers savevm handlers in registration order
(``register_savevm_live`` in ``migration/savevm.c``); with ``-machine none``,
QEMU 10 registers ``timer`` as 0 and ``ram`` as 1."""

ProgressCallback = Callable[[int, int, int], object]
"""``progress(round, pages_queued, pages_in_round)``, called by the queueing thread."""

_SYNC = "sync"
_STOP = "stop"
_EMPTY = "empty"
_QUEUE_DEPTH = 4


def vmdescription(page_size: int) -> bytes:
    """The JSON of the ``QEMU_VM_VMDESCRIPTION`` record: no devices, the page size.

    QEMU's ``qemu_savevm_state_complete_precopy_non_iterable`` writes this
    object with one entry per device section; the engine sends none.

    Examples
    --------
    >>> vmdescription(4096)
    b'{"page_size": 4096, "devices": []}'
    """
    return json.dumps({"page_size": page_size, "devices": []}).encode("ascii")


@dataclass
class SourceReport:
    """What the source did.

    Attributes
    ----------
    rounds : int
        Rounds sent (each ended by a sync): QEMU's ``dirty-sync-count``.
    pages_queued : int
        Pages walked over all rounds (normal plus zero).
    batches : int
        Batches handed to the sender channels.
    """

    rounds: int = 0
    pages_queued: int = 0
    batches: int = 0


class _WorkQueue:
    """The hand-off between the queueing thread and one sender channel: a bounded FIFO.

    Like ``queue.Queue(maxsize)`` but a side is woken only when it waits: a
    wake-up is a futex call made while holding the GIL, and there is one per
    batch otherwise.
    """

    def __init__(self, depth: int) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._items: collections.deque[Any] = collections.deque()
        self._depth = depth
        self._getter_waits = False
        self._putter_waits = False

    def put(self, item: Any, timeout: float | None = None) -> bool:
        """Append ``item``; wait up to ``timeout`` for room (None: do not wait). False if full."""
        with self._cond:
            if len(self._items) >= self._depth:
                if timeout is None:
                    return False
                self._putter_waits = True
                self._cond.wait(timeout)
                self._putter_waits = False
                if len(self._items) >= self._depth:
                    return False
            self._items.append(item)
            if self._getter_waits:
                self._cond.notify()
            return True

    def get(self, timeout: float) -> Any:
        """Take the oldest item, waiting up to ``timeout``; ``_EMPTY`` if none came."""
        with self._cond:
            if not self._items:
                self._getter_waits = True
                self._cond.wait(timeout)
                self._getter_waits = False
                if not self._items:
                    return _EMPTY
            item = self._items.popleft()
            # A waiting producer is woken once the queue is half empty, not per item.
            if self._putter_waits and len(self._items) <= self._depth // 2:
                self._cond.notify()
            return item


class _Counter:
    """QEMU's global ``packet_num``: fetch-and-increment over all channels."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = itertools.count()

    def take(self) -> int:
        with self._lock:
            return next(self._next)


class _Sender:
    """One multifd sender channel and its thread."""

    def __init__(
        self,
        index: int,
        channel: Channel,
        block: RAMBlock,
        *,
        options: MigrationOptions,
        stats: MigrationStats,
        page_count: int,
        uuid: bytes,
        counter: _Counter,
        failure: Failure,
        timeout: float,
        owner: MigrationSource,
    ) -> None:
        self.owner = owner
        self.index = index
        self.channel = channel
        self.block = block
        self.options = options
        self.stats = stats
        self.page_count = page_count
        self.uuid = uuid
        self.counter = counter
        self.failure = failure
        self.timeout = timeout
        self.work = _WorkQueue(_QUEUE_DEPTH)
        self.synced = threading.Semaphore(0)
        self.packet = bytearray(packet_len(page_count))
        self.payload = memoryview(bytearray(page_count * block.page_size))
        self.name = encode_name(block.idstr)
        self.thread = WorkerThread(target=self._run, name=f"multifd-send-{index}", daemon=True)

    def _next_item(self) -> Any:
        # A channel may get no work for long (a legacy round of zero pages); it
        # waits as long as the queueing thread moved within the last timeout.
        while True:  # bounded: ends on work, on failure, or timeout after the last progress
            item = self.work.get(POLL)
            if item is not _EMPTY:
                return item
            self.failure.check()
            if time.monotonic() - self.owner.progress_at > self.timeout:
                raise TimeoutError(
                    f"sender channel {self.index}: no progress for {self.timeout} s"
                )

    def _run(self) -> None:
        try:
            self.stats.add_bytes(multifd=self.channel.send([encode_init(self.uuid, self.index)]))
            while True:  # ends on _STOP, on failure, or when a wait times out
                item = self._next_item()
                if item is _STOP:
                    break
                if item is _SYNC:
                    self._send_sync()
                    self.synced.release()
                else:
                    self._send_batch(item)
            self.channel.end()
            self.channel.close()
        except BaseException as exc:
            self.failure.fail(exc)

    def _send_sync(self) -> None:
        # QEMU 9.2+: a SYNC packet carries no RAM part (pages_alloc 0, no name).
        size = fill_packet(
            self.packet,
            self.page_count,
            offsets=np.zeros(0, dtype=np.uint64),
            normal_pages=0,
            ramblock=b"",
            packet_num=self.counter.take(),
            next_packet_size=0,
            flags=MULTIFD_FLAG_SYNC,
            pages_alloc=0,
        )
        self.stats.add_bytes(multifd=self.channel.send([memoryview(self.packet)[:size]]))

    def _send_batch(self, offsets: OffsetArray) -> None:
        pages = MultiFDPages(self.block, offsets, page_count=self.page_count)
        normal = send_zero_page_detect(pages, options=self.options, stats=self.stats)
        page_size = self.block.page_size
        nbytes = normal * page_size
        order = pages.offset
        size = fill_packet(
            self.packet,
            self.page_count,
            offsets=order,
            normal_pages=normal,
            ramblock=self.name,
            packet_num=self.counter.take(),
            next_packet_size=nbytes,
        )
        data = self.payload[:nbytes]
        if normal:
            _kernels.gather_pages(self.block.host, order[:normal], data, page_size)
        sent = self.channel.send([memoryview(self.packet)[:size], data])
        self.stats.add_bytes(multifd=sent)


class MigrationSource:
    """The source side of a migration of one RAM block over a main channel and N channels.

    Parameters
    ----------
    block : RAMBlock
        The source memory (read-only is fine).
    main : Channel
        The main migration channel.
    channels : sequence of Channel
        One per multifd channel; channel ``i`` announces id ``i``.
    options : MigrationOptions
    stats : MigrationStats
        Counters to add to (pages and bytes).
    page_count : int
        Pages per batch and offset slots per packet.
    uuid : bytes
        16 bytes naming the migration, sent in every channel handshake.
    timeout : float
        Seconds any single wait may last.
    progress : callable, optional
        See :data:`ProgressCallback`.
    """

    def __init__(
        self,
        block: RAMBlock,
        main: Channel,
        channels: Sequence[Channel],
        *,
        options: MigrationOptions,
        stats: MigrationStats,
        page_count: int,
        uuid: bytes,
        timeout: float,
        progress: ProgressCallback | None = None,
    ) -> None:
        if not channels:
            raise ValueError("at least one multifd channel is needed")
        self.block = block
        self.main = main
        self.options = options
        self.stats = stats
        self.page_count = page_count
        self.timeout = timeout
        self.progress = progress
        self.report = SourceReport()
        self.progress_at = time.monotonic()
        self.failure = Failure([main, *channels])
        counter = _Counter()
        self.senders = [
            _Sender(
                i,
                channel,
                block,
                options=options,
                stats=stats,
                page_count=page_count,
                uuid=uuid,
                counter=counter,
                failure=self.failure,
                timeout=timeout,
                owner=self,
            )
            for i, channel in enumerate(channels)
        ]
        self._next_channel = 0
        self._legacy = options.zero_page_detection is ZeroPageDetection.LEGACY
        self._pending = np.empty(2 * page_count, dtype=np.uint64)
        self._pending_num = 0
        # One writer for the whole stream: it names the block in the first ZERO
        # record only, across sections, as QEMU's save_page_header does.
        self._writer = StreamWriter(block.page_size)

    # -- main channel

    def _main_send(self, *parts: bytes) -> None:
        self.stats.add_bytes(qemu_file=self.main.send(parts))
        self.progress_at = time.monotonic()

    # -- batches

    def _dispatch(self, batch: OffsetArray) -> None:
        """Hand a batch to the next idle channel, round-robin (QEMU's ``multifd_send``)."""
        count = len(self.senders)
        for step in range(count):
            index = (self._next_channel + step) % count
            if not self.senders[index].work.put(batch):
                continue
            self._next_channel = (index + 1) % count
            self.report.batches += 1
            self.progress_at = time.monotonic()
            return
        index = self._next_channel
        self._put(self.senders[index], batch)
        self._next_channel = (index + 1) % count
        self.report.batches += 1
        self.progress_at = time.monotonic()

    def _put(self, sender: _Sender, item: Any) -> None:
        deadline = time.monotonic() + self.timeout
        while True:  # bounded by the deadline
            self.failure.check()
            if sender.work.put(item, POLL):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"sender channel {sender.index} took no work for {self.timeout} s"
                )

    def _queue_normal(self, normal: OffsetArray) -> None:
        """Legacy mode: add non-zero pages to the partial batch; send it when full."""
        pc = self.page_count
        start = 0
        while start < normal.size:  # each pass moves at least one offset
            take = min(int(normal.size) - start, pc - self._pending_num)
            self._pending[self._pending_num : self._pending_num + take] = normal[
                start : start + take
            ]
            self._pending_num += take
            start += take
            if self._pending_num == pc:
                self._dispatch(self._pending[:pc].copy())
                self._pending_num = 0

    def _flush_pending(self) -> None:
        if self._pending_num:
            self._dispatch(self._pending[: self._pending_num].copy())
            self._pending_num = 0

    def _send_round(self, round_no: int, offsets: OffsetArray) -> None:
        """A PART section's records and the round's SYNC packets; the caller closes it."""
        w = self._writer
        self._main_send(w.section_part(RAM_SECTION_ID))
        total = int(offsets.size)
        pc = self.page_count
        for start in range(0, total, pc):  # one pass per batch, not per page
            self.failure.check()
            batch = offsets[start : start + pc]
            if self._legacy:
                normal, zero = save_zero_pages(
                    self.block, batch, options=self.options, stats=self.stats
                )
                if zero.size:
                    self._main_send(w.zero_pages(self.block.idstr, zero))
                self._queue_normal(normal)
            else:
                self._dispatch(batch)
            if self.progress is not None:
                self.progress(round_no, min(start + pc, total), total)
        self._flush_pending()
        self._sync()
        self.report.rounds += 1
        self.report.pages_queued += total

    def _sync(self) -> None:
        """A SYNC packet on every channel; wait until each has gone out.

        The caller writes the ``MULTIFD_FLUSH`` that goes with it.
        """
        for sender in self.senders:
            self._put(sender, _SYNC)
        for sender in self.senders:
            self.failure.wait(sender.synced, self.timeout, f"channel {sender.index} to sync")

    def _setup(self) -> None:
        """The file header, the configuration, and the RAM START section (``ram_save_setup``)."""
        w = self._writer
        self._main_send(
            w.header(),
            w.configuration(MACHINE_TYPE),
            w.section_start(RAM_SECTION_ID, "ram", 0, RAM_SECTION_VERSION),
            w.mem_size([(self.block.idstr, self.block.used_length)]),
        )
        self._sync()
        self._main_send(w.multifd_flush(), w.eos(), w.footer(RAM_SECTION_ID))

    def _complete(self, synced: bool) -> None:
        """``SWITCHOVER_START``, the END section with the last sync, EOF and the VM description.

        ``synced``: the last round's SYNC packets are out (no rounds: this sends them).
        """
        w = self._writer
        if not synced:  # ram_save_complete always syncs
            self._sync()
        self._main_send(
            w.command(MIG_CMD_SWITCHOVER_START),
            w.section_part(RAM_SECTION_ID, end=True),
            w.multifd_flush(),
            w.eos(),
            w.footer(RAM_SECTION_ID),
            w.eof(),
            w.vmdescription(vmdescription(self.block.page_size)),
        )

    # -- the whole migration

    def run(self, rounds: Iterable[OffsetArray]) -> SourceReport:
        """Send every round of ``rounds``, then end the stream and close the channels.

        Parameters
        ----------
        rounds : iterable of numpy.ndarray
            Sorted, unique, checked ``uint64`` offsets, one array per round.
            The iterable is advanced only once the previous round's SYNC
            packet is out on every channel.

        Returns
        -------
        SourceReport

        Raises
        ------
        Exception
            The first error of any thread of the source; every channel is
            closed by then.
        """
        try:
            for sender in self.senders:
                sender.thread.start()
            self._setup()
            w = self._writer
            pending = iter(rounds)
            offsets = next(pending, None)
            round_no = 0
            while offsets is not None:  # one pass per round; the caller's iterable ends
                round_no += 1
                self._send_round(round_no, offsets)
                # Asked for only now: every SYNC packet of the round is out.
                offsets = next(pending, None)
                if offsets is None:  # the last round's flush goes into the END section
                    self._main_send(w.eos(), w.footer(RAM_SECTION_ID))
                else:
                    self._main_send(w.multifd_flush(), w.eos(), w.footer(RAM_SECTION_ID))
            self._complete(synced=round_no > 0)
            for sender in self.senders:
                self._put(sender, _STOP)
            self._join()
            self.main.end()
            self.main.close()
        except BaseException as exc:
            self.failure.fail(exc)
            self._join()
        if self.failure.error is not None:
            raise self.failure.error
        return self.report

    def _join(self) -> None:
        deadline = time.monotonic() + self.timeout
        for sender in self.senders:
            if sender.thread.ident is not None:
                sender.thread.join(max(0.0, deadline - time.monotonic()))
        alive = [s.index for s in self.senders if s.thread.is_alive()]
        if alive:  # pragma: no cover - every sender wait is bounded
            self.failure.fail(TimeoutError(f"sender channels {alive} did not stop"))
