"""Byte channels between a migration source and its destination.

A :class:`Channel` is one full-duplex byte stream, like a socket: ``send``
writes every byte of a list of buffers (a gather write, as QEMU's ``writev``),
``recv_into`` reads what is there into a caller's buffer, and ``0`` means the
peer closed its end. Every blocking call gives up after the channel's
``timeout`` (``TimeoutError``), so no loop built on them can hang.

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
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ..errors import TruncatedError

__all__ = [
    "DEFAULT_TIMEOUT",
    "LOOPBACK",
    "TRANSPORTS",
    "Channel",
    "InProcessChannel",
    "Listener",
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

_PIPE_CAPACITY = 4 * 1024 * 1024
_IOV_MAX = 64  # buffers per sendmsg call; the system's limit is 1024 on Linux
_ACCEPT_BACKLOG = 64


class Channel(abc.ABC):
    """One byte stream to the peer (abstract).

    Attributes
    ----------
    timeout : float
        Seconds a single blocking call may wait.
    bytes_sent, bytes_received : int
        Totals over the channel's life.
    """

    def __init__(self, timeout: float) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.timeout = float(timeout)
        self.bytes_sent = 0
        self.bytes_received = 0

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

    @abc.abstractmethod
    def recv_into(self, view: memoryview) -> int:
        """Read up to ``len(view)`` bytes into ``view``; return the count, 0 at end of stream."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close both directions; a peer's pending receive sees the end of the stream."""

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
            elsewhere), False lets the ``TimeoutError`` through.

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
        while got < size:  # each pass reads a byte, ends, or waits while keep_waiting says so
            try:
                count = self.recv_into(view[got:])
            except TimeoutError:
                if got == 0 and keep_waiting is not None and keep_waiting():
                    continue
                raise
            if count == 0:
                if got == 0 and eof_ok:
                    return False
                raise TruncatedError(f"the stream ended after {got} of {size} bytes of {what}")
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
        super().__init__(timeout)
        self._in = inbound
        self._out = outbound
        self._closed = False

    def send(self, parts: Sequence[Any]) -> int:
        count = self._out.write(parts, self.timeout)
        self.bytes_sent += count
        return count

    def recv_into(self, view: memoryview) -> int:
        count = self._in.read_into(view, self.timeout)
        self.bytes_received += count
        return count

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
    """A channel over a connected TCP or Unix stream socket.

    Parameters
    ----------
    sock : socket.socket
        Connected; the channel owns it from now on.
    timeout : float
        Applied to the socket (``settimeout``).
    """

    def __init__(self, sock: socket.socket, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(timeout)
        sock.settimeout(self.timeout)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._closed = False

    @property
    def socket(self) -> socket.socket:
        """The underlying socket."""
        return self._sock

    def send(self, parts: Sequence[Any]) -> int:
        views = [v for v in (memoryview(p).cast("B") for p in parts) if v.nbytes]
        total = sum(v.nbytes for v in views)
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

    def recv_into(self, view: memoryview) -> int:
        count = self._sock.recv_into(view)
        self.bytes_received += count
        return count

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # shutdown wakes a thread blocked in recv on this socket; close alone does not.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return f"SocketChannel({self._sock.family.name}, {'closed' if self._closed else 'open'})"


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
    """

    def __init__(
        self,
        transport: str,
        address: Address | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.transport = transport
        self.timeout = float(timeout)
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

    def accept(self) -> SocketChannel:
        """Wait up to ``timeout`` for one connection and return it as a channel."""
        conn, _ = self._sock.accept()
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
    transport: str, address: Address, *, timeout: float = DEFAULT_TIMEOUT
) -> SocketChannel:
    """Connect to a :class:`Listener` and return the channel.

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
