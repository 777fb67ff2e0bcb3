"""Save: play a QEMU 10 destination and write what arrives as a snapshot."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import (
    MigrationOptions,
    RAMBlock,
    multifd_ram_page_count,
    recv_legacy_zero_pages,
    recv_normal_pages,
    recv_zero_page_process,
)
from .._threads import WorkerThread
from ..errors import MigrationAbortedError, SnapshotError, StreamError, StreamSizeError
from ..migration._failure import POLL, Failure
from ..migration.process import fresh_memory
from ..migration.tls import TLSConfig, handshake
from ..migration.transport import (
    DEFAULT_MIN_PROGRESS_BYTES,
    ProgressDeadline,
    SocketChannel,
    peer_name,
)
from ..wire import (
    HandshakeError,
    decode_init,
    decode_packet,
    packet_len,
)
from ..wire.savevm import (
    Command,
    Configuration,
    DeviceState,
    MemSize,
    MultifdFlush,
    Pages,
    SectionHeader,
    StreamReader,
    ZeroPages,
)
from .connections import (
    Counts,
    Progress,
    channel_bytes,
    check_channels,
    listen_uri,
)
from .manifest import (
    DEVICE_STATE_FILE,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    PAGE_SIZE,
    BlockInfo,
    Manifest,
    SaveResult,
    block_file_name,
    fsync_dir,
    manifest_dict,
    write_file,
    write_image,
)

_OPTIONS = MigrationOptions()


class _Destination:
    """One incoming migration: the main channel on the caller's thread, multifd on threads."""

    def __init__(
        self,
        listener: socket.socket,
        channels: int,
        timeout: float,
        progress: Progress | None,
        deadline: ProgressDeadline,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.listener = listener
        self.deadline = deadline
        self.tls = tls
        self.have_main = False
        self.multifd_seen = 0
        self.channels = channels
        self.timeout = timeout
        self.progress = progress
        self.failure = Failure()
        self.conns: list[SocketChannel] = []
        self.conns_lock = threading.Lock()
        self.main_queue: queue.Queue[SocketChannel] = queue.Queue()
        self.blocks: dict[str, RAMBlock] = {}
        self.order: list[tuple[str, int]] = []
        self.written: dict[str, npt.NDArray[np.bool_]] = {}
        self.blocks_ready = threading.Event()
        self.synced = threading.Semaphore(0)
        self.release = [threading.Semaphore(0) for _ in range(channels)]
        self.ids_seen: set[int] = set()
        self.uuid: bytes | None = None
        self.id_lock = threading.Lock()
        self.channel_counts: list[Counts] = []
        self.threads: list[threading.Thread] = []
        self.page_count = multifd_ram_page_count(PAGE_SIZE)
        self.done_pages = 0
        self.total_bytes = 0
        self.first_contact: float | None = None
        self.finished = threading.Event()
        self.uri = ""

    def fail(self, exc: BaseException) -> None:
        """Record the first error and close every connection, unblocking every reader."""
        if isinstance(exc, MigrationAbortedError):
            return
        self.failure.fail(exc)
        with self.conns_lock:
            conns = list(self.conns)
        for conn in conns:
            conn.close()

    # -- accepting

    def _accept_all(self) -> None:
        try:
            expected = self.channels + 1
            accepted = 0
            # After the expected connections, keep accepting: any further one is an error.
            while True:
                self.listener.settimeout(POLL)
                deadline = time.monotonic() + self.timeout
                while True:
                    try:
                        sock, _ = self.listener.accept()
                        break
                    except TimeoutError:
                        if self.failure.event.is_set() or self.finished.is_set():
                            return
                        if accepted < expected and time.monotonic() > deadline:
                            raise TimeoutError(
                                f"nobody connected to {self.uri} within {self.timeout:g} s "
                                f"({accepted} of the {expected} connections arrived)"
                            ) from None
                if self.first_contact is None:
                    self.first_contact = time.monotonic()
                    self.deadline.restart()
                if accepted == expected:
                    conn = self._wrap(sock)
                    with self.conns_lock:
                        self.conns.append(conn)
                    raise self._extra(conn)
                accepted += 1
                # Each connection on its own thread from here: its TLS handshake and its
                # first bytes must not hold up the others (a source may connect them all
                # before it writes to any).
                thread = WorkerThread(
                    target=self._connection_thread,
                    args=(sock,),
                    daemon=True,
                    name="snapshot-conn",
                )
                self.threads.append(thread)
                thread.start()
        except BaseException as exc:
            self.failure.fail(exc)

    def _connection_thread(self, sock: socket.socket) -> None:
        try:
            if self.tls is not None:
                sock = handshake(
                    sock,
                    self.tls,
                    server_side=True,
                    timeout=self.timeout,
                    peer=peer_name(sock),
                )
            conn = self._wrap(sock)
            with self.conns_lock:
                self.conns.append(conn)
            if self.failure.event.is_set():
                conn.close()
                return
            magic = conn.peek(4, what="its magic (main or multifd channel?)")
            with self.id_lock:
                if magic == b"QEVM":
                    if self.have_main:
                        raise HandshakeError(f"a second main channel, from {conn.label}")
                    self.have_main = True
                elif self.multifd_seen == self.channels:
                    raise self._extra(conn)
                else:
                    self.multifd_seen += 1
            if magic == b"QEVM":
                conn.label = f"main channel ({conn.label})"
                self.main_queue.put(conn)
                return
            self._channel(conn)
        except MigrationAbortedError:
            pass
        except BaseException as exc:
            self.failure.fail(exc)

    def _wrap(self, sock: socket.socket) -> SocketChannel:
        conn = SocketChannel(sock, self.timeout)
        conn.progress = self.deadline
        return conn

    def _extra(self, conn: SocketChannel) -> HandshakeError:
        if not self.channels:
            return HandshakeError(
                f"a connection from {conn.label} that is not the main channel, "
                "but multifd is off here (channels=0)"
            )
        return HandshakeError(
            f"a connection from {conn.label} beyond the main channel and the {self.channels} "
            "expected multifd channels (a second claim to a channel, or a connection that "
            "took a channel's place): the migration is refused"
        )

    def _check_no_extra(self) -> None:
        """Before completing: a connection waiting to be accepted fails the migration."""
        ready, _, _ = select.select([self.listener], [], [], 0)
        if not ready:
            return
        self.listener.settimeout(0)
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):  # pragma: no cover - it went away
            return
        conn = self._wrap(sock)
        with self.conns_lock:
            self.conns.append(conn)
        raise self._extra(conn)

    # -- multifd channels

    def _channel(self, conn: SocketChannel) -> None:
        init = bytearray(64)
        conn.recv_exact(memoryview(init), what="its multifd handshake")
        hello = decode_init(init, channels=self.channels)
        with self.id_lock:
            if hello.id in self.ids_seen:
                raise HandshakeError(
                    f"multifd channel id {hello.id} claimed twice, the second time by {conn.label}"
                )
            self.ids_seen.add(hello.id)
            conn.label = f"multifd channel {hello.id} ({conn.label})"
            if self.uuid is None:
                self.uuid = hello.uuid
            elif hello.uuid != self.uuid:
                raise HandshakeError(
                    f"channel {hello.id} belongs to migration {hello.uuid.hex()}, "
                    f"not {self.uuid.hex()}"
                )
        counts = Counts()
        self.channel_counts.append(counts)
        self.failure.wait_event(
            self.blocks_ready, self.timeout, f"the block list (MEM_SIZE) before {conn.label}"
        )
        lengths = {name: block.used_length for name, block in self.blocks.items()}
        size = packet_len(self.page_count)
        header = bytearray(size)
        payload = bytearray(self.page_count * PAGE_SIZE)
        header_view = memoryview(header)
        payload_view = memoryview(payload)
        while True:
            if self.failure.event.is_set():
                raise MigrationAbortedError("the snapshot failed elsewhere")
            if not conn.recv_exact(header_view, what="a multifd packet", eof_ok=True):
                return
            pkt = decode_packet(
                header, page_count=self.page_count, page_size=PAGE_SIZE, blocks=lengths
            )
            data = payload_view[: pkt.next_packet_size]
            if pkt.next_packet_size:
                conn.recv_exact(data, what="a multifd payload")
            if pkt.normal_pages or pkt.zero_pages:
                block = self.blocks[pkt.ramblock]
                if pkt.zero_pages:
                    recv_zero_page_process(block, pkt.zero, options=_OPTIONS)
                if pkt.normal_pages:
                    recv_normal_pages(block, pkt.normal, data)
                    self._written(pkt.ramblock, pkt.normal)
                counts.add(pkt.ramblock, pkt.normal_pages, pkt.zero_pages)
                self._progress(pkt.normal_pages + pkt.zero_pages)
            if pkt.sync:
                self.synced.release()
                self.failure.wait(
                    self.release[hello.id],
                    self.timeout,
                    f"MULTIFD_FLUSH on the main channel to release {conn.label}",
                )

    def _progress(self, pages: int) -> None:
        if self.progress is None:
            return
        self.done_pages += pages  # approximate under threads; only for display
        self.progress(min(self.done_pages * PAGE_SIZE, self.total_bytes), self.total_bytes)

    # -- main channel

    def _sync_main(self) -> None:
        """``multifd_recv_sync_main``: one SYNC from every channel, then release them all."""
        for _ in range(self.channels):
            self.failure.wait(
                self.synced, self.timeout, "a SYNC packet from every multifd channel"
            )
        for sem in self.release:
            sem.release()

    def _written(self, idstr: str, offsets: npt.NDArray[np.uint64]) -> None:
        # Pages never written are still the fresh mapping's zeros: writing the
        # image need not read them (reading would fault each one in).
        self.written[idstr][offsets // np.uint64(PAGE_SIZE)] = True

    def _make_blocks(self, mem: MemSize, at: int) -> None:
        for idstr, length in mem.blocks:
            try:
                host = fresh_memory(length)
            except (OSError, OverflowError, ValueError) as exc:
                raise StreamSizeError(
                    f"cannot map {length} bytes for block {idstr!r}: {exc}", at
                ) from None
            self.blocks[idstr] = RAMBlock(idstr, host, PAGE_SIZE, fresh=True)
            self.written[idstr] = np.zeros(length // PAGE_SIZE, dtype=np.bool_)
            self.order.append((idstr, length))
        self.total_bytes = mem.total
        self.blocks_ready.set()

    def run(self) -> tuple[dict[str, Any], Counts]:
        accept = WorkerThread(target=self._accept_all, daemon=True, name="snapshot-accept")
        self.accept_thread = accept
        accept.start()
        try:
            return self._run_main()
        except BaseException as exc:
            self.fail(exc)
            first = self.failure.error
            # Report the first failure: a channel's error closes the main channel too.
            if first is not None and first is not exc:
                raise first from None
            raise
        finally:
            self.finished.set()
            with self.conns_lock:
                conns = list(self.conns)
            if self.failure.error is not None:
                self.failure.event.set()
                for conn in conns:  # unblocks every reader
                    conn.close()
            accept.join(self.timeout)
            for thread in self.threads:
                thread.join(self.timeout)
            for conn in conns:
                conn.close()

    def _run_main(self) -> tuple[dict[str, Any], Counts]:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                main = self.main_queue.get(timeout=POLL)
                break
            except queue.Empty:
                if self.failure.event.is_set():
                    raise MigrationAbortedError("the snapshot failed elsewhere") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no main channel within {self.timeout} s") from None
        main.waiting_for = "the main stream"
        reader = StreamReader(main, page_size=PAGE_SIZE)
        counts = Counts()
        info: dict[str, Any] = {"commands": []}
        for event in reader.events():
            if self.failure.event.is_set():
                raise MigrationAbortedError("the snapshot failed elsewhere")
            if isinstance(event, ZeroPages):
                recv_legacy_zero_pages(self.blocks[event.idstr], event.offsets)
                counts.add(event.idstr, 0, len(event.offsets))
                self._progress(len(event.offsets))
            elif isinstance(event, Pages):
                recv_normal_pages(self.blocks[event.idstr], event.offsets, event.data)
                self._written(event.idstr, event.offsets)
                counts.add(event.idstr, len(event.offsets), 0)
                self._progress(len(event.offsets))
            elif isinstance(event, MultifdFlush):
                if self.channels:
                    self._sync_main()
            elif isinstance(event, MemSize):
                self._make_blocks(event, reader.offset)
            elif isinstance(event, Configuration):
                info["configuration"] = event
            elif isinstance(event, SectionHeader) and "ram" not in info:
                info["ram"] = event
            elif isinstance(event, Command):
                info["commands"].append(event.name)
            elif isinstance(event, DeviceState):
                info["device_state"] = event.raw
        if not self.blocks:
            raise StreamError("the stream has no MEM_SIZE record", reader.offset)
        # The source closes every channel once done; wait for them to end cleanly.
        for thread in self.threads:
            thread.join(self.timeout)
            if thread.is_alive():
                raise TimeoutError("a multifd channel did not end after the migration")
        if self.failure.error is not None:
            raise self.failure.error
        if len(self.ids_seen) != self.channels:
            raise HandshakeError(
                f"{len(self.ids_seen)} multifd channels connected, {self.channels} expected"
            )
        self.finished.set()
        self.accept_thread.join(self.timeout)
        if self.failure.error is not None:
            raise self.failure.error
        self._check_no_extra()
        info["main_bytes"] = channel_bytes(main)
        return info, counts


class SnapshotSaver:
    """Receive one live migration from a QEMU 10 source and write it as a snapshot.

    Parameters
    ----------
    directory : str or path
        Where the snapshot goes; created if missing. Must not hold a snapshot
        (``manifest.json``) already.
    listen : str, default ``"tcp:127.0.0.1:0"``
        ``tcp:HOST:PORT`` (port 0 picks a free one) or ``unix:PATH``.
    channels : int, default 2
        The source's ``multifd-channels``; 0 when its multifd capability is off.
    timeout : float, default 60.0
        Seconds any single wait (a connection, a read, a sync) may take.
    progress : callable, optional
        ``progress(done_bytes, total_bytes)``, called from receiving threads.
    min_progress_bytes : int, default 4096
        The no-progress rule: at least this many bytes over all connections
        every ``progress_seconds`` (default: ``timeout``), or
        :class:`~multifd_zero.errors.NoProgressError`.
    progress_seconds : float, optional
    tls : TLSConfig, optional
        TLS on every channel, as a QEMU destination with ``tls-creds``
        (``endpoint=server``): ``server-cert.pem``/``server-key.pem`` from
        ``tls.creds_dir``, and with ``verify_peer`` (the default) a client
        certificate signed by ``ca-cert.pem`` required. A connection whose
        handshake fails (a plain one included) fails the save before any of
        its bytes is used.

    Attributes
    ----------
    uri : str
        The bound address as QEMU writes it, for ``migrate uri=...``.

    Examples
    --------
    >>> with SnapshotSaver(dir, channels=2) as saver:  # doctest: +SKIP
    ...     qmp.cmd("migrate", uri=saver.uri)
    ...     result = saver.wait()
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        listen: str = "tcp:127.0.0.1:0",
        channels: int = 2,
        *,
        timeout: float = 60.0,
        progress: Progress | None = None,
        min_progress_bytes: int = DEFAULT_MIN_PROGRESS_BYTES,
        progress_seconds: float | None = None,
        tls: TLSConfig | None = None,
    ) -> None:
        check_channels(channels)
        if tls is not None and not isinstance(tls, TLSConfig):
            raise TypeError(f"tls must be a TLSConfig, not {type(tls).__name__}")
        self._tls = None if tls is None else tls.server_context()
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        ProgressDeadline(progress_seconds or timeout, min_bytes=min_progress_bytes)  # checks
        self.min_progress_bytes = min_progress_bytes
        self.progress_seconds = progress_seconds
        self.directory = Path(directory)
        if (self.directory / MANIFEST).exists():
            raise SnapshotError(f"{self.directory} already holds a snapshot")
        self.channels = channels
        self.timeout = float(timeout)
        self.progress = progress
        self._sock, self.uri, self._unix_path = listen_uri(listen)
        self._used = False

    def wait(self) -> SaveResult:
        """Receive one migration and write the snapshot.

        Returns
        -------
        SaveResult

        Raises
        ------
        StreamError, PacketError
            A broken or hostile stream (nothing is written).
        TimeoutError
            A wait took longer than ``timeout``.
        OSError
            Writing the snapshot failed (no manifest is written).
        """
        if self._used:
            raise RuntimeError("a SnapshotSaver receives one migration only")
        self._used = True
        start = time.monotonic()
        deadline = ProgressDeadline(
            self.timeout if self.progress_seconds is None else self.progress_seconds,
            min_bytes=self.min_progress_bytes,
        )
        dest = _Destination(
            self._sock, self.channels, self.timeout, self.progress, deadline, self._tls
        )
        dest.uri = self.uri
        info, counts = dest.run()
        if dest.first_contact is not None:
            start = dest.first_contact
        all_counts = [counts, *dest.channel_counts]
        transferred = sum(channel_bytes(conn) for conn in dest.conns)
        manifest = _write_snapshot(self.directory, dest, info, all_counts)
        seconds = max(time.monotonic() - start, 1e-9)
        return SaveResult(
            directory=str(self.directory),
            manifest=manifest,
            normal=manifest.normal,
            duplicate=manifest.duplicate,
            normal_bytes=manifest.normal * manifest.page_size,
            transferred=transferred,
            channels=self.channels,
            seconds=seconds,
            gb_per_s=transferred / seconds / 1e9,
            blocks=manifest.blocks,
        )

    def close(self) -> None:
        """Stop listening (and remove a Unix socket file this saver created)."""
        with contextlib.suppress(OSError):
            self._sock.close()
        if self._unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._unix_path)
            self._unix_path = None

    def __enter__(self) -> SnapshotSaver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def save(
    directory: str | os.PathLike[str],
    listen: str = "tcp:127.0.0.1:0",
    channels: int = 2,
    *,
    timeout: float = 60.0,
    progress: Progress | None = None,
    tls: TLSConfig | None = None,
) -> SaveResult:
    """Listen, receive one migration and write the snapshot (see :class:`SnapshotSaver`).

    Only useful with a fixed address (the caller must know where to migrate).
    """
    with SnapshotSaver(
        directory, listen, channels, timeout=timeout, progress=progress, tls=tls
    ) as saver:
        return saver.wait()


def _write_snapshot(
    directory: Path, dest: _Destination, info: dict[str, Any], counts: Sequence[Counts]
) -> Manifest:
    config: Configuration = info["configuration"]
    ram: SectionHeader = info["ram"]
    device_state: bytes = info["device_state"]
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / MANIFEST).exists():
        raise SnapshotError(f"{directory} already holds a snapshot")
    blocks = []
    for index, (idstr, length) in enumerate(dest.order):
        name = block_file_name(index, idstr)
        data_pages = write_image(
            directory / name, dest.blocks[idstr].host, length, dest.written[idstr]
        )
        blocks.append(
            BlockInfo(
                idstr,
                length,
                name,
                data_pages,
                sum(c.normal.get(idstr, 0) for c in counts),
                sum(c.duplicate.get(idstr, 0) for c in counts),
            )
        )
    write_file(directory / DEVICE_STATE_FILE, device_state)
    manifest = Manifest(
        format=FORMAT,
        version=FORMAT_VERSION,
        machine_type=config.machine_type,
        configuration=config.raw,
        page_size=PAGE_SIZE,
        blocks=tuple(blocks),
        ram_section_id=ram.section_id,
        ram_instance_id=ram.instance_id,
        ram_version_id=ram.version_id,
        device_state_file=DEVICE_STATE_FILE,
        device_state_length=len(device_state),
        device_state_sha256=hashlib.sha256(device_state).hexdigest(),
        commands=tuple(info["commands"]),
        normal=sum(b.normal for b in blocks),
        duplicate=sum(b.duplicate for b in blocks),
        channels=dest.channels,
        uuid=dest.uuid or bytes(16),
        complete=True,
    )
    tmp = directory / (MANIFEST + ".tmp")
    write_file(tmp, (json.dumps(manifest_dict(manifest), indent=1) + "\n").encode())
    os.rename(tmp, directory / MANIFEST)
    fsync_dir(directory)
    return manifest
