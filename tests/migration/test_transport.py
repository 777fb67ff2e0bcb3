"""Transports: in-process FIFOs, loopback TCP and Unix sockets, destination process, shared RAM.

Every socket here is on 127.0.0.1 or a Unix path in a temporary folder; every
wait is bounded by a short timeout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import mmap
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import multifd_zero as mz
from multifd_zero import wire
from multifd_zero.errors import StreamBlockError, StreamOffsetError
from multifd_zero.migration import transport
from multifd_zero.migration.process import (
    DestinationConfig,
    DestinationProcess,
    fresh_memory,
    rebuild_error,
)
from multifd_zero.migration.shm import SharedRAM
from multifd_zero.migration.transport import Channel, Listener, connect, inprocess_pair
from multifd_zero.wire.savevm import StreamWriter

T = 5.0  # seconds: the bound on every wait in these tests


def assert_closed_by_peer(channel: Channel) -> None:
    """The peer has closed: a receive sees the end of stream (or a reset, if data was unread)."""
    with contextlib.suppress(ConnectionResetError):
        assert channel.recv_into(memoryview(bytearray(1))) == 0


def socket_pair(kind: str, tmp_path: Path) -> tuple[Channel, Channel]:
    """A connected (client, server) pair over ``kind`` ("tcp" or "unix")."""
    address = None if kind == "tcp" else str(tmp_path / "s.sock")
    with Listener(kind, address, timeout=T) as listener:
        client = connect(kind, listener.address, timeout=T)
        server = listener.accept()
    return client, server


@pytest.fixture(params=["inprocess", "tcp", "unix"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Channel, Channel]]:
    """A connected pair of channels of each kind; closed afterwards."""
    a: Channel
    b: Channel
    if request.param == "inprocess":
        a, b = inprocess_pair(timeout=T)
    else:
        a, b = socket_pair(request.param, tmp_path)
    yield a, b
    a.close()
    b.close()


def test_gather_send_and_exact_receive(pair: tuple[Channel, Channel]) -> None:
    """send writes every part in order; recv_exact fills a preallocated buffer."""
    a, b = pair
    head = b"H" * 1344
    body = np.arange(3 * 4096, dtype=np.uint8)
    assert a.send([head, body, b""]) == 1344 + 3 * 4096
    buf = bytearray(1344 + 3 * 4096)
    assert b.recv_exact(memoryview(buf))
    assert bytes(buf[:1344]) == head and bytes(buf[1344:]) == body.tobytes()
    assert a.bytes_sent == b.bytes_received == len(buf)


def test_big_transfer_in_both_directions(pair: tuple[Channel, Channel]) -> None:
    """16 MiB one way while 16 MiB come back: larger than any buffer, no deadlock."""
    a, b = pair
    data = np.random.default_rng(1).integers(0, 256, 16 << 20, dtype=np.uint8)
    got = {}

    def echo() -> None:
        buf = bytearray(data.size)
        b.recv_exact(memoryview(buf))
        got["b"] = bytes(buf)

    thread = threading.Thread(target=echo)
    thread.start()
    a.send([data])
    thread.join(T)
    assert not thread.is_alive() and got["b"] == data.tobytes()


def test_clean_end_and_truncation(pair: tuple[Channel, Channel]) -> None:
    """End of stream between messages is clean with eof_ok; inside one it is TruncatedError."""
    a, b = pair
    a.send([b"abc"])
    a.close()
    buf = bytearray(4)
    with pytest.raises(wire.TruncatedError, match="3 of 4"):
        b.recv_exact(memoryview(buf), what="a test")
    assert b.recv_exact(memoryview(buf), eof_ok=True) is False
    assert b.recv_into(memoryview(buf)) == 0


def test_send_to_a_closed_peer_fails(pair: tuple[Channel, Channel]) -> None:
    """Once the peer has closed, sending raises an OSError (BrokenPipe or reset)."""
    a, b = pair
    b.close()
    with pytest.raises(OSError):
        for _ in range(100):  # a socket may take a few sends to notice
            a.send([bytes(65536)])


def test_receive_times_out(pair: tuple[Channel, Channel]) -> None:
    """A receive with nothing coming gives up after the channel's timeout."""
    _a, b = pair
    b.timeout = 0.1
    if isinstance(b, transport.SocketChannel):
        b.socket.settimeout(0.1)
    with pytest.raises(TimeoutError):
        b.recv_into(memoryview(bytearray(1)))


def test_inprocess_backpressure_times_out() -> None:
    """A full FIFO makes a send wait, then time out; one send larger than the FIFO still goes."""
    a, b = inprocess_pair(timeout=0.1, capacity=1024)
    a.send([bytes(5000)])  # into an empty FIFO
    with pytest.raises(TimeoutError):
        a.send([bytes(10)])
    buf = bytearray(5000)
    assert b.recv_exact(memoryview(buf))
    a.send([bytes(10)])


def test_close_wakes_a_blocked_receiver(pair: tuple[Channel, Channel]) -> None:
    """Closing a channel from another thread ends a receive blocked on it."""
    _a, b = pair
    outcome: list[object] = []

    def blocked() -> None:
        try:
            outcome.append(b.recv_into(memoryview(bytearray(8))))
        except OSError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=blocked)
    thread.start()
    threading.Event().wait(0.05)
    b.close()
    thread.join(T)
    assert not thread.is_alive()
    assert outcome[0] == 0 or isinstance(outcome[0], OSError)
    assert b.closed


def test_tcp_is_loopback_only(tmp_path: Path) -> None:
    """TCP binds and connects to 127.0.0.1 only; bad transports and addresses are refused."""
    with pytest.raises(ValueError, match="loopback"):
        Listener("tcp", ("0.0.0.0", 0))
    with pytest.raises(ValueError, match="loopback"):
        connect("tcp", ("10.0.0.1", 1))
    with pytest.raises(ValueError):
        Listener("udp")
    with pytest.raises(ValueError, match="path"):
        Listener("unix")
    with Listener("tcp") as listener:
        address = listener.address
        assert isinstance(address, tuple)
        host, port = address
        assert host == "127.0.0.1" and port > 0


def test_unix_listener_removes_its_path(tmp_path: Path) -> None:
    """The Unix socket file goes away with the listener."""
    path = tmp_path / "x.sock"
    with Listener("unix", str(path)) as listener:
        assert listener.address == str(path) and path.exists()
    assert not path.exists()


def test_accept_times_out(tmp_path: Path) -> None:
    """accept gives up after the listener's timeout."""
    with (
        Listener("unix", str(tmp_path / "t.sock"), timeout=0.1) as listener,
        pytest.raises(TimeoutError),
    ):
        listener.accept()


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_peer_in_another_process(kind: str, tmp_path: Path) -> None:
    """A separate process connects and gather-sends; this one reads with recv_into."""
    address = None if kind == "tcp" else str(tmp_path / "p.sock")
    script = (
        "import sys, ast, numpy as np\n"
        "from multifd_zero.migration.transport import connect\n"
        "kind, addr = sys.argv[1], ast.literal_eval(sys.argv[2])\n"
        "ch = connect(kind, addr, timeout=5)\n"
        "ch.send([b'x' * 1344, np.full(1 << 20, 7, np.uint8)])\n"
        "ch.close()\n"
    )
    with Listener(kind, address, timeout=T) as listener:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, kind, repr(listener.address)], cwd=tmp_path
        )
        channel = listener.accept()
    buf = bytearray(1344 + (1 << 20))
    assert channel.recv_exact(memoryview(buf))
    assert channel.recv_exact(memoryview(bytearray(1)), eof_ok=True) is False
    channel.close()
    assert proc.wait(T) == 0
    assert buf[:1344] == b"x" * 1344 and buf[1344:] == b"\x07" * (1 << 20)


def test_shared_ram_is_seen_by_another_process(tmp_path: Path) -> None:
    """A child maps SharedRAM by path and writes; the parent sees it; closing removes the file."""
    ram = SharedRAM(3 * 4096)
    script = (
        "import mmap, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "m = mmap.mmap(fd, 3 * 4096)\n"
        "m[4096:4100] = b'abcd'\n"
    )
    subprocess.run([sys.executable, "-c", script, ram.path], check=True, timeout=30)
    assert ram[4096:4100] == b"abcd" and ram[:4096] == bytes(4096)
    path = ram.path
    ram.close()
    assert not os.path.exists(path)
    with pytest.raises(ValueError):
        SharedRAM(0)


def test_fresh_memory_is_private_and_zero() -> None:
    """Fresh destination memory: zero, writable, private (reads do not allocate shared pages)."""
    memory = fresh_memory(2 * mmap.PAGESIZE)
    assert memory[:] == bytes(2 * mmap.PAGESIZE)
    memory[0] = 1
    assert memory[0] == 1
    memory.close()


def test_rebuild_error_keeps_the_class() -> None:
    """Errors reported by the destination process come back as the same class when known."""
    assert type(rebuild_error("OffsetError", "m")) is wire.OffsetError
    assert type(rebuild_error("TimeoutError", "m")) is TimeoutError
    assert type(rebuild_error("BrokenPipeError", "m")) is BrokenPipeError
    other = rebuild_error("KeyError", "m")
    assert type(other).__name__ == "MigrationError" and "KeyError" in str(other)
    assert type(rebuild_error("RamPacket", "m")).__name__ == "MigrationError"
    # A main-stream error needs its reason and offset: the same message comes back.
    original = StreamBlockError("bad block", 65)
    again = rebuild_error("StreamBlockError", str(original), reason="bad block", offset=65)
    assert type(again) is StreamBlockError and isinstance(again, wire.BlockError)
    assert (str(again), again.offset) == (str(original), 65)
    assert type(rebuild_error("StreamBlockError", "m")) is StreamBlockError  # an older child


def _child_config(uuid: bytes, **changes: object) -> DestinationConfig:
    config = DestinationConfig(
        transport="tcp",
        address=None,
        channels=1,
        page_size=4096,
        page_count=4,
        idstr="pc.ram",
        size=8 * 4096,
        path=None,
        receivedmap=None,
        return_receivedmap=False,
        options=mz.MigrationOptions(),
        uuid=uuid,
        simd="",
        timeout=10.0,
        checksum=False,
    )
    return dataclasses.replace(config, **changes)


def test_destination_process_reports_a_bad_start(tmp_path: Path) -> None:
    """A destination process given bad settings reports its error instead of hanging."""
    child = DestinationProcess(
        _child_config(bytes(16), transport="udp"), cwd=str(tmp_path), timeout=30
    )
    with pytest.raises(Exception, match=r"size|udp|KeyError"):
        child.expect("listening")
    assert child.close() == 1


def test_destination_process_refuses_a_bad_packet(tmp_path: Path) -> None:
    """Raw bytes over TCP to a destination process: a bad packet comes back as its PacketError."""
    uuid = bytes(16)
    config = _child_config(uuid)
    child = DestinationProcess(config, cwd=str(tmp_path), timeout=30)
    try:
        address = tuple(child.expect("listening")["address"])
        main = connect("tcp", address, timeout=T)
        chan = connect("tcp", address, timeout=T)
        w = StreamWriter()
        main.send(
            [
                w.header(),
                w.configuration("multifd-zero"),
                w.section_start(1),
                w.mem_size([("pc.ram", 8 * 4096)]),
                w.eos(),
                w.footer(1),
            ]
        )
        chan.send([wire.encode_init(uuid, 0)])
        bad = wire.RamPacket(
            pages_alloc=4,
            normal_pages=1,
            next_packet_size=4096,
            ramblock="pc.ram",
            offsets=np.array([8 * 4096], np.uint64),
        )
        chan.send([wire.encode_packet(bad, 4, bytes(4096))])
        with pytest.raises(wire.OffsetError):
            child.expect("complete")
        assert_closed_by_peer(chan)
        main.close()
        chan.close()
    finally:
        child.kill()


def test_destination_process_refuses_a_bad_main_stream_record(tmp_path: Path) -> None:
    """A zero record past the block, over TCP: the StreamOffsetError comes back with its
    byte offset in the main stream."""
    uuid = bytes(16)
    child = DestinationProcess(_child_config(uuid), cwd=str(tmp_path), timeout=30)
    try:
        address = tuple(child.expect("listening")["address"])
        main = connect("tcp", address, timeout=T)
        chan = connect("tcp", address, timeout=T)
        w = StreamWriter()
        setup = [
            w.header(),
            w.configuration("multifd-zero"),
            w.section_start(1),
            w.mem_size([("pc.ram", 8 * 4096)]),
            w.eos(),
            w.footer(1),
            w.section_part(1),
        ]
        main.send([*setup, w.zero_pages("pc.ram", np.array([8 * 4096], np.uint64))])
        chan.send([wire.encode_init(uuid, 0)])
        with pytest.raises(StreamOffsetError) as caught:
            child.expect("complete")
        assert caught.value.offset == sum(len(part) for part in setup)
        main.close()
        chan.close()
    finally:
        child.kill()
