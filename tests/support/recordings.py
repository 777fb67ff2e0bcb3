"""Real QEMU 10 migration streams, recorded byte for byte (for the codec tests).

:func:`record` starts a fresh paused QEMU (:class:`support.qemu_vm.QemuVM`) on a
guest RAM file made by :func:`support.qemu_vm.fill_ram`, and migrates it to a
socket that stores every byte of every connection: the main channel (the one
that starts with ``QEVM``) and the multifd channels. :class:`Recorder` caches
one recording per ``(channels, mode)``, for a session- or module-scoped
fixture (a test module calls :func:`support.qemu_vm.require_qemu` first).
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.qemu_vm import QemuVM, fill_ram, migrate, set_migration, wait_migration

__all__ = ["GUEST_MB", "Recorder", "Recording", "record"]

GUEST_MB = 64


@dataclass(frozen=True)
class Recording:
    """What a real QEMU source sent: the main stream, the multifd channels, its counts."""

    main: bytes
    multifd: list[bytes]
    info: dict[str, Any]  # the source's query-migrate at completion
    guest: bytes  # guest RAM (the ram0 block) as migrated


def record(workdir: Path, channels: int, mode: str, *, seed: int = 1) -> Recording:
    """Migrate a fresh paused QEMU to a socket that stores every byte; return what it got."""
    ram_file = workdir / "ram"
    fill_ram(ram_file, GUEST_MB << 20, seed=seed)
    guest = ram_file.read_bytes()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(30)  # a safety net against a hung QEMU only
    got: list[bytes] = []
    lock = threading.Lock()
    threads: list[threading.Thread] = []

    def reader(conn: socket.socket) -> None:
        parts = []
        while chunk := conn.recv(1 << 20):
            parts.append(chunk)
        conn.close()
        with lock:
            got.append(b"".join(parts))

    def acceptor() -> None:
        for _ in range(channels + 1):
            conn, _ = server.accept()
            thread = threading.Thread(target=reader, args=(conn,))
            thread.start()
            threads.append(thread)

    accept = threading.Thread(target=acceptor)
    accept.start()
    try:
        with QemuVM(ram_file) as vm:
            set_migration(vm, channels, mode)
            migrate(vm, f"tcp:127.0.0.1:{server.getsockname()[1]}")
            info = wait_migration(vm, 120)
    finally:
        accept.join(30)
        for thread in threads:
            thread.join(30)
        server.close()
    main = [d for d in got if d[:4] == b"QEVM"]
    assert len(main) == 1 and len(got) == channels + 1
    return Recording(main[0], [d for d in got if d[:4] != b"QEVM"], info, guest)


class Recorder:
    """``recorder(channels, mode)``: a recording, made once per key under ``base``."""

    def __init__(self, base: Any) -> None:
        self._mktemp = base  # a callable name -> fresh directory (TempPathFactory.mktemp)
        self._cache: dict[tuple[int, str], Recording] = {}

    def __call__(self, channels: int, mode: str) -> Recording:
        key = (channels, mode)
        if key not in self._cache:
            self._cache[key] = record(self._mktemp(f"rec{channels}{mode}"), channels, mode)
        return self._cache[key]
