"""Restore: play a QEMU 10 source towards a QEMU started with ``-incoming defer``."""

from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import os
import queue
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import (
    MigrationOptions,
    MigrationStats,
    MultiFDPages,
    RAMBlock,
    ZeroPageDetection,
    multifd_ram_page_count,
    partition_zero_pages,
    save_zero_pages,
    scan_zero_pages,
    send_zero_page_detect,
)
from .._threads import WorkerThread
from ..errors import MigrationAbortedError
from ..migration._failure import POLL, Failure
from ..migration.tls import TLSConfig, handshake
from ..migration.transport import SocketChannel, peer_name
from ..wire import (
    MULTIFD_FLAG_SYNC,
    encode_init,
    encode_name,
    fill_packet,
    packet_len,
)
from ..wire.savevm import (
    MIG_CMD_SWITCHOVER_START,
    StreamWriter,
)
from .connections import (
    Counts,
    Progress,
    channel_bytes,
    check_channels,
    connect_uri,
    parse_uri,
)
from .manifest import PAGE_SIZE, BlockInfo, Manifest, RestoreResult, load_manifest


class _Image:
    """One block's image, mapped read-only, with the pages that may hold data."""

    def __init__(self, root: Path, info: BlockInfo) -> None:
        self.info = info
        self.fd = os.open(root / info.file, os.O_RDONLY)
        try:
            self.map = mmap.mmap(self.fd, info.length, access=mmap.ACCESS_READ)
            self.maybe_data = _data_pages(self.fd, info.length)
        except BaseException:
            os.close(self.fd)
            raise
        self.block = RAMBlock(info.idstr, self.map, PAGE_SIZE)
        self.name_field = encode_name(info.idstr)

    def close(self) -> None:
        with contextlib.suppress(BufferError):
            self.map.close()
        os.close(self.fd)


def _data_pages(fd: int, length: int) -> npt.NDArray[np.bool_]:
    """Pages that ``SEEK_DATA`` says may hold data; all of them if it is not supported."""
    pages = length // PAGE_SIZE
    maybe = np.zeros(pages, dtype=bool)
    pos = 0
    try:
        while pos < length:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole is left
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), length)
            maybe[start // PAGE_SIZE : -(-end // PAGE_SIZE)] = True
            pos = end
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
        maybe[:] = True
    return maybe


@dataclass
class _Job:
    image: _Image
    offsets: npt.NDArray[np.uint64]
    known_zero: bool


_SYNC = object()


_END = object()


class _Sender:
    """One multifd channel of the restore: packets from a queue, on its own thread."""

    def __init__(
        self,
        conn: SocketChannel,
        mode: ZeroPageDetection,
        stats: MigrationStats,
        failure: Failure,
        packet_num: Iterator[int],
        num_lock: threading.Lock,
        synced: threading.Semaphore,
        page_count: int,
        progress: Callable[[int], None],
    ) -> None:
        self.conn = conn
        self.mode = mode
        self.options = MigrationOptions(zero_page_detection=mode)
        self.stats = stats
        self.failure = failure
        self.packet_num = packet_num
        self.num_lock = num_lock
        self.synced = synced
        self.page_count = page_count
        self.progress = progress
        self.jobs: queue.Queue[object] = queue.Queue(maxsize=64)
        self.header = bytearray(packet_len(page_count))
        self.zeros = bytes(page_count * PAGE_SIZE)
        self.zero_order = _all_zero_order(page_count)
        self.counts = Counts()
        self.thread = WorkerThread(target=self._run, daemon=True, name="snapshot-send")
        self.thread.start()

    def put(self, job: object) -> None:
        while True:
            try:
                self.jobs.put(job, timeout=POLL)
                return
            except queue.Full:
                if self.failure.event.is_set():
                    raise MigrationAbortedError("the snapshot failed elsewhere") from None

    def _num(self) -> int:
        with self.num_lock:
            return next(self.packet_num)

    def _send(self, offsets: Any, normal: int, name: bytes, payload: Any, flags: int) -> None:
        size = normal * PAGE_SIZE
        # QEMU leaves the RAM fields of a SYNC packet zero, pages_alloc included
        # (multifd_send_fill_packet, migration/multifd.c).
        fill_packet(
            self.header,
            self.page_count,
            offsets=offsets,
            normal_pages=normal,
            ramblock=name,
            packet_num=self._num(),
            next_packet_size=size,
            flags=flags,
            pages_alloc=0 if flags & MULTIFD_FLAG_SYNC else self.page_count,
        )
        self.conn.send([self.header, payload])

    def _run(self) -> None:
        try:
            while True:
                try:
                    job = self.jobs.get(timeout=POLL)
                except queue.Empty:
                    if self.failure.event.is_set():
                        return
                    continue
                if job is _END:
                    return
                if job is _SYNC:
                    self._send(_NO_OFFSETS, 0, bytes(256), b"", MULTIFD_FLAG_SYNC)
                    self.synced.release()
                    continue
                assert isinstance(job, _Job)
                self._batch(job)
        except BaseException as exc:
            self.failure.fail(exc)

    def _batch(self, job: _Job) -> None:
        image, offsets = job.image, job.offsets
        n = int(offsets.size)
        if job.known_zero and self.mode is ZeroPageDetection.MULTIFD:
            # The order partition_zero_pages leaves an all-zero batch in, without reading it.
            zero = offsets[0] + self.zero_order[n] * np.uint64(PAGE_SIZE)
            self.stats.add(zero_pages=n)
            self._send(zero, 0, image.name_field, b"", 0)
            self.counts.add(image.info.idstr, 0, n)
        elif job.known_zero:
            self.stats.add(normal_pages=n)
            self._send(offsets, n, image.name_field, memoryview(self.zeros)[: n * PAGE_SIZE], 0)
            self.counts.add(image.info.idstr, n, 0)
        else:
            pages = MultiFDPages(image.block, offsets, page_count=self.page_count)
            normal = send_zero_page_detect(pages, options=self.options, stats=self.stats)
            self._send(pages.offset, normal, image.name_field, pages.normal_data(), 0)
            self.counts.add(image.info.idstr, normal, n - normal)
        self.progress(n)


_NO_OFFSETS = np.zeros(0, dtype=np.uint64)


_ZERO_ORDERS: dict[int, dict[int, npt.NDArray[np.uint64]]] = {}


def _all_zero_order(page_count: int) -> dict[int, npt.NDArray[np.uint64]]:
    """For each batch size, the page order detection leaves an all-zero batch in."""
    cached = _ZERO_ORDERS.get(page_count)
    if cached is None:
        zero = bytes(page_count * PAGE_SIZE)
        cached = {}
        for n in range(1, page_count + 1):
            offs = np.arange(n, dtype=np.uint64) * np.uint64(PAGE_SIZE)
            partition_zero_pages(zero, offs, PAGE_SIZE)
            cached[n] = offs // np.uint64(PAGE_SIZE)
        _ZERO_ORDERS[page_count] = cached
    return cached


class _MainOut:
    """The restore's main channel: writes gathered into about 1 MiB sends."""

    def __init__(self, conn: SocketChannel) -> None:
        self.conn = conn
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        if data:
            self.parts.append(data)
            self.size += len(data)
            if self.size >= 1 << 20:
                self.flush()

    def flush(self) -> None:
        if self.parts:
            self.conn.send(self.parts)
            self.parts = []
            self.size = 0


def _batches(image: _Image, pages: npt.NDArray[np.int64], size: int) -> Iterator[_Job]:
    """Jobs of up to ``size`` of ``pages`` (page numbers, ascending) of one image."""
    for lo in range(0, int(pages.size), size):
        chunk = pages[lo : lo + size]
        offsets = chunk.astype(np.uint64) * np.uint64(PAGE_SIZE)
        known_zero = not bool(image.maybe_data[chunk].any())
        yield _Job(image, offsets, known_zero)


def restore(
    directory: str | os.PathLike[str],
    connect: str,
    channels: int = 2,
    *,
    zero_page_detection: str = "multifd",
    uuid: bytes = bytes(16),
    timeout: float = 60.0,
    progress: Progress | None = None,
    tls: TLSConfig | None = None,
) -> RestoreResult:
    """Send a snapshot to a QEMU 10 destination (``-incoming defer`` + ``migrate-incoming``).

    Parameters
    ----------
    directory : str or path
        A snapshot written by :class:`SnapshotSaver`.
    connect : str
        The destination's ``migrate-incoming`` URI (``tcp:HOST:PORT`` or ``unix:PATH``).
    channels : int, default 2
        The destination's ``multifd-channels``; 0 when its multifd capability is off.
    zero_page_detection : {"multifd", "legacy", "none"}
        How the pages are announced, as a QEMU source with that parameter does.
    uuid : bytes, default ``bytes(16)``
        The multifd handshakes' uuid: the destination's ``-uuid`` (zero without one).
    timeout : float, default 60.0
        Seconds any single send or connection may block.
    progress : callable, optional
        ``progress(done_bytes, total_bytes)``.
    tls : TLSConfig, optional
        TLS on every channel, as a QEMU source with ``tls-creds``
        (``endpoint=client``): the destination's certificate must be signed by
        ``ca-cert.pem`` and name ``tls.hostname``, else the URI's host (QEMU
        checks the multifd channels against the same name);
        ``client-cert.pem``/``client-key.pem`` are presented if present. Each
        channel ends its session with ``close_notify``, which a QEMU 10
        destination requires on its multifd channels.

    Returns
    -------
    RestoreResult

    Raises
    ------
    SnapshotError
        The snapshot is incomplete or inconsistent (nothing is sent).
    OSError
        The destination refused or dropped a connection.
    """
    check_channels(channels)
    try:
        mode = ZeroPageDetection(zero_page_detection)
    except ValueError:
        raise ValueError(
            "zero_page_detection must be 'multifd', 'legacy' or 'none', "
            f"not {zero_page_detection!r}"
        ) from None
    if not isinstance(uuid, bytes) or len(uuid) != 16:
        raise ValueError("uuid must be 16 bytes")
    context: ssl.SSLContext | None = None
    hostname: str | None = None
    if tls is not None:
        if not isinstance(tls, TLSConfig):
            raise TypeError(f"tls must be a TLSConfig, not {type(tls).__name__}")
        kind, address = parse_uri(connect)
        hostname = tls.server_name(address[0] if kind == "tcp" else None)
        context = tls.client_context()

    def dial() -> SocketChannel:
        sock = connect_uri(connect, timeout)
        if context is not None:
            sock = handshake(
                sock,
                context,
                server_side=False,
                timeout=timeout,
                hostname=hostname,
                peer=peer_name(sock),
            )
        return SocketChannel(sock, timeout)

    root = Path(directory)
    manifest = load_manifest(root)
    device_state = (root / manifest.device_state_file).read_bytes()
    images: list[_Image] = []
    conns: list[SocketChannel] = []
    senders: list[_Sender] = []
    failure = Failure()
    start = time.monotonic()
    try:
        for info in manifest.blocks:
            images.append(_Image(root, info))
        main = dial()
        conns.append(main)
        for i in range(channels):
            conn = dial()
            conns.append(conn)
            conn.send([encode_init(uuid, i)])
        stats = MigrationStats()
        synced = threading.Semaphore(0)
        total = manifest.ram_bytes
        done = [0]
        lock = threading.Lock()

        def advance(pages: int) -> None:
            with lock:
                done[0] += pages
                if progress is not None:
                    progress(min(done[0] * PAGE_SIZE, total), total)

        page_count = multifd_ram_page_count(PAGE_SIZE)
        numbers = itertools.count()
        num_lock = threading.Lock()
        for conn in conns[1:]:
            senders.append(
                _Sender(conn, mode, stats, failure, numbers, num_lock, synced, page_count, advance)
            )
        main_counts = Counts()
        hole_pages = _send_stream(
            manifest,
            images,
            device_state,
            _MainOut(main),
            senders,
            synced,
            failure,
            mode,
            stats,
            main_counts,
            advance,
            timeout,
        )
        for sender in senders:
            sender.put(_END)
        for sender in senders:
            sender.thread.join(timeout)
        if failure.error is not None:
            raise failure.error
        for conn in conns:
            conn.end()  # close_notify over TLS, then the end of the stream
    except MigrationAbortedError:
        assert failure.error is not None
        raise failure.error from None
    finally:
        failure.event.set()
        for sender in senders:
            sender.thread.join(timeout)
        for conn in conns:
            conn.close()
        for image in images:
            image.close()
    seconds = max(time.monotonic() - start, 1e-9)
    per_block = [main_counts, *(s.counts for s in senders)]
    blocks = tuple(
        BlockInfo(
            b.idstr,
            b.length,
            b.file,
            b.data_pages,
            sum(c.normal.get(b.idstr, 0) for c in per_block),
            sum(c.duplicate.get(b.idstr, 0) for c in per_block),
        )
        for b in manifest.blocks
    )
    return RestoreResult(
        directory=str(root),
        normal=stats.normal_pages,
        duplicate=stats.zero_pages,
        normal_bytes=stats.normal_pages * PAGE_SIZE,
        transferred=sum(channel_bytes(c) for c in conns),
        channels=channels,
        zero_page_detection=str(mode),
        seconds=seconds,
        gb_per_s=manifest.ram_bytes / seconds / 1e9,
        hole_pages=hole_pages,
        blocks=blocks,
    )


def _send_stream(
    manifest: Manifest,
    images: Sequence[_Image],
    device_state: bytes,
    out: _MainOut,
    senders: Sequence[_Sender],
    synced: threading.Semaphore,
    failure: Failure,
    mode: ZeroPageDetection,
    stats: MigrationStats,
    counts: Counts,
    advance: Callable[[int], None],
    timeout: float,
) -> int:
    """Write the main stream and feed the channels; return the pages known zero from holes."""
    writer = StreamWriter(PAGE_SIZE)
    sid = manifest.ram_section_id

    def sync() -> None:
        # multifd_send_sync_main: a SYNC packet on every channel, then the flush record.
        if not senders:
            return
        for sender in senders:
            sender.put(_SYNC)
        for _ in senders:
            failure.wait(synced, timeout, "SYNC packet sent")
        out.write(writer.multifd_flush())

    out.write(writer.header() + manifest.configuration)
    out.write(writer.section_start(sid, "ram", manifest.ram_instance_id, manifest.ram_version_id))
    out.write(writer.mem_size([(b.idstr, b.length) for b in manifest.blocks]))
    sync()
    out.write(writer.eos() + writer.footer(sid))
    out.flush()
    out.write(writer.section_part(sid))
    holes = 0
    rr = 0
    page_count = multifd_ram_page_count(PAGE_SIZE)
    options = MigrationOptions(zero_page_detection=mode)
    for image in images:
        holes += int(image.info.length // PAGE_SIZE - image.maybe_data.sum())
        all_pages = np.arange(image.info.length // PAGE_SIZE, dtype=np.int64)
        if not senders:
            _main_pages(image, all_pages, writer, out, mode, stats, counts, advance)
            continue
        if mode is ZeroPageDetection.LEGACY:
            normal_pages = _legacy_zero_records(image, writer, out, options, stats, counts)
            advance(int(all_pages.size - normal_pages.size))
            jobs: Iterator[_Job] = (
                _Job(image, j.offsets, False) for j in _batches(image, normal_pages, page_count)
            )
        else:
            jobs = _batches(image, all_pages, page_count)
        for job in jobs:
            senders[rr % len(senders)].put(job)
            rr += 1
    sync()
    out.write(writer.eos() + writer.footer(sid))
    if "SWITCHOVER_START" in manifest.commands:
        out.write(writer.command(MIG_CMD_SWITCHOVER_START))
    out.write(writer.section_part(sid, end=True))
    sync()
    out.write(writer.eos() + writer.footer(sid))
    out.write(device_state)
    out.flush()
    return holes


def _legacy_zero_records(
    image: _Image,
    writer: StreamWriter,
    out: _MainOut,
    options: MigrationOptions,
    stats: MigrationStats,
    counts: Counts,
) -> npt.NDArray[np.int64]:
    """``save_zero_page`` over a block: ZERO records out; return the other pages."""
    pages = image.info.length // PAGE_SIZE
    is_zero = ~image.maybe_data
    data_pages = np.flatnonzero(image.maybe_data)
    step = 1 << 16
    for lo in range(0, int(data_pages.size), step):
        chunk = data_pages[lo : lo + step]
        offsets = chunk.astype(np.uint64) * np.uint64(PAGE_SIZE)
        _, zero = save_zero_pages(image.block, offsets, options=options, stats=stats)
        is_zero[(zero // np.uint64(PAGE_SIZE)).astype(np.int64)] = True
    hole_count = int(pages - data_pages.size)
    stats.add(zero_pages=hole_count)
    zero_pages = np.flatnonzero(is_zero)
    counts.add(image.info.idstr, 0, int(zero_pages.size))
    for lo in range(0, int(zero_pages.size), step):
        zero_offsets = zero_pages[lo : lo + step].astype(np.uint64) * np.uint64(PAGE_SIZE)
        out.write(writer.zero_pages(image.info.idstr, zero_offsets))
    return np.flatnonzero(~is_zero).astype(np.int64)


def _main_pages(
    image: _Image,
    pages: npt.NDArray[np.int64],
    writer: StreamWriter,
    out: _MainOut,
    mode: ZeroPageDetection,
    stats: MigrationStats,
    counts: Counts,
    advance: Callable[[int], None],
) -> None:
    """Without multifd: ``PAGE`` and ``ZERO`` records in page order (``ram_save_target_page``)."""
    idstr = image.info.idstr
    step = 1024
    for lo in range(0, int(pages.size), step):
        chunk = pages[lo : lo + step]
        offsets = chunk.astype(np.uint64) * np.uint64(PAGE_SIZE)
        if mode is ZeroPageDetection.NONE:
            zero = np.zeros(chunk.size, dtype=bool)
        else:
            zero = ~image.maybe_data[chunk]
            check = np.flatnonzero(~zero)
            if check.size:
                zero[check] = scan_zero_pages(image.map, offsets[check], PAGE_SIZE)
        # Runs of equal kind, in page order.
        edges = np.flatnonzero(np.diff(zero.astype(np.int8))) + 1
        bounds = [0, *edges.tolist(), int(chunk.size)]
        for a, b in itertools.pairwise(bounds):
            offs = offsets[a:b]
            if zero[a]:
                out.write(writer.zero_pages(idstr, offs))
                stats.add(zero_pages=b - a)
                counts.add(idstr, 0, b - a)
            else:
                first = int(chunk[a]) * PAGE_SIZE
                last = int(chunk[b - 1]) * PAGE_SIZE + PAGE_SIZE
                data = image.map[first:last]
                out.write(writer.pages(idstr, offs, data))
                stats.add(normal_pages=b - a)
                counts.add(idstr, b - a, 0)
        advance(int(chunk.size))
