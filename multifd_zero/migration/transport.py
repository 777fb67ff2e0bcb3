"""Byte channels between a migration source and its destination.

A :class:`Channel` is one full-duplex byte stream, like a socket: ``send``
writes every byte of a list of buffers (a gather write, as QEMU's ``writev``),
``recv_into`` reads what is there into a caller's buffer, and ``0`` means the
peer closed its end. Every blocking call gives up after the channel's
``timeout`` (``TimeoutError``), so no loop built on them can hang. Each
channel has a :attr:`~Channel.label` naming the connection (its peer, and
once identified, main channel or channel id), which every timeout message
gives with what the channel was waiting for.

A per-call timeout alone lets a peer that sends one byte now and then hold a
side forever. A :class:`ProgressDeadline` shared by the channels of one side
adds the overall rule: at least ``min_bytes`` every ``seconds`` over all of
them, else :class:`~multifd_zero.errors.NoProgressError`.

Kinds:

- **in-process** (:func:`inprocess_pair`): two bounded FIFOs of byte chunks
  between threads of one process. A send copies the data once into the FIFO
  (as a kernel pipe would; numpy copies release the GIL); a receive copies it
  out into the reader's buffer.
- **TCP on loopback** and **Unix stream sockets** (:class:`Listener`,
  :func:`connect`): one connection per channel; receives go straight into
  the caller's preallocated buffer with ``socket.recv_into``, sends use
  ``socket.sendmsg`` over the caller's buffers without joining them.

Addresses: TCP binds and connects to ``127.0.0.1`` only; a Unix address is a
filesystem path.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import os
import select
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ..errors import NoProgressError, TruncatedError
from .tls import handshake

__all__ = [
    "DEFAULT_MIN_PROGRESS_BYTES",
    "DEFAULT_TIMEOUT",
    "LOOPBACK",
    "TRANSPORTS",
    "Channel",
    "InProcessChannel",
    "Listener",
    "ProgressDeadline",
    "SocketChannel",
    "connect",
    "inprocess_pair",
]

TransportName = Literal["inprocess", "tcp", "unix"]
TRANSPORTS: tuple[str, ...] = ("inprocess", "tcp", "unix")
"""The transport names :func:`multifd_zero.migration.engine.migrate` accepts."""
LOOPBACK = "127.0.0.1"
"""The only TCP address used."""
DEFAULT_TIMEOUT = 60.0
"""Seconds any single send, receive, accept or connect may block."""
DEFAULT_MIN_PROGRESS_BYTES = 4096
"""Bytes (one page) a side must receive, over all its channels, per no-progress window."""

_PIPE_CAPACITY = 4 * 1024 * 1024
_IOV_MAX = 64  # buffers per sendmsg call; the system's limit is 1024 on Linux
_ACCEPT_BACKLOG = 64


class ProgressDeadline:
    """The overall no-progress rule of one side: at least ``min_bytes`` every ``seconds``.

    Shared by every channel of a destination. Each receive adds its bytes;
    a window of ``seconds`` that ends with fewer than ``min_bytes`` received
    over all channels fails the receive that notices it, with
    :class:`~multifd_zero.errors.NoProgressError`. A channel waiting on an
    idle peer wakes at least once a window to check, so a peer that
    trickles, or goes silent after a byte, is ended within about two
    windows however long the per-call timeout is.

    Parameters
    ----------
    seconds : float
        The window; positive.
    min_bytes : int, default 4096
        Bytes needed per window (:data:`DEFAULT_MIN_PROGRESS_BYTES`; 0 turns the rule off).
    clock : callable, optional
        Monotonic seconds (``time.monotonic``); tests may inject their own.

    Examples
    --------
    >>> now = [0.0]
    >>> deadline = ProgressDeadline(10.0, min_bytes=100, clock=lambda: now[0])
    >>> deadline.add(60, "channel 0"); now[0] = 11.0; deadline.add(60, "channel 0")
    >>> deadline.add(1, "channel 0"); now[0] = 22.0
    >>> deadline.check("channel 1", "a packet header")
    Traceback (most recent call last):
    ...
    multifd_zero.errors.NoProgressError: no progress: 1 byte in 11 s over every connection ...
    """

    def __init__(
        self,
        seconds: float,
        *,
        min_bytes: int = DEFAULT_MIN_PROGRESS_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not seconds > 0:
            raise ValueError(f"the no-progress window must be positive, got {seconds}")
        if isinstance(min_bytes, bool) or not isinstance(min_bytes, int) or min_bytes < 0:
            raise ValueError(f"min_bytes must be a non-negative int, got {min_bytes!r}")
        self.seconds = float(seconds)
        self.min_bytes = min_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._bytes = 0
        self._last = "no connection"

    def restart(self) -> None:
        """Start a new window now (when reading begins, after the connections are set up)."""
        with self._lock:
            self._start = self._clock()
            self._bytes = 0

    def add(self, count: int, label: str) -> None:
        """Count ``count`` bytes received on the connection ``label``."""
        with self._lock:
            self._bytes += count
            if count:
                self._last = label
            self._roll()

    def check(self, label: str, what: str) -> None:
        """Raise NoProgressError if the current window ended short of ``min_bytes``."""
        with self._lock:
            self._roll()

    def _roll(self) -> None:
        # Called under the lock: close the window if it is over, failing if it fell short.
        elapsed = self._clock() - self._start
        if elapsed < self.seconds:
            return
        if self._bytes >= self.min_bytes:
            self._start = self._clock()
            self._bytes = 0
            return
        got = self._bytes
        raise NoProgressError(
            f"no progress: {got} byte{'' if got == 1 else 's'} in {elapsed:.0f} s over every "
            f"connection (at least {self.min_bytes} needed every {self.seconds:g} s); "
            f"last data from {self._last}"
        )


class Channel(abc.ABC):
    """One byte stream to the peer (abstract).

    Attributes
    ----------
    timeout : float
        Seconds a single blocking call may wait.
    bytes_sent, bytes_received : int
        Totals over the channel's life.
    label : str
        The connection as error messages name it (the peer; main channel or
        channel id once known).
    waiting_for : str
        What the current receive is for, named in a timeout's message.
    progress : ProgressDeadline or None
        The side's no-progress rule, checked on every receive.
    """

    def __init__(self, timeout: float, label: str = "channel") -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.timeout = float(timeout)
        self.bytes_sent = 0
        self.bytes_received = 0
        self.label = label
        self.waiting_for = "data"
        self.progress: ProgressDeadline | None = None

    @abc.abstractmethod
    def send(self, parts: Sequence[Any]) -> int:
        """Write every byte of ``parts`` (buffers), in order; return the byte count.

        Raises
        ------
        BrokenPipeError, ConnectionError
            The peer closed its end.
        TimeoutError
            No progress for ``timeout`` seconds.
        """

    def _recv_once(self, view: memoryview, wait: float) -> int:
        """One receive that waits at most ``wait`` seconds (TimeoutError after that).

        A kind of channel implements this, or overrides :meth:`recv_into` itself.
        """
        raise NotImplementedError

    def recv_into(self, view: memoryview) -> int:
        """Read up to ``len(view)`` bytes into ``view``; return the count, 0 at end of stream.

        Raises
        ------
        TimeoutError
            Nothing arrived for ``timeout`` seconds; the message names the
            connection and :attr:`waiting_for`.
        NoProgressError
            The side's :class:`ProgressDeadline` ran out.
        """
        progress = self.progress
        deadline = time.monotonic() + self.timeout
        while True:  # each pass returns, raises, or waits at most one window
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"{self.label}: nothing received for {self.timeout:g} s while waiting "
                    f"for {self.waiting_for}"
                )
            wait = left if progress is None else min(left, progress.seconds)
            try:
                count = self._recv_once(view, wait)
            except TimeoutError:
                if progress is not None:
                    self._check_progress(progress)
                continue
            self.bytes_received += count
            if progress is not None:
                try:
                    progress.add(count, self.label)
                except NoProgressError as exc:
                    raise self._named(exc) from None
            return count

    def _check_progress(self, progress: ProgressDeadline) -> None:
        try:
            progress.check(self.label, self.waiting_for)
        except NoProgressError as exc:
            raise self._named(exc) from None

    def _named(self, exc: NoProgressError) -> NoProgressError:
        return NoProgressError(f"{exc}; {self.label} was waiting for {self.waiting_for}")

    @abc.abstractmethod
    def close(self) -> None:
        """Close both directions; a peer's pending receive sees the end of the stream."""

    def end(self) -> None:  # noqa: B027 - most kinds have no session to end
        """The sender is done: end the session cleanly where the kind has one (TLS)."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once :meth:`close` has run."""

    def recv_exact(
        self,
        view: memoryview,
        *,
        what: str = "data",
        eof_ok: bool = False,
        keep_waiting: Callable[[], bool] | None = None,
    ) -> bool:
        """Fill ``view`` completely.

        Parameters
        ----------
        view : memoryview
            Writable bytes.
        what : str
            Named in the error message.
        eof_ok : bool, default False
            Return False instead of raising when the stream ends before the
            first byte (a clean end between packets).
        keep_waiting : callable, optional
            Asked when a receive times out before the first byte: True waits
            ``timeout`` more (the peer is idle but the migration moves on
            elsewhere), False lets the ``TimeoutError`` through. The
            no-progress rule is never waived.

        Returns
        -------
        bool
            True when filled; False at a clean end of stream (``eof_ok`` only).

        Raises
        ------
        TruncatedError
            The stream ended part-way (or before the first byte without ``eof_ok``).
        """
        size = view.nbytes
        got = 0
        self.waiting_for = what
        while got < size:  # each pass reads a byte, ends, or waits while keep_waiting says so
            try:
                count = self.recv_into(view[got:])
            except NoProgressError:
                raise
            except TimeoutError:
                if got == 0 and keep_waiting is not None and keep_waiting():
                    continue
                raise
            if count == 0:
                if got == 0 and eof_ok:
                    return False
                raise TruncatedError(
                    f"{self.label}: the stream ended after {got} of {size} bytes of {what}"
                )
            got += count
        return True

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- in-process


_SMALL = 1 << 16  # below this a copy is cheaper under the GIL than through numpy


def _copy_bytes(data: memoryview) -> memoryview:
    """A private copy of ``data`` (numpy, which releases the GIL, for large ones)."""
    if data.nbytes < _SMALL:
        return memoryview(bytes(data))
    copy: npt.NDArray[np.uint8] = np.frombuffer(data, dtype=np.uint8).copy()
    return copy.data.cast("B")


def _copy_into(out: memoryview, data: memoryview) -> None:
    if data.nbytes < _SMALL:
        out[:] = data
    else:
        np.frombuffer(out, dtype=np.uint8)[:] = np.frombuffer(data, dtype=np.uint8)


class _Pipe:
    """One direction of an in-process channel: a bounded FIFO of byte chunks.

    One writer thread and one reader thread. Data is copied into private
    chunks under no lock and out of them under no lock; the lock only guards
    the queue, and a side is woken only when it waits (a wake-up costs a
    futex call while holding the GIL).
    """

    def __init__(self, capacity: int) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._chunks: collections.deque[memoryview] = collections.deque()
        self._pos = 0
        self._buffered = 0
        self._capacity = capacity
        self._reader_waits = False
        self._writer_waits = False
        self.writer_closed = False
        self.reader_closed = False

    def write(self, parts: Sequence[Any], timeout: float) -> int:
        chunks = []
        total = 0
        for part in parts:
            data = memoryview(part).cast("B")
            if data.nbytes:
                chunks.append(_copy_bytes(data))
                total += data.nbytes
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self.reader_closed:
                    raise BrokenPipeError("the peer closed the channel")
                if self.writer_closed:
                    raise OSError("send on a closed channel")
                if self._buffered == 0 or self._buffered + total <= self._capacity:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"send blocked for {timeout} s (peer not reading)")
                self._writer_waits = True
                self._cond.wait(left)
                self._writer_waits = False
            self._chunks.extend(chunks)
            self._buffered += total
            if self._reader_waits:
                self._cond.notify()
        return total

    def read_into(self, view: memoryview, timeout: float) -> int:
        out = memoryview(view).cast("B")
        want = out.nbytes
        deadline = time.monotonic() + timeout
        pieces = []
        with self._cond:
            while not self._chunks:
                if self.reader_closed:
                    raise OSError("receive on a closed channel")
                if self.writer_closed:
                    return 0
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"receive waited {timeout} s for data")
                self._reader_waits = True
                self._cond.wait(left)
                self._reader_waits = False
            got = 0
            while self._chunks and got < want:
                chunk = self._chunks[0]
                take = min(chunk.nbytes - self._pos, want - got)
                pieces.append((got, chunk, self._pos, take))
                got += take
                self._pos += take
                if self._pos == chunk.nbytes:
                    self._chunks.popleft()
                    self._pos = 0
            self._buffered -= got
            if self._writer_waits:
                self._cond.notify()
        # Chunks are never changed once queued, and there is one reader: copy unlocked.
        for at, chunk, pos, take in pieces:
            _copy_into(out[at : at + take], chunk[pos : pos + take])
        return got

    def close_writer(self) -> None:
        with self._cond:
            self.writer_closed = True
            self._cond.notify_all()

    def close_reader(self) -> None:
        with self._cond:
            self.reader_closed = True
            self._chunks.clear()
            self._buffered = 0
            self._cond.notify_all()


class InProcessChannel(Channel):
    """One end of an in-process channel; make a connected pair with :func:`inprocess_pair`."""

    def __init__(self, inbound: _Pipe, outbound: _Pipe, timeout: float) -> None:
        super().__init__(timeout, "in-process channel")
        self._in = inbound
        self._out = outbound
        self._closed = False

    def send(self, parts: Sequence[Any]) -> int:
        count = self._out.write(parts, self.timeout)
        self.bytes_sent += count
        return count

    def _recv_once(self, view: memoryview, wait: float) -> int:
        return self._in.read_into(view, wait)

    def close(self) -> None:
        self._closed = True
        self._out.close_writer()
        self._in.close_reader()

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return f"InProcessChannel({'closed' if self._closed else 'open'})"


def inprocess_pair(
    *, timeout: float = DEFAULT_TIMEOUT, capacity: int = _PIPE_CAPACITY
) -> tuple[InProcessChannel, InProcessChannel]:
    """Return two connected in-process channel ends.

    Parameters
    ----------
    timeout : float
        Seconds a send or receive may block.
    capacity : int
        Bytes buffered per direction before a send waits (a larger single
        send is still accepted into an empty FIFO).

    Examples
    --------
    >>> a, b = inprocess_pair()
    >>> a.send([b"ab", b"cd"])
    4
    >>> buf = bytearray(4)
    >>> b.recv_exact(memoryview(buf)), bytes(buf)
    (True, b'abcd')
    >>> a.close(); b.recv_into(memoryview(buf))
    0
    """
    forward, backward = _Pipe(capacity), _Pipe(capacity)
    return (
        InProcessChannel(backward, forward, timeout),
        InProcessChannel(forward, backward, timeout),
    )


# -------------------------------------------------------------------- sockets


class SocketChannel(Channel):
    """A channel over a connected TCP or Unix stream socket (or a TLS session over one).

    Parameters
    ----------
    sock : socket.socket
        Connected; the channel owns it from now on. An ``ssl.SSLSocket``
        whose handshake is done works too.
    timeout : float
        Seconds a single send or receive may block.
    """

    def __init__(self, sock: socket.socket, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(timeout, peer_name(sock))
        sock.settimeout(self.timeout)
        self._sock_timeout = self.timeout
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._closed = False
        self._unread = b""
        self._gather = not isinstance(sock, ssl.SSLSocket)  # SSLSocket has no sendmsg

    @property
    def socket(self) -> socket.socket:
        """The underlying socket."""
        return self._sock

    def _set_timeout(self, seconds: float) -> None:
        if seconds != self._sock_timeout:
            self._sock.settimeout(seconds)
            self._sock_timeout = seconds

    def send(self, parts: Sequence[Any]) -> int:
        views = [v for v in (memoryview(p).cast("B") for p in parts) if v.nbytes]
        total = sum(v.nbytes for v in views)
        self._set_timeout(self.timeout)
        if not self._gather:
            for view in views:
                self._sock.sendall(view)
            self.bytes_sent += total
            return total
        while views:  # each pass sends at least one byte or raises
            sent = self._sock.sendmsg(views[:_IOV_MAX])
            while sent:
                head = views[0]
                if sent >= head.nbytes:
                    sent -= head.nbytes
                    views.pop(0)
                else:
                    views[0] = head[sent:]
                    sent = 0
        self.bytes_sent += total
        return total

    def _recv_once(self, view: memoryview, wait: float) -> int:
        if self._unread:
            count = min(len(self._unread), view.nbytes)
            view[:count] = self._unread[:count]
            self._unread = self._unread[count:]
            return count
        self._set_timeout(wait)
        return self._sock.recv_into(view)

    def peek(self, count: int, *, what: str = "a connection's first bytes") -> bytes:
        """The first ``count`` bytes of the stream, left to be read again (fewer at its end).

        How a destination tells the main channel (``QEVM``) from a multifd
        one, as ``migration_ioc_process_incoming`` (``migration/migration.c``)
        does; it works over TLS too, where ``MSG_PEEK`` cannot.
        """
        buf = bytearray(count)
        view = memoryview(buf)
        got = len(self._unread)
        view[:got] = self._unread
        self._unread = b""
        self.waiting_for = what
        while got < count:  # each pass reads a byte or ends
            n = self.recv_into(view[got:])
            if n == 0:
                break
            got += n
        self.bytes_received -= got  # counted again when read for real
        self._unread = bytes(buf[:got])
        return self._unread

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # shutdown wakes a thread blocked in recv on this socket; close alone does not.
        # (The plain socket's shutdown: a TLS socket's would drop its session under
        # a reading thread.)
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
        self._sock.close()

    def end(self) -> None:
        """The sender is done: end the TLS session with ``close_notify`` (QEMU 10's
        ``gnutls_bye`` on its multifd channels), then shut down writing.

        Called by the thread that sends, never concurrently with a receive.
        """
        if self._closed:
            return
        if isinstance(self._sock, ssl.SSLSocket):
            # Wait for room for the alert, then send it without waiting for the peer's.
            with contextlib.suppress(OSError, ValueError):
                select.select([], [self._sock], [], self.timeout)
                self._sock.settimeout(0.0)
                self._sock_timeout = 0.0
                self._sock.unwrap()
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self._sock, socket.SHUT_WR)
        # Anything the peer sent that was never read (a TLS server's session tickets)
        # would turn the close into a reset, which can drop the end of what we sent.
        self._set_timeout(0.0)  # with a timeout, recv would first wait for data
        with contextlib.suppress(OSError):
            while socket.socket.recv(self._sock, 65536):
                pass

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return f"SocketChannel({self.label}, {'closed' if self._closed else 'open'})"


def peer_name(sock: socket.socket) -> str:
    """The peer of a connected socket as messages name it: ``tcp 127.0.0.1:5555``, or
    ``unix peer pid 123`` (the pid the kernel reports for a Unix socket's peer)."""
    try:
        if sock.family == socket.AF_UNIX:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            pid = int.from_bytes(creds[:4], sys.byteorder)
            return f"unix peer pid {pid}"
        host, port = sock.getpeername()[:2]
        return f"tcp [{host}]:{port}" if ":" in str(host) else f"tcp {host}:{port}"
    except (OSError, ValueError, AttributeError):  # unconnected, or no SO_PEERCRED
        return "unknown peer"


Address = tuple[str, int] | str


class Listener:
    """A listening socket on loopback TCP or a Unix path, accepting channels.

    Parameters
    ----------
    transport : {"tcp", "unix"}
    address : tuple or str, optional
        TCP: ``(host, port)`` with host ``127.0.0.1`` (port 0, the default,
        picks a free one). Unix: a path that does not exist yet (required).
    timeout : float
        Seconds :meth:`accept` waits; also given to accepted channels.
    tls : ssl.SSLContext, optional
        A server context (:meth:`~multifd_zero.migration.tls.TLSConfig.server_context`):
        every accepted connection's TLS handshake is run before it is returned.
    """

    def __init__(
        self,
        transport: str,
        address: Address | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.transport = transport
        self.timeout = float(timeout)
        self.tls = tls
        sock = _new_socket(transport)
        try:
            if transport == "tcp":
                host, port = address if isinstance(address, tuple) else (LOOPBACK, 0)
                _check_loopback(host)
                sock.bind((host, port))
            else:
                if not isinstance(address, str):
                    raise ValueError("a Unix listener needs a filesystem path")
                sock.bind(address)
            sock.listen(_ACCEPT_BACKLOG)
            sock.settimeout(self.timeout)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._path = address if transport == "unix" else None

    @property
    def address(self) -> Address:
        """Where to connect: ``(host, port)`` for TCP, the path for Unix."""
        name = self._sock.getsockname()
        return (str(name[0]), int(name[1])) if self.transport == "tcp" else str(name)

    def accept(self, *, waiting_for: str = "a connection") -> SocketChannel:
        """Wait up to ``timeout`` for one connection and return it as a channel.

        Raises
        ------
        TimeoutError
            Nobody connected within ``timeout``; the message names the
            address and ``waiting_for``.
        """
        try:
            conn, _ = self._sock.accept()
        except TimeoutError:
            raise TimeoutError(
                f"nobody connected to {self.transport} {self.address} within "
                f"{self.timeout:g} s while waiting for {waiting_for}"
            ) from None
        if self.tls is not None:
            conn = handshake(
                conn, self.tls, server_side=True, timeout=self.timeout, peer=peer_name(conn)
            )
        return SocketChannel(conn, self.timeout)

    def poll(self, wait: float = 0.0) -> SocketChannel | None:
        """A connection that is waiting to be accepted (within ``wait`` seconds), or None."""
        ready, _, _ = select.select([self._sock], [], [], wait)
        if not ready:
            return None
        self._sock.settimeout(0.0)
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        finally:
            self._sock.settimeout(self.timeout)
        return SocketChannel(conn, self.timeout)

    def close(self) -> None:
        """Stop listening (and remove the Unix socket path)."""
        self._sock.close()
        if isinstance(self._path, str):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    transport: str,
    address: Address,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    tls: ssl.SSLContext | None = None,
    hostname: str | None = None,
) -> SocketChannel:
    """Connect to a :class:`Listener` and return the channel.

    With ``tls`` (a client context), the channel's TLS handshake is run
    first, checking the server's certificate against ``hostname``.

    Raises
    ------
    ValueError
        An unknown transport, or a TCP host other than ``127.0.0.1``.
    OSError
        The connection failed (``TimeoutError`` after ``timeout`` seconds).
    """
    sock = _new_socket(transport)
    try:
        sock.settimeout(timeout)
        if transport == "tcp":
            if not isinstance(address, tuple):
                raise ValueError("a TCP address is (host, port)")
            _check_loopback(address[0])
            sock.connect((address[0], int(address[1])))
        else:
            if not isinstance(address, str):
                raise ValueError("a Unix address is a path")
            sock.connect(address)
    except BaseException:
        sock.close()
        raise
    if tls is not None:
        sock = handshake(
            sock,
            tls,
            server_side=False,
            timeout=timeout,
            hostname=hostname,
            peer=peer_name(sock),
        )
    return SocketChannel(sock, timeout)


def _new_socket(transport: str) -> socket.socket:
    if transport == "tcp":
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if transport == "unix":
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raise ValueError(f"transport must be 'tcp' or 'unix' for sockets, not {transport!r}")


def _check_loopback(host: str) -> None:
    if host != LOOPBACK:
        raise ValueError(f"only loopback TCP ({LOOPBACK}) is supported, not {host!r}")
