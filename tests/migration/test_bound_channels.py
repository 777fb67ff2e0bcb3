"""Channels bound to one migration, timeouts that name their connection, the no-progress rule.

The findings of issue 14 these reproduce: a client that knew the uuid connected as channel 1
before the real one, and the migration "completed" with its page while the real channel 1
was dropped without an error; a timeout that named no connection; a sender that trickles a
byte now and then held the destination for as long as it liked. No test here depends on
timing: a peer that goes silent stays silent until the error, and the no-progress window is
tested with an injected clock.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import multifd_zero as mz
from multifd_zero import wire
from multifd_zero.errors import HandshakeError, NoProgressError
from multifd_zero.migration.destination import MigrationDestination
from multifd_zero.migration.process import DestinationConfig, DestinationProcess
from multifd_zero.migration.source import MigrationSource
from multifd_zero.migration.transport import (
    Listener,
    ProgressDeadline,
    connect,
    inprocess_pair,
)
from multifd_zero.stats import MigrationStats
from multifd_zero.wire.savevm import StreamWriter

PS = 4096
PAGES = 16
NAME = "pc.ram"
UUID = bytes(range(16))
T = 20.0  # the bound on every wait; no test waits for it to run out
PEER = r"tcp 127\.0\.0\.1:\d+"


def config(**changes: Any) -> DestinationConfig:
    base = DestinationConfig(
        transport="tcp",
        address=None,
        channels=2,
        page_size=PS,
        page_count=4,
        idstr=NAME,
        size=PAGES * PS,
        path=None,
        receivedmap=None,
        return_receivedmap=True,
        options=mz.MigrationOptions(),
        uuid=UUID,
        simd="",
        timeout=T,
        checksum=True,
    )
    return dataclasses.replace(base, **changes)


def sync() -> bytes:
    return wire.encode_packet(wire.RamPacket(flags=wire.MULTIFD_FLAG_SYNC, pages_alloc=4), 4)


def page_packet(page: int, fill: int) -> bytes:
    pkt = wire.RamPacket(
        pages_alloc=4,
        normal_pages=1,
        next_packet_size=PS,
        ramblock=NAME,
        offsets=np.array([page * PS], np.uint64),
    )
    return wire.encode_packet(pkt, 4, bytes([fill]) * PS)


def test_an_intruder_that_takes_channel_1s_place_fails_the_migration(tmp_path: Path) -> None:
    """The intruder knows the uuid and connects as channel 1 first, playing its part (a page,
    then the SYNC packets); then the real source connects main, 0, 1. The real channel 1 is a
    connection too many: the destination refuses the migration, naming it."""
    child = DestinationProcess(config(), cwd=str(tmp_path), timeout=T)
    try:
        address = tuple(child.expect("listening")["address"])
        intruder = connect("tcp", address, timeout=T)
        intruder.send([wire.encode_init(UUID, 1), page_packet(12, 0x66), sync(), sync()])
        intruder.socket.shutdown(socket.SHUT_WR)  # done, as the real channel would be
        ram = np.repeat(np.arange(1, PAGES + 1, dtype=np.uint8), PS)
        block = mz.RAMBlock(NAME, ram)
        main = connect("tcp", address, timeout=T)
        multifd = [connect("tcp", address, timeout=T) for _ in range(2)]
        source = MigrationSource(
            block,
            main,
            multifd,
            options=mz.MigrationOptions(),
            stats=MigrationStats(),
            page_count=4,
            uuid=UUID,
            timeout=T,
            progress=None,
        )
        box: list[Any] = []
        thread = threading.Thread(target=lambda: box.append(_run(source)))
        thread.start()
        with pytest.raises(HandshakeError, match=rf"a connection from {PEER} beyond the main"):
            child.expect("complete")
        thread.join(T)
        for channel in [intruder, main, *multifd]:
            channel.close()
    finally:
        child.kill()


def _run(source: MigrationSource) -> Any:
    try:
        return source.run(iter([np.arange(PAGES, dtype=np.uint64) * np.uint64(PS)]))
    except BaseException as exc:  # the destination closed the channels under it
        return exc


def destination(channels: int = 2, **kw: Any) -> MigrationDestination:
    block = mz.RAMBlock(NAME, bytearray(PAGES * PS))
    return MigrationDestination(
        [block],
        channels=channels,
        options=mz.MigrationOptions(),
        page_count=4,
        uuid=UUID,
        timeout=kw.pop("timeout", T),
        **kw,
    )


def setup(w: StreamWriter) -> list[bytes]:
    return [
        w.header(),
        w.configuration("multifd-zero"),
        w.section_start(1),
        w.mem_size([(NAME, PAGES * PS)]),
        w.eos(),
        w.footer(1),
        w.section_part(1),
    ]


def test_more_connections_than_channels_fail_the_migration() -> None:
    """A whole migration plus one connection too many (in-process): a HandshakeError naming
    it, not a completion."""
    pairs = [inprocess_pair(timeout=T) for _ in range(4)]
    pairs[3][0].send([wire.encode_init(UUID, 1)])
    pairs[3][0].close()
    block = mz.RAMBlock(NAME, np.ones(PAGES * PS, np.uint8))
    source = MigrationSource(
        block,
        pairs[0][0],
        [near for near, _ in pairs[1:3]],
        options=mz.MigrationOptions(),
        stats=MigrationStats(),
        page_count=4,
        uuid=UUID,
        timeout=T,
        progress=None,
    )
    thread = threading.Thread(target=_run, args=(source,))
    thread.start()
    with pytest.raises(HandshakeError, match="beyond the main channel and the 2 multifd"):
        destination().run([far for _, far in pairs])
    thread.join(T)


def test_a_second_claim_to_a_channel_id_names_both_peers() -> None:
    with Listener("tcp", timeout=T) as listener:
        socks = [connect("tcp", listener.address, timeout=T) for _ in range(2)]
        for sock in socks:
            sock.send([wire.encode_init(UUID, 0)])
        with pytest.raises(HandshakeError, match=rf"id 0 claimed twice: by multifd channel "
                           rf"0 \({PEER}\), then by {PEER}"):
            destination(channels=1).run(listener.accept)
        for sock in socks:
            sock.close()


def test_a_missing_connection_times_out_naming_what_is_missing() -> None:
    with Listener("tcp", timeout=0.2) as listener:
        main = connect("tcp", listener.address, timeout=T)
        main.send(setup(StreamWriter()))
        with pytest.raises(TimeoutError) as caught:
            destination(timeout=0.2).run(listener.accept)
        main.close()
    message = str(caught.value)
    assert re.search(r"nobody connected to tcp \('127\.0\.0\.1', \d+\)", message), message
    assert "(1 of the 3 connections arrived)" in message


def test_a_silent_channel_times_out_naming_the_connection_and_the_wait() -> None:
    """The handshake and the main stream's setup arrive, then nothing: the timeout names the
    connection that timed out and what it was waiting for (the no-progress rule off)."""
    with Listener("tcp", timeout=0.3) as listener:
        main = connect("tcp", listener.address, timeout=T)
        chan = connect("tcp", listener.address, timeout=T)
        main.send(setup(StreamWriter()))
        chan.send([wire.encode_init(UUID, 0)])
        with pytest.raises(TimeoutError) as caught:
            destination(channels=1, timeout=0.3, min_progress_bytes=0).run(listener.accept)
        main.close()
        chan.close()
    assert not isinstance(caught.value, NoProgressError)
    assert re.search(
        rf"(main channel \({PEER}\): nothing received for 0.3 s while waiting for the main "
        rf"stream|multifd channel 0 \({PEER}\): nothing received .* a packet header)",
        str(caught.value),
    ), caught.value


def test_a_peer_silent_after_a_byte_meets_the_no_progress_deadline() -> None:
    """The per-receive timeout is long (20 s); the peer sends the main stream's setup and one
    byte, then nothing: the no-progress window (0.2 s, 4096 bytes) ends it, however long."""
    with Listener("tcp", timeout=T) as listener:
        main = connect("tcp", listener.address, timeout=T)
        chan = connect("tcp", listener.address, timeout=T)
        main.send(setup(StreamWriter()))
        chan.send([wire.encode_init(UUID, 0), sync()[:1]])
        with pytest.raises(NoProgressError) as caught:
            destination(channels=1, progress_seconds=0.2).run(listener.accept)
        main.close()
        chan.close()
    message = str(caught.value)
    assert "at least 4096 needed every 0.2 s" in message, message
    assert re.search(r"(main|multifd) channel.* was waiting for", message), message
    assert isinstance(caught.value, TimeoutError)


def test_the_no_progress_window_ends_a_trickle_whatever_the_per_call_timeout() -> None:
    """Issue 14's trickler with an injected clock: a byte every 2.5 s, 3-second windows, 4096
    bytes needed. Each receive alone would be in time; the second window fails."""
    now = [0.0]
    deadline = ProgressDeadline(3.0, clock=lambda: now[0])
    trickled = 0
    with pytest.raises(NoProgressError, match=r"no progress: 2 bytes in 5 s .* last data from "
                       r"main channel"):
        for _ in range(100):
            now[0] += 2.5
            deadline.add(1, "main channel")
            trickled += 1
    assert trickled == 1  # the second byte ended it: its window fell short, not after 40 s
    # A peer that keeps up passes window after window.
    now[0] = 0.0
    steady = ProgressDeadline(3.0, clock=lambda: now[0])
    for _ in range(100):
        now[0] += 2.5
        steady.add(4096, "main channel")
    steady.check("main channel", "the main stream")
    with pytest.raises(ValueError, match="positive"):
        ProgressDeadline(0)
    with pytest.raises(ValueError, match="non-negative"):
        ProgressDeadline(1.0, min_bytes=-1)


def test_the_no_progress_rule_is_configurable_and_checked() -> None:
    src = mz.RAMBlock(NAME, np.ones(8 * PS, np.uint8))
    result = mz.migrate(src, channels=1, min_progress_bytes=1, progress_seconds=30.0)
    assert result.ram["normal"] == 8
    with pytest.raises(ValueError, match="progress_seconds"):
        mz.migrate(src, progress_seconds=0)
    with pytest.raises(ValueError, match="min_progress_bytes"):
        mz.migrate(src, min_progress_bytes=-1)
