"""The snapshot saver's connections: the no-progress rule and connections beyond the expected.

No test depends on timing: a peer that goes silent stays silent until the saver's error.
"""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from multifd_zero.errors import HandshakeError, NoProgressError
from multifd_zero.snapshot import SnapshotSaver
from multifd_zero.wire import encode_init


def _wait(saver: SnapshotSaver) -> tuple[threading.Thread, list[Any]]:
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(saver.wait())
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def test_a_peer_silent_after_three_bytes_meets_the_no_progress_deadline(tmp_path: Path) -> None:
    """A 20-second timeout, but at least 4096 bytes every 0.2 s: 'QEV' and silence end it."""
    with SnapshotSaver(tmp_path / "s", channels=0, timeout=20, progress_seconds=0.2) as saver:
        thread, box = _wait(saver)
        host, port = saver.uri[4:].rsplit(":", 1)
        with socket.create_connection((host, int(port))) as peer:
            peer.sendall(b"QEV")
            thread.join(20)
    assert isinstance(box[0], NoProgressError), box[0]
    assert re.search(r"3 bytes in \d+ s .*every 0.2 s.*tcp 127\.0\.0\.1:\d+ was waiting for "
                     r"its magic", str(box[0])), box[0]
    assert not (tmp_path / "s" / "manifest.json").exists()


def test_a_second_claim_to_a_channel_id_names_the_connection(tmp_path: Path) -> None:
    sock_path = tmp_path / "s.sock"
    with SnapshotSaver(tmp_path / "s", f"unix:{sock_path}", channels=2, timeout=20) as saver:
        thread, box = _wait(saver)
        peers = []
        for _ in range(2):
            peer = socket.socket(socket.AF_UNIX)
            peer.connect(str(sock_path))
            peer.sendall(encode_init(bytes(16), 1))
            peers.append(peer)
        thread.join(20)
        for peer in peers:
            peer.close()
    assert isinstance(box[0], HandshakeError)
    assert re.search(r"channel id 1 claimed twice, the second time by unix peer pid \d+",
                     str(box[0])), box[0]


def test_the_deadline_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        SnapshotSaver(tmp_path / "s", channels=0, min_progress_bytes=-1)
