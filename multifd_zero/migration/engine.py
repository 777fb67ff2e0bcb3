"""Migrate a RAM block over N multifd channels: :func:`migrate`.

The source side (:class:`~multifd_zero.migration.source.MigrationSource`) runs in the
calling thread plus one thread per channel; the destination side
(:class:`~multifd_zero.migration.destination.MigrationDestination`) runs in threads of
this process (``transport="inprocess"``) or in a separate process reached
over loopback TCP or a Unix socket (``"tcp"``, ``"unix"``), one connection
per channel plus the main channel. The bytes on the multifd channels are
QEMU's packets (:mod:`multifd_zero.wire`); the main channel carries QEMU 10's
precopy main stream (:mod:`multifd_zero.wire.savevm`; what the source writes
there is listed in :mod:`multifd_zero.migration.source`).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import shutil
import tempfile
import time
import uuid as uuid_module
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _kernels
from .._checks import OffsetArray, as_offsets, check_int, check_offsets
from .._threads import WorkerThread
from ..errors import MigrationAbortedError, MigrationError
from ..options import MigrationOptions
from ..pages import multifd_ram_page_count
from ..ramblock import RAMBlock
from ..stats import MigrationStats
from ..wire import MAX_PAGE_COUNT
from .destination import DestinationReport, MigrationDestination
from .process import DestinationConfig, DestinationProcess, fresh_memory
from .shm import SharedRAM
from .source import MigrationSource, ProgressCallback, SourceReport
from .tls import TLSConfig
from .transport import (
    DEFAULT_MIN_PROGRESS_BYTES,
    LOOPBACK,
    TRANSPORTS,
    Channel,
    connect,
    inprocess_pair,
)

__all__ = ["MigrationAbortedError", "MigrationError", "MigrationResult", "migrate"]

_MAX_CHANNELS = 255
_MAX_PACKET_BYTES = 64 << 20  # payload of one packet; QEMU's is 512 KiB


@dataclass
class MigrationResult:
    """What :func:`migrate` did.

    Attributes
    ----------
    ram : dict
        The ``ram`` section of QMP ``query-migrate``: ``normal``,
        ``duplicate`` (zero pages), ``normal-bytes``, ``page-size``,
        ``transferred`` (main stream plus multifd bytes), ``multifd-bytes``,
        ``pages-per-second``, ``mbps``, ``dirty-sync-count`` (rounds) and
        ``total`` (bytes of RAM).
    seconds : float
        From the first byte sent to the destination's completion (the
        destination process's start-up and any staging copy not included).
    pages_sent : int
        Pages walked over all rounds.
    rounds : int
    channels : int
    transport : str
    options : MigrationOptions
    destination : DestinationReport
        The receiving side's counters.
    destination_sha256 : str or None
        SHA-256 of the destination memory, computed where it lives (in the
        destination process for sockets), when asked for with ``checksum``.
    """

    ram: dict[str, int | float]
    seconds: float
    pages_sent: int
    rounds: int
    channels: int
    transport: str
    options: MigrationOptions
    destination: DestinationReport
    destination_sha256: str | None = None
    source_report: SourceReport = field(default_factory=SourceReport)

    @property
    def gb_per_s(self) -> float:
        """Guest RAM walked per second, in GB/s (10**9 bytes)."""
        page_size = int(self.ram["page-size"])
        return self.pages_sent * page_size / self.seconds / 1e9 if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data."""
        return {
            "ram": dict(self.ram),
            "seconds": self.seconds,
            "gb_per_s": self.gb_per_s,
            "pages_sent": self.pages_sent,
            "rounds": self.rounds,
            "channels": self.channels,
            "transport": self.transport,
            "zero_page_detection": str(self.options.zero_page_detection),
            "postcopy_ram": self.options.postcopy_ram,
            "destination": self.destination.as_dict(),
            "destination_sha256": self.destination_sha256,
        }


def _rounds(block: RAMBlock, dirty: Iterable[Any] | None) -> Iterator[OffsetArray]:
    """Round 1 is every page; each later round is the next dirty set, sorted and deduplicated."""
    yield np.arange(block.num_pages, dtype=np.uint64) * np.uint64(block.page_size)
    if dirty is None:
        return
    for item in dirty:
        offsets = as_offsets(item, "dirty offsets")
        check_offsets(offsets, block.used_length, block.page_size, "dirty offsets")
        yield np.unique(offsets)


def migrate(
    source: RAMBlock,
    destination: RAMBlock | None = None,
    *,
    channels: int = 2,
    options: MigrationOptions | None = None,
    page_count: int | None = None,
    transport: str = "inprocess",
    dirty: Iterable[Any] | None = None,
    progress: ProgressCallback | None = None,
    timeout: float = 60.0,
    checksum: bool = False,
    min_progress_bytes: int = DEFAULT_MIN_PROGRESS_BYTES,
    progress_seconds: float | None = None,
    tls: TLSConfig | None = None,
) -> MigrationResult:
    """Migrate ``source`` into ``destination`` over ``channels`` multifd channels.

    Round 1 sends every page of the block (QEMU's bulk stage). Each item of
    ``dirty`` then makes one more round of just those pages. Each round ends
    with a sync: a SYNC packet per channel and ``MULTIFD_FLUSH`` on the main
    channel, so the destination applies round *r* completely before any page
    of round *r + 1*, and ``dirty`` is advanced only once round *r* is out.

    Zero pages follow QEMU exactly: with ``multifd`` detection, a zero page
    arriving for the first time is only marked received (never written, in
    precopy), a zero page received before is zero-filled, and with
    ``postcopy_ram`` every zero page is written; with ``legacy`` detection the
    queueing thread finds zero pages and sends them as main-channel records,
    zero-filled on arrival only if the destination page is not zero already;
    with ``none`` every page is sent with its data. The engine runs precopy
    rounds only: the source is never "in postcopy", so ``release_ram`` never
    discards a page.

    Parameters
    ----------
    source : RAMBlock
        The memory to send; it may be read-only.
    destination : RAMBlock, optional
        Receives the pages: same name, size and page size as ``source``,
        writable. With ``transport="inprocess"`` it is written directly by the
        receiver threads. Over sockets the destination runs in another
        process: a block whose host is a :class:`~multifd_zero.migration.shm.SharedRAM`
        is mapped there directly; any other block is copied into shared
        memory before and back after (outside the timed part). Its
        receivedmap is updated either way. None: fresh memory (anonymous, in
        the destination process for sockets), dropped at the end; use
        ``checksum`` to learn its contents' hash.
    channels : int, default 2
        Multifd channels (1 to 255).
    options : MigrationOptions, optional
        Zero-page detection mode and capabilities, the same on both sides.
        Default: ``MigrationOptions()`` (multifd detection, precopy).
    page_count : int, optional
        Pages per batch and offset slots per packet. Default: QEMU's
        ``multifd_ram_page_count()`` for the page size (128 for 4 KiB pages).
        At most 64 MiB of pages per packet.
    transport : {"inprocess", "tcp", "unix"}, default "inprocess"
    dirty : iterable of array-like, optional
        One item per round after the first: the byte offsets of the pages to
        send again (page-aligned, in the block; sorted and deduplicated
        here). A generator may change the source memory before yielding
        each set: it is advanced only after the previous round has been sent.
    progress : callable, optional
        ``progress(round, pages_queued, pages_in_round)``, called by the
        queueing thread after each batch.
    timeout : float, default 60
        Seconds a wait (send, receive, accept, sync) may last while nothing
        moves. A channel that is idle while others work (the multifd channels
        during a legacy round of zero pages, the main channel during a
        multifd round) waits on as long as the migration made progress within
        ``timeout``. The dirty generator's own work between rounds counts as
        no progress, so it must take less than ``timeout``.
    checksum : bool, default False
        Hash the destination memory at the end, where it lives.
    min_progress_bytes : int, default 4096
        The destination's no-progress rule: at least this many bytes over
        all channels every ``progress_seconds``...
    progress_seconds : float, optional
        ...(default: ``timeout``), however often single bytes arrive; else
        :class:`~multifd_zero.errors.NoProgressError`.
    tls : TLSConfig, optional
        TLS on every channel (sockets only): the source is the client, the
        destination process the server, both from ``tls.creds_dir``; the
        server's certificate must name ``tls.hostname`` (default
        ``127.0.0.1`` over TCP; required over a Unix socket).

    Returns
    -------
    MigrationResult

    Raises
    ------
    PacketError
        The destination refused something the source sent (a subclass says
        what); nothing of that packet or record was applied.
    MigrationError, OSError, TimeoutError
        The migration could not complete.
    TypeError, ValueError
        Bad arguments.

    Examples
    --------
    >>> src = RAMBlock("pc.ram", bytes(4096) + b"\\x01" * 4096 + bytes(8192))
    >>> dst = RAMBlock("pc.ram", bytearray(4 * 4096))
    >>> result = migrate(src, dst, channels=2)
    >>> result.ram["normal"], result.ram["duplicate"], bytes(dst.host) == bytes(src.host)
    (1, 3, True)
    >>> # two handshakes, one packet and its page, a SYNC packet per channel
    >>> # at setup and at the end of the round:
    >>> result.ram["multifd-bytes"] == 2 * 64 + 1344 + 4096 + 2 * 2 * 1344
    True
    """
    options = MigrationOptions() if options is None else options
    if not isinstance(options, MigrationOptions):
        raise TypeError(f"options must be a MigrationOptions, not {type(options).__name__}")
    if not isinstance(source, RAMBlock):
        raise TypeError(f"source must be a RAMBlock, not {type(source).__name__}")
    if destination is not None and not isinstance(destination, RAMBlock):
        raise TypeError(f"destination must be a RAMBlock, not {type(destination).__name__}")
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, not {transport!r}")
    channels = check_int("channels", channels, 1, _MAX_CHANNELS)
    page_count = (
        multifd_ram_page_count(source.page_size)
        if page_count is None
        else check_int("page_count", page_count, 1, MAX_PAGE_COUNT)
    )
    if page_count * source.page_size > _MAX_PACKET_BYTES:
        raise ValueError(
            f"page_count {page_count} of {source.page_size}-byte pages makes packets of more "
            f"than {_MAX_PACKET_BYTES >> 20} MiB"
        )
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable, not {type(progress).__name__}")
    if destination is not None:
        destination.check_writable()
        if destination.page_size != source.page_size:
            raise ValueError(
                f"page sizes differ: source {source.page_size}, destination "
                f"{destination.page_size}"
            )
    stats = MigrationStats()
    uuid = uuid_module.uuid4().bytes
    if tls is not None:
        if not isinstance(tls, TLSConfig):
            raise TypeError(f"tls must be a TLSConfig, not {type(tls).__name__}")
        if transport == "inprocess":
            raise ValueError("TLS needs a socket transport ('tcp' or 'unix')")
        tls.server_name(LOOPBACK if transport == "tcp" else None)  # checked before starting
    if progress_seconds is not None and not progress_seconds > 0:
        raise ValueError(f"progress_seconds must be positive, got {progress_seconds}")
    min_progress_bytes = check_int("min_progress_bytes", min_progress_bytes, 0, 1 << 40)
    run = _Run(source, stats, options, page_count, uuid, channels, timeout, progress)
    run.deadline = (min_progress_bytes, progress_seconds)
    run.tls = tls
    rounds = _rounds(source, dirty)
    if transport == "inprocess":
        report, digest = run.inprocess(destination, rounds, checksum)
    else:
        report, digest = run.sockets(transport, destination, rounds, checksum)
    ram = stats.query_migrate(source.page_size, seconds=max(run.seconds, 1e-9))
    ram["dirty-sync-count"] = run.source_report.rounds
    ram["total"] = source.used_length
    return MigrationResult(
        ram=ram,
        seconds=run.seconds,
        pages_sent=run.source_report.pages_queued,
        rounds=run.source_report.rounds,
        channels=channels,
        transport=transport,
        options=options,
        destination=report,
        destination_sha256=digest,
        source_report=run.source_report,
    )


class _Run:
    """One call of :func:`migrate`: the two sides wired over a transport."""

    def __init__(
        self,
        source: RAMBlock,
        stats: MigrationStats,
        options: MigrationOptions,
        page_count: int,
        uuid: bytes,
        channels: int,
        timeout: float,
        progress: ProgressCallback | None,
    ) -> None:
        self.source = source
        self.stats = stats
        self.options = options
        self.page_count = page_count
        self.uuid = uuid
        self.channels = channels
        self.timeout = timeout
        self.progress = progress
        self.seconds = 0.0
        self.source_report = SourceReport()
        self.deadline: tuple[int, float | None] = (DEFAULT_MIN_PROGRESS_BYTES, None)
        self.tls: TLSConfig | None = None

    def _source(self, main: Channel, multifd: list[Channel]) -> MigrationSource:
        return MigrationSource(
            self.source,
            main,
            multifd,
            options=self.options,
            stats=self.stats,
            page_count=self.page_count,
            uuid=self.uuid,
            timeout=self.timeout,
            progress=self.progress,
        )

    # -- in-process

    def inprocess(
        self, destination: RAMBlock | None, rounds: Iterable[OffsetArray], checksum: bool
    ) -> tuple[DestinationReport, str | None]:
        memory: mmap.mmap | None = None
        if destination is None:
            memory = fresh_memory(self.source.used_length)
            destination = RAMBlock(self.source.idstr, memory, self.source.page_size, fresh=True)
        pairs = [inprocess_pair(timeout=self.timeout) for _ in range(self.channels + 1)]
        receiver = MigrationDestination(
            [destination],
            channels=self.channels,
            options=self.options,
            page_count=self.page_count,
            uuid=self.uuid,
            timeout=self.timeout,
            min_progress_bytes=self.deadline[0],
            progress_seconds=self.deadline[1],
        )
        outcome: dict[str, Any] = {}

        def receive() -> None:
            try:
                outcome["report"] = receiver.run([far for _, far in pairs])
            except BaseException as exc:
                outcome["error"] = exc

        thread = WorkerThread(target=receive, name="multifd-zero-destination", daemon=True)
        sender = self._source(pairs[0][0], [near for near, _ in pairs[1:]])
        start = time.perf_counter()
        thread.start()
        source_error: BaseException | None = None
        try:
            self.source_report = sender.run(rounds)
        except BaseException as exc:
            source_error = exc
            # Stop the destination now: it would wait its whole timeout for data
            # that will not come (Ctrl-C in `demo` hung for two timeouts).
            receiver.failure.fail(MigrationAbortedError("the source stopped"))
        thread.join(self.timeout)
        self.seconds = time.perf_counter() - start
        if thread.is_alive():  # pragma: no cover - every destination wait is bounded
            receiver.failure.fail(TimeoutError("the destination did not finish"))
            thread.join(self.timeout)
        _raise_first(outcome.get("error"), source_error)
        digest = (
            hashlib.sha256(memoryview(destination.host).cast("B")).hexdigest()
            if (checksum)
            else None
        )
        if memory is not None:
            memory.close()
        return outcome["report"], digest

    # -- sockets, destination in a child process

    def sockets(
        self,
        transport: str,
        destination: RAMBlock | None,
        rounds: Iterable[OffsetArray],
        checksum: bool,
    ) -> tuple[DestinationReport, str | None]:
        workdir = tempfile.mkdtemp(prefix="multifd-zero-")
        staging: SharedRAM | None = None
        child: DestinationProcess | None = None
        try:
            fd: int | None = None
            if destination is not None:
                if isinstance(destination.host, SharedRAM):
                    fd = destination.host.fileno()
                else:
                    staging = SharedRAM(destination.used_length)
                    _copy(destination.host, staging)
                    fd = staging.fileno()
            config = DestinationConfig(
                transport=transport,
                address=os.path.join(workdir, "migrate.sock") if transport == "unix" else None,
                channels=self.channels,
                page_size=self.source.page_size,
                page_count=self.page_count,
                idstr=destination.idstr if destination is not None else self.source.idstr,
                size=(
                    destination.used_length if destination is not None else self.source.used_length
                ),
                path=None,
                fd=fd,
                workdir=workdir,
                receivedmap=(
                    destination.receivedmap.bitmap.tobytes() if destination is not None else None
                ),
                return_receivedmap=destination is not None,
                options=self.options,
                uuid=self.uuid,
                simd=_kernels.get_simd(),
                timeout=self.timeout,
                checksum=checksum,
                fresh=destination is None or destination.fresh,
                tls_dir=None if self.tls is None else os.fspath(self.tls.creds_dir),
                tls_verify_peer=True if self.tls is None else self.tls.verify_peer,
                min_progress_bytes=self.deadline[0],
                progress_seconds=self.deadline[1],
            )
            child = DestinationProcess(config, cwd=workdir, timeout=self.timeout)
            listening = child.expect("listening")
            address = listening["address"]
            address = tuple(address) if isinstance(address, list) else address
            start = time.perf_counter()
            source_error: BaseException | None = None
            tls = None if self.tls is None else self.tls.client_context()
            hostname = (
                None
                if self.tls is None
                else self.tls.server_name(LOOPBACK if transport == "tcp" else None)
            )

            def dial() -> Channel:
                return connect(
                    transport, address, timeout=self.timeout, tls=tls, hostname=hostname
                )

            try:
                main = dial()
                multifd: list[Channel] = []
                try:
                    multifd.extend(dial() for _ in range(self.channels))
                except BaseException:
                    for channel in [main, *multifd]:
                        channel.close()
                    raise
                self.source_report = self._source(main, multifd).run(rounds)
            except BaseException as exc:
                source_error = exc
            try:
                complete = child.expect("complete")
            except BaseException as exc:
                _raise_first(exc, source_error)
                raise  # pragma: no cover - _raise_first always raises here
            self.seconds = time.perf_counter() - start
            if source_error is not None:
                raise source_error
            digest = child.expect("checksum")["sha256"] if checksum else None
            if child.close() != 0:
                raise MigrationError("the destination process failed after completing")
            child = None
            if destination is not None:
                bits = np.frombuffer(bytes.fromhex(complete["receivedmap"]), dtype=np.uint64)
                destination.receivedmap.bitmap[:] = bits
                if staging is not None:
                    _copy(staging, destination.host)
            report = DestinationReport(**complete["report"])
            return report, digest
        finally:
            if child is not None:
                child.kill()
            if staging is not None:
                staging.close()
            shutil.rmtree(workdir, ignore_errors=True)


def _copy(src: Any, dst: Any) -> None:
    """Copy a whole buffer into another of the same size (numpy copy, GIL released)."""
    out = np.frombuffer(dst, dtype=np.uint8)
    out[:] = np.frombuffer(src, dtype=np.uint8)


def _raise_first(
    destination_error: BaseException | None, source_error: BaseException | None
) -> None:
    """Raise the root cause of a failed migration.

    A broken connection or an abort on the source is what the destination's
    failure (which closes every channel) looks like from there, so the
    destination's error wins then; any other source error (a bad dirty set,
    a timeout of its own) came first and wins.
    """
    consequence = isinstance(source_error, (ConnectionError, MigrationAbortedError)) or (
        type(source_error) is OSError  # a send on a channel closed under it
    )
    if destination_error is None or (source_error is not None and not consequence):
        if source_error is not None:
            raise source_error
        return
    raise destination_error
