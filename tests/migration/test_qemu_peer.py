"""A real peer: QEMU 10 migrates a RAM image, and ``scan`` must count its pages the same.

The test builds a deterministic guest RAM image (128 MiB of 4 KiB pages: zero
pages, some of them holes, and pages with one non-zero byte at the start, the
end, the middle or anywhere, or random data), starts ``qemu-system-x86_64``
(QEMU 10.0 or later) on it::

    qemu-system-x86_64 -machine none -nodefaults -no-user-config -display none -S
        -object memory-backend-file,id=mem,size=SIZE,mem-path=IMAGE,share=on,readonly=on
        -machine memory-backend=mem -qmp unix:SOCKET,server=on,wait=off

and migrates it twice, each time from a fresh QEMU, through a small QMP client,
to a Unix socket served by this test, which keeps every connection's bytes:

1. plain precopy (one connection, the main stream);
2. multifd with 2 channels and ``zero-page-detection=multifd`` (the default
   since QEMU 9.0): the main stream and two multifd channels.

With ``-machine none`` the memory backend is the only RAM block (no firmware,
ROM or video RAM blocks; ``-machine pc`` would add ``pc.bios``, ``pc.rom`` and
three ACPI ``/rom@etc/...`` blocks), which the test checks with ``info
ramblock`` and ``query-migrate``'s ``ram.total``. So ``duplicate`` and
``normal`` must equal ``scan``'s zero and normal pages **exactly**, and they do.

What QEMU 10 counts (read in QEMU's ``migration/migration.c``,
``migration-stats.c``, ``ram.c``, ``multifd.c`` and ``multifd-nocomp.c``):

- ``ram.transferred`` is ``migration_transferred_bytes()``
  (``migration-stats.c``, reported by ``populate_ram_info`` in
  ``migration.c``): ``qemu_file_transferred()`` of the main stream, i.e.
  **every byte written to it** (file header, configuration, RAM section
  headers and footers, the setup section's block list, commands, the device
  sections and the JSON vmdesc), plus ``multifd-bytes``. QEMU 7.2 counted the
  RAM records only (``ram_transferred_add``); that sum lives on in QEMU 10 as
  ``precopy-bytes + downtime-bytes + postcopy-bytes`` (``ram_transferred_add``
  files the bytes by run state; the guest is stopped here, so they are
  ``downtime-bytes``): the page records and the ``EOS`` ending every
  iteration (``ram_save_iterate``), not those of the setup and completion
  sections.
- So the test records the main stream and parses its sections: ``transferred``
  is its length (plus ``multifd-bytes``) exactly, its page records are
  ``scan``'s ``precopy`` figure plus the block name sent once
  (``1 + len("mem")``), and their sum with the ``k`` EOS markers is what
  ``ram_transferred_add`` counted.
- multifd (``multifd_send_zero_page_detect`` on the sender threads): every
  page goes to a channel in batches of 128 (``multifd_queue_page``); the sender
  thread reorders each batch with a two-pointer pass (normal pages first) and
  sends the zero pages as offsets only. ``multifd-bytes`` is every byte on the
  channels, the 64-byte ``MultiFDInit_t`` handshake included; each packet is
  ``1344 + 4096 * normal_pages`` bytes. At setup and at the end of every round
  ``multifd_ram_flush_and_sync`` sends one SYNC packet on every channel and
  one ``RAM_SAVE_FLAG_MULTIFD_FLUSH`` on the main stream. The packets are
  decoded with the project's own ``multifd_zero.wire`` decoder.

A trailing partial page: QEMU rounds a RAM block up to whole pages and refuses
a backing file shorter than that; the test checks the refusal and that
``scan`` of the image cut 3096 bytes short (its last page partial) counts
what QEMU counts for the full image, whose last page is those bytes padded
with zeros.

QEMU missing or older than 10: the tests that need it are skipped with the
reason; with ``MULTIFD_ZERO_REQUIRE_QEMU=1`` (CI) they fail instead
(``qemu_vm.require_qemu``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import mmap
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytest
from support.qemu_vm import parse_ramblock, require_qemu

import multifd_zero
from multifd_zero.tools.scan import ScanResult, scan_file
from multifd_zero.wire import (
    HANDSHAKE_SIZE,
    MULTIFD_FLAG_SYNC,
    MULTIFD_MAGIC,
    RamPacket,
    check_header,
    decode_init,
    decode_packet,
    packet_len,
)

# savevm section framing (QEMU's migration/savevm.c) and the RAM section's records
# (migration/ram.c), by the project's names; the parser below is the test's own.
from multifd_zero.wire.savevm import (
    QEMU_VM_COMMAND,
    QEMU_VM_CONFIGURATION,
    QEMU_VM_EOF,
    QEMU_VM_FILE_MAGIC,
    QEMU_VM_FILE_VERSION,
    QEMU_VM_SECTION_END,
    QEMU_VM_SECTION_FOOTER,
    QEMU_VM_SECTION_FULL,
    QEMU_VM_SECTION_PART,
    QEMU_VM_SECTION_START,
    RAM_SAVE_FLAG_CONTINUE,
    RAM_SAVE_FLAG_EOS,
    RAM_SAVE_FLAG_MEM_SIZE,
    RAM_SAVE_FLAG_MULTIFD_FLUSH,
    RAM_SAVE_FLAG_PAGE,
    RAM_SAVE_FLAG_ZERO,
)

pytestmark = pytest.mark.qemu

QEMU = "qemu-system-x86_64"
MIN_QEMU = 10  # the packet layout, the zero-page detection and the counters below
PAGE = 4096
IMAGE_PAGES = 32768  # 128 MiB
BLOCK = "mem"  # the memory backend's id is the RAM block's idstr
SEED = 20240311
REQUIRE = os.environ.get("MULTIFD_ZERO_REQUIRE_QEMU") == "1"
BATCH = multifd_zero.multifd_ram_page_count(PAGE)  # 128 pages per multifd packet
PACKET_LEN = packet_len(BATCH)  # 1344 bytes before the payload


def unavailable(reason: str) -> NoReturn:
    """Skip, or fail when the environment requires QEMU (``MULTIFD_ZERO_REQUIRE_QEMU=1``)."""
    if REQUIRE:
        pytest.fail(f"MULTIFD_ZERO_REQUIRE_QEMU=1 but {reason}", pytrace=False)
    pytest.skip(reason)


# ---------------------------------------------------------------- the image


def build_image(path: Path, pages: int = IMAGE_PAGES) -> np.ndarray:
    """Write the guest RAM image; return the page kinds (0 = zero page).

    Kinds: 0 zero (written), 1 zero (a hole), 2 random bytes, 3..6 one non-zero
    byte at the first, last, middle or a random position. The last page holds
    data in its first 1000 bytes only, for the partial-page check.
    """
    rng = np.random.default_rng(SEED)
    kinds = rng.choice(7, size=pages, p=[0.35, 0.25, 0.16, 0.06, 0.06, 0.06, 0.06])
    # Long zero runs as well, as real guests have.
    for start in rng.integers(0, pages - 600, size=6):
        kinds[start : start + rng.integers(64, 600)] = rng.choice([0, 1])
    kinds[-1] = 7
    positions = rng.integers(0, PAGE, size=pages)
    values = rng.integers(1, 256, size=pages)
    chunk = 2048
    with open(path, "wb") as f:
        f.truncate(pages * PAGE)
        for first in range(0, pages, chunk):
            k = kinds[first : first + chunk]
            block = np.zeros((k.size, PAGE), dtype=np.uint8)
            rows = np.flatnonzero(k == 2)
            block[rows] = rng.integers(0, 256, size=(rows.size, PAGE), dtype=np.uint8)
            block[rows, 1] = 0xA5  # never all zero
            for kind, column in ((3, 0), (4, PAGE - 1), (5, PAGE // 2)):
                rows = np.flatnonzero(k == kind)
                block[rows, column] = values[first + rows]
            rows = np.flatnonzero(k == 6)
            block[rows, positions[first + rows]] = values[first + rows]
            rows = np.flatnonzero(k == 7)
            block[rows, 999] = 0x77
            block[rows, :999] = rng.integers(0, 256, size=(rows.size, 999), dtype=np.uint8)
            # Write page runs, skipping the holes.
            written = k != 1
            page = 0
            while page < k.size:
                if not written[page]:
                    page += 1
                    continue
                end = page
                while end < k.size and written[end]:
                    end += 1
                f.seek((first + page) * PAGE)
                f.write(block[page:end].tobytes())
                page = end
    return kinds


def reference_zero_mask(path: Path) -> np.ndarray:
    """numpy's answer, page by page: True where all 4096 bytes are zero."""
    data = np.fromfile(path, dtype=np.uint8)
    return ~data.reshape(-1, PAGE).any(axis=1)


# ---------------------------------------------------------------- QMP and QEMU


class QMPError(Exception):
    pass


class QMP:
    """A minimal QMP client over a Unix socket (one command at a time)."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except OSError:
            self.sock.close()
            raise
        self.file = self.sock.makefile("rwb")
        self.events: list[dict[str, Any]] = []
        greeting = self._read()
        if "QMP" not in greeting:
            raise QMPError(f"not a QMP greeting: {greeting}")
        self.version = greeting["QMP"]["version"]["qemu"]
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        line = self.file.readline()
        if not line:
            raise QMPError("QEMU closed the QMP socket")
        message: dict[str, Any] = json.loads(line)
        return message

    def execute(self, command: str, **arguments: Any) -> Any:
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self.file.write(json.dumps(request).encode() + b"\n")
        self.file.flush()
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise QMPError(f"{command}: {reply['error']}")
            return reply["return"]

    def hmp(self, command_line: str) -> str:
        return str(self.execute("human-monitor-command", **{"command-line": command_line}))

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def qemu_command(image: Path, size: int, qmp_path: Path) -> list[str]:
    return [
        QEMU,
        "-machine",
        "none",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-S",
        "-object",
        f"memory-backend-file,id={BLOCK},size={size},mem-path={image},share=on,readonly=on",
        "-machine",
        f"memory-backend={BLOCK}",
        "-qmp",
        f"unix:{qmp_path},server=on,wait=off",
    ]


@dataclass
class Guest:
    proc: subprocess.Popen[bytes]
    qmp: QMP


@contextlib.contextmanager
def start_qemu(image: Path, workdir: Path) -> Iterator[Guest]:
    """Start QEMU on ``image`` with a QMP socket in ``workdir``; quit it on exit."""
    qmp_path = workdir / f"qmp-{time.monotonic_ns()}.sock"
    cmd = qemu_command(image, image.stat().st_size, qmp_path)
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as exc:
        unavailable(f"{QEMU} cannot be started: {exc}")
    qmp = None
    try:
        deadline = time.monotonic() + 30
        while qmp is None:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                unavailable(f"{QEMU} exited with {proc.returncode} at start: {err.strip()}")
            if time.monotonic() > deadline:
                unavailable(f"{QEMU} did not open its QMP socket within 30 s")
            try:
                qmp = QMP(qmp_path)
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.02)
        yield Guest(proc, qmp)
    finally:
        if qmp is not None:
            with contextlib.suppress(QMPError, OSError):
                qmp.execute("quit")
            qmp.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def migrate(guest: Guest, uri: str, *, multifd_channels: int = 0) -> dict[str, Any]:
    """Run one migration to ``uri``; return ``query-migrate`` once it has completed."""
    qmp = guest.qmp
    params: dict[str, Any] = {"max-bandwidth": 1 << 40}
    if multifd_channels:
        qmp.execute(
            "migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": True}]
        )
        params["multifd-channels"] = multifd_channels
        params["zero-page-detection"] = "multifd"  # QEMU 10's default, stated
    qmp.execute("migrate-set-parameters", **params)
    qmp.execute("migrate", uri=uri)
    deadline = time.monotonic() + 180
    while True:
        info: dict[str, Any] = qmp.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            return info
        if status in ("failed", "cancelled"):
            raise AssertionError(f"migration {status}: {info}")
        if time.monotonic() > deadline:
            raise AssertionError(f"migration still {status} after 180 s: {info}")
        time.sleep(0.02)


def ram_blocks(qmp: QMP) -> dict[str, int]:
    """``info ramblock``: block name -> used length.

    Parsed by header name (``qemu_vm.parse_ramblock``): QEMU 10 added the ``HVA``
    and ``RO`` columns after ``Total``, so "the next to last column" is a host
    address there, not ``Used``.
    """
    return {name: block.used for name, block in parse_ramblock(qmp.hmp("info ramblock")).items()}


# ------------------------------------------------------------- multifd sink


@dataclass
class Sink:
    """A Unix-socket migration destination that keeps every connection's bytes."""

    path: Path
    server: socket.socket = field(init=False)
    streams: list[bytearray] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(self.path))
        self.server.listen(16)
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            buf = bytearray()
            self.streams.append(buf)
            thread = threading.Thread(target=self._drain, args=(conn, buf), daemon=True)
            self.threads.append(thread)
            thread.start()

    @staticmethod
    def _drain(conn: socket.socket, buf: bytearray) -> None:
        with conn:
            while True:
                data = conn.recv(1 << 20)
                if not data:
                    return
                buf += data

    def close(self) -> None:
        # close() alone does not wake a thread blocked in accept(); shutdown() does.
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.acceptor.join(timeout=10)
        assert not self.acceptor.is_alive()
        for thread in self.threads:
            thread.join(timeout=30)
            assert not thread.is_alive(), "a connection was not closed: its bytes may be partial"


@dataclass
class RamSection:
    """The RAM records of one savevm section of the main stream."""

    kind: int  # QEMU_VM_SECTION_START, _PART or _END
    zero: list[int] = field(default_factory=list)  # offsets of ZERO records
    pages: list[tuple[int, int]] = field(default_factory=list)  # (offset, data position)
    record_bytes: int = 0  # bytes of the ZERO and PAGE records
    flushes: int = 0  # RAM_SAVE_FLAG_MULTIFD_FLUSH records
    names: int = 0  # records that carried the block name (no CONTINUE)


@dataclass
class MainStream:
    """The main migration stream, parsed: its RAM sections, in order."""

    length: int
    blocks: dict[str, int]  # the setup section's MEM_SIZE list: name -> used length
    sections: list[RamSection]


def parse_main_stream(stream: bytearray) -> MainStream:
    """Parse QEMU's main stream up to the first device section after RAM's last one.

    The framing is QEMU's ``migration/savevm.c`` (``save_section_header``,
    ``save_section_footer``, ``qemu_savevm_command_send``); the RAM records are
    ``migration/ram.c``'s (``ram_save_setup``, ``save_page_header``,
    ``save_zero_page``, ``save_normal_page``, ``multifd_ram_flush_and_sync``).
    A device section (``QEMU_VM_SECTION_FULL``) has no length, so parsing stops
    there: with ``-machine none`` only ``timer`` and ``globalstate`` follow, then
    ``QEMU_VM_EOF`` and the JSON vmdesc.
    """
    magic, version = struct.unpack_from(">II", stream, 0)
    assert (magic, version) == (QEMU_VM_FILE_MAGIC, QEMU_VM_FILE_VERSION)
    pos = 8
    ram_id: int | None = None
    blocks: dict[str, int] = {}
    sections: list[RamSection] = []

    def u8() -> int:
        nonlocal pos
        pos += 1
        return stream[pos - 1]

    def be(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, stream, pos)
        pos += struct.calcsize(fmt)
        return int(value)

    def name() -> str:
        nonlocal pos
        size = u8()
        pos += size
        return bytes(stream[pos - size : pos]).decode()

    def ram_records(section: RamSection) -> None:
        nonlocal pos
        while True:
            word = be(">Q")
            flags, offset = word & (PAGE - 1), word & ~(PAGE - 1)
            start = pos - 8
            if flags & RAM_SAVE_FLAG_MEM_SIZE:
                assert section.kind == QEMU_VM_SECTION_START and flags == RAM_SAVE_FLAG_MEM_SIZE
                remaining = offset
                while remaining:
                    block = name()
                    blocks[block] = be(">Q")
                    remaining -= blocks[block]
            elif flags & (RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_PAGE):
                kind = flags & ~RAM_SAVE_FLAG_CONTINUE
                assert kind in (RAM_SAVE_FLAG_ZERO, RAM_SAVE_FLAG_PAGE), hex(flags)
                if not flags & RAM_SAVE_FLAG_CONTINUE:
                    assert name() == BLOCK
                    section.names += 1
                if kind == RAM_SAVE_FLAG_ZERO:
                    assert u8() == 0  # the fill byte
                    section.zero.append(offset)
                else:
                    section.pages.append((offset, pos))
                    pos += PAGE
                section.record_bytes += pos - start
            elif flags == RAM_SAVE_FLAG_MULTIFD_FLUSH:
                section.flushes += 1
            elif flags == RAM_SAVE_FLAG_EOS:
                return
            else:
                raise AssertionError(f"unexpected RAM record {word:#x} at {start}")

    while True:
        kind = u8()
        if kind == QEMU_VM_CONFIGURATION:  # vmstate "configuration": the machine name
            size = be(">I")
            pos += size
        elif kind in (QEMU_VM_SECTION_START, QEMU_VM_SECTION_FULL):
            section_id = be(">I")
            idstr = name()
            be(">I")  # instance id
            be(">I")  # version id
            if idstr != "ram":
                assert kind == QEMU_VM_SECTION_FULL and ram_id is not None, idstr
                assert sections[-1].kind == QEMU_VM_SECTION_END
                break
            assert kind == QEMU_VM_SECTION_START and ram_id is None
            ram_id = section_id
            sections.append(RamSection(kind))
            ram_records(sections[-1])
            assert (u8(), be(">I")) == (QEMU_VM_SECTION_FOOTER, ram_id)
        elif kind in (QEMU_VM_SECTION_PART, QEMU_VM_SECTION_END):
            assert be(">I") == ram_id, "only RAM is iterative here"
            sections.append(RamSection(kind))
            ram_records(sections[-1])
            assert (u8(), be(">I")) == (QEMU_VM_SECTION_FOOTER, ram_id)
        elif kind == QEMU_VM_COMMAND:
            be(">H")  # the command
            size = be(">H")  # its length
            pos += size
        else:
            raise AssertionError(f"unexpected section type {kind:#x} at {pos - 1}")
    assert QEMU_VM_EOF in stream[pos:], "no QEMU_VM_EOF after the device sections"
    return MainStream(len(stream), blocks, sections)


@dataclass
class Packet:
    channel: int  # the handshake's channel id
    index: int  # position among the channel's packets
    packet: RamPacket
    data_at: int  # index of the payload in the channel's stream


def parse_multifd_channel(stream: bytearray, size: int) -> tuple[bytes, int, list[Packet]]:
    """Parse a QEMU 9.0+ multifd channel: the handshake, then packets; return uuid, id, packets.

    Decoded and checked by the project's ``multifd_zero.wire`` (``decode_init``,
    ``check_header``, ``decode_packet``): magic, version, flags (NOCOMP, no
    device state), counts, the block name, offsets inside the block, reserved
    fields zero and ``next_packet_size == normal_pages * page``.
    """
    init = decode_init(stream[:HANDSHAKE_SIZE])
    view = memoryview(stream)
    pos = HANDSHAKE_SIZE
    packets = []
    while pos < len(stream):
        check_header(view[pos:])
        packet = decode_packet(
            view[pos : pos + PACKET_LEN], page_count=BATCH, page_size=PAGE, blocks={BLOCK: size}
        )
        packets.append(Packet(init.id, len(packets), packet, pos + PACKET_LEN))
        pos += PACKET_LEN + packet.next_packet_size
    assert pos == len(stream), "a packet or its payload is cut short"
    return init.uuid, init.id, packets


# ---------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def qemu_version() -> str:
    """QEMU 10+'s path, or a skip with the reason (a failure with MULTIFD_ZERO_REQUIRE_QEMU=1)."""
    return require_qemu(MIN_QEMU)


@dataclass
class Image:
    path: Path
    size: int
    kinds: np.ndarray
    zero_mask: np.ndarray
    scan: ScanResult
    sha256: str


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, qemu_version: str) -> Image:
    workdir = tmp_path_factory.mktemp("qemu-peer")
    path = workdir / "guest.img"
    kinds = build_image(path)
    zero_mask = reference_zero_mask(path)
    assert zero_mask.size == IMAGE_PAGES
    # The generator's intent and numpy agree.
    assert np.array_equal(zero_mask, kinds <= 1)
    result = scan_file(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Image(path, path.stat().st_size, kinds, zero_mask, result, digest)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short directory for Unix sockets (their paths are limited to 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="mfz-qemu-", dir="/tmp") as name:
        yield Path(name)


def check_guest(guest: Guest, img: Image) -> None:
    """Exactly one RAM block, the image, page-aligned."""
    assert ram_blocks(guest.qmp) == {BLOCK: img.size}


def test_scan_counts_the_image(image: Image) -> None:
    """The scan itself against numpy, before QEMU is asked."""
    r = image.scan
    assert r.pages == IMAGE_PAGES
    assert r.zero_pages == int(image.zero_mask.sum())
    assert r.bytes_read < r.size  # the holes were skipped
    assert 0.4 < r.zero_ratio < 0.8


def migrate_recorded(
    img: Image, workdir: Path, *, multifd_channels: int = 0
) -> tuple[dict[str, Any], list[bytearray]]:
    """Migrate ``img`` to a Unix socket of this test; return ``query-migrate`` and every stream."""
    sink = Sink(workdir / "migrate.sock")
    try:
        with start_qemu(img.path, workdir) as guest:
            check_guest(guest, img)
            info = migrate(guest, f"unix:{sink.path}", multifd_channels=multifd_channels)
    finally:
        sink.close()  # after QEMU quit: every connection closed and drained
    ram: dict[str, Any] = info["ram"]
    assert ram["total"] == img.size  # every migratable RAM block: only the image
    assert ram["page-size"] == PAGE
    return ram, sink.streams


def ram_transferred_add_sum(ram: dict[str, Any]) -> int:
    """What ``ram_transferred_add`` (``migration/ram.c``) counted: QEMU 7.2's ``transferred``.

    QEMU 10 files each addition under ``precopy_bytes``, ``downtime_bytes`` or
    ``postcopy_bytes`` by run state (the guest is stopped here: downtime).
    """
    return int(ram["precopy-bytes"] + ram["downtime-bytes"] + ram["postcopy-bytes"])


def test_qemu_precopy_counts_and_bytes(image: Image, workdir: Path) -> None:
    """Plain precopy: counts equal scan's; transferred is the main stream's every byte."""
    r = image.scan
    ram, streams = migrate_recorded(image, workdir)
    assert ram["duplicate"] == r.zero_pages
    assert ram["normal"] == r.normal_pages
    assert ram["normal-bytes"] == r.normal_pages * PAGE
    assert ram["multifd-bytes"] == 0
    assert len(streams) == 1
    main = parse_main_stream(streams[0])
    # QEMU 10: query-migrate's ram.transferred is migration_transferred_bytes()
    # (migration/migration-stats.c; populate_ram_info in migration/migration.c):
    # qemu_file_transferred() of the main stream, every byte put on it (header,
    # configuration, section framing, block list, device state, vmdesc), plus
    # multifd_bytes. QEMU 7.2 counted the RAM records only.
    assert ram["transferred"] == main.length + ram["multifd-bytes"]
    assert main.blocks == {BLOCK: image.size}

    # The RAM records on the wire: each page once, zero pages as 9-byte records.
    setup, *rounds = main.sections
    assert setup.kind == QEMU_VM_SECTION_START and not (setup.zero or setup.pages)
    assert rounds and rounds[-1].kind == QEMU_VM_SECTION_END
    assert all(s.kind == QEMU_VM_SECTION_PART for s in rounds[:-1])
    assert all(s.flushes == 0 for s in main.sections)  # no multifd
    zero = [o for s in rounds for o in s.zero]
    pages = [p for s in rounds for p in s.pages]
    zero_offsets = {int(i) * PAGE for i in np.flatnonzero(image.zero_mask)}
    assert len(zero) == len(set(zero)) == r.zero_pages and set(zero) == zero_offsets
    assert len(pages) == len({o for o, _ in pages}) == r.normal_pages
    mapped = np.memmap(image.path, dtype=np.uint8, mode="r").reshape(-1, PAGE)
    wire = np.frombuffer(streams[0], dtype=np.uint8)
    for offset, at in pages:
        assert np.array_equal(wire[at : at + PAGE], mapped[offset // PAGE]), offset
    del mapped, wire
    assert sum(s.names for s in main.sections) == 1  # the block name with the first page only
    record_bytes = sum(s.record_bytes for s in main.sections)
    assert record_bytes == r.wire_bytes["precopy"] + (1 + len(BLOCK))

    # ram_transferred_add: the page records and the EOS of every iteration
    # (save_zero_page, save_normal_page, ram_save_iterate in migration/ram.c),
    # not the setup's or the completion's EOS (ram_save_setup, ram_save_complete).
    # The same figure as QEMU 7.2's transferred: scan's precopy + 4 + 8k, k >= 1.
    k = sum(1 for s in rounds if s.kind == QEMU_VM_SECTION_PART)
    assert k >= 1
    assert ram_transferred_add_sum(ram) == r.wire_bytes["precopy"] + (1 + len(BLOCK)) + 8 * k
    assert k <= 1000, "more iterations than a stopped guest can need"
    assert hashlib.sha256(image.path.read_bytes()).hexdigest() == image.sha256


def test_qemu_multifd_counts_and_stream(image: Image, workdir: Path) -> None:
    """multifd, 2 channels: counts equal scan's; every page, packet and byte accounted for."""
    r = image.scan
    channels = 2
    ram, streams = migrate_recorded(image, workdir, multifd_channels=channels)
    # With zero-page-detection=multifd the sender threads count the pages
    # (multifd_send_zero_page_detect in migration/multifd-zero-page.c).
    assert ram["duplicate"] == r.zero_pages
    assert ram["normal"] == r.normal_pages

    # The main channel connects first; the multifd channels follow in any order.
    assert len(streams) == 1 + channels
    assert struct.unpack_from(">I", streams[0], 0)[0] == QEMU_VM_FILE_MAGIC
    channel_streams = streams[1:]
    assert all(struct.unpack_from(">I", s, 0)[0] == MULTIFD_MAGIC for s in channel_streams)
    parsed = [parse_multifd_channel(s, image.size) for s in channel_streams]
    assert sorted(ch for _, ch, _ in parsed) == list(range(channels))
    assert len({uuid for uuid, _, _ in parsed}) == 1  # one migration
    by_channel = {
        ch: (stream, packets)
        for stream, (_, ch, packets) in zip(channel_streams, parsed, strict=True)
    }

    # Every byte the channels carried is in multifd-bytes, the handshakes too
    # (QEMU 10 adds the MultiFDInit_t to mig_stats.multifd_bytes).
    all_packets = [p for _, packets in by_channel.values() for p in packets]
    assert ram["multifd-bytes"] == sum(len(s) for s in channel_streams)
    assert ram["multifd-bytes"] == HANDSHAKE_SIZE * channels + sum(
        PACKET_LEN + p.packet.next_packet_size for p in all_packets
    )

    # The main stream: no page records (zero pages travel as offsets in the
    # packets), one MULTIFD_FLUSH in the setup section and one per round
    # (multifd_ram_flush_and_sync in migration/multifd-nocomp.c, called from
    # ram_save_setup and find_dirty_block in migration/ram.c).
    main = parse_main_stream(streams[0])
    assert main.blocks == {BLOCK: image.size}
    assert ram["transferred"] == main.length + ram["multifd-bytes"]
    assert all(not (s.zero or s.pages) for s in main.sections)
    assert main.sections[0].kind == QEMU_VM_SECTION_START and main.sections[0].flushes == 1
    flushes = sum(s.flushes for s in main.sections)
    # One more at the end of every round (find_dirty_block wrapping around the
    # block list). Not one per dirty sync: a sync that finds nothing dirty
    # starts no round, so QEMU 10 sends 2 flushes with dirty-sync-count 2 or 3.
    assert 2 <= flushes <= 1 + ram["dirty-sync-count"]
    parts = sum(1 for s in main.sections if s.kind == QEMU_VM_SECTION_PART)
    assert ram_transferred_add_sum(ram) == 8 * parts  # ram_save_iterate's EOS markers

    # Each flush is preceded on every channel by one SYNC packet, which carries no page.
    mapped = np.memmap(image.path, dtype=np.uint8, mode="r").reshape(-1, PAGE)
    zero_offsets = {int(i) * PAGE for i in np.flatnonzero(image.zero_mask)}
    arrived: Counter[int] = Counter()
    normal_total = zero_total = 0
    batches: list[RamPacket] = []
    for stream, packets in by_channel.values():
        syncs = [p.index for p in packets if p.packet.sync]
        assert len(syncs) == flushes
        assert all(p.packet.flags in (0, MULTIFD_FLAG_SYNC) for p in packets)
        assert all(
            not (p.packet.normal_pages or p.packet.zero_pages) for p in packets if p.packet.sync
        )
        # Round 1 lies between the setup SYNC and the next one: every page is
        # sent there, and nothing after it (the guest is stopped).
        data = [p for p in packets if p.packet.normal_pages + p.packet.zero_pages]
        assert all(syncs[0] < p.index < syncs[1] for p in data)
        wire = np.frombuffer(stream, dtype=np.uint8)
        for p in data:
            pkt = p.packet
            assert pkt.pages_alloc == BATCH and pkt.ramblock == BLOCK
            payload = wire[p.data_at : p.data_at + pkt.next_packet_size].reshape(-1, PAGE)
            normal = pkt.normal.astype(np.int64) // PAGE
            assert np.array_equal(payload, mapped[normal]), f"packet {pkt.packet_num}: data differ"
            assert zero_offsets.issuperset(int(o) for o in pkt.zero)
            assert not zero_offsets.intersection(int(o) for o in pkt.normal)
            arrived.update(int(o) for o in pkt.offsets)
            normal_total += pkt.normal_pages
            zero_total += pkt.zero_pages
            batches.append(pkt)
    assert len({p.packet.packet_num for p in all_packets}) == len(all_packets)

    # Every page of guest RAM exactly once, as a normal or a zero page.
    assert arrived == Counter(range(0, image.size, PAGE))
    assert (normal_total, zero_total) == (ram["normal"], ram["duplicate"])
    # QEMU queues the dirty pages in address order, 128 to a batch
    # (multifd_queue_page): the batches are the block's consecutive 128-page runs.
    batches.sort(key=lambda pkt: int(pkt.offsets.min()))
    assert len(batches) == math.ceil(IMAGE_PAGES / BATCH)
    for i, pkt in enumerate(batches):
        queued = np.arange(i * BATCH, min((i + 1) * BATCH, IMAGE_PAGES), dtype=np.uint64) * PAGE
        assert np.array_equal(np.sort(pkt.offsets), queued)
        # The sender thread's two-pointer pass (multifd_send_zero_page_detect):
        # the packet's order is partition_zero_pages' on the queued order.
        expected = queued.copy()
        assert multifd_zero.partition_zero_pages(mapped, expected, PAGE) == pkt.normal_pages
        assert np.array_equal(pkt.offsets, expected), f"batch {i}: not QEMU's order"
    del mapped

    # So multifd-bytes is scan's "multifd" figure plus the handshakes and one
    # packet without pages per channel per sync.
    assert ram["multifd-bytes"] == (
        r.wire_bytes["multifd"] + HANDSHAKE_SIZE * channels + PACKET_LEN * channels * flushes
    )


def test_partial_last_page_is_padded_like_qemu(image: Image, workdir: Path) -> None:
    """QEMU refuses a backing file that ends mid-page; scan counts it as QEMU counts it padded."""
    cut = workdir / "cut.img"
    size = image.size - (PAGE - 1000)  # the last page keeps its 1000 bytes of data
    with open(image.path, "rb") as src, open(cut, "wb") as dst:
        shutil.copyfileobj(src, dst, 16 << 20)
        dst.truncate(size)
    r = scan_file(cut)
    assert r.partial_page_bytes == 1000
    assert (r.pages, r.zero_pages) == (image.scan.pages, image.scan.zero_pages)
    assert r.wire_bytes == image.scan.wire_bytes

    with start_qemu(image.path, workdir) as guest:  # the whole-page image is accepted
        check_guest(guest, image)
    qmp_path = workdir / "refused.sock"
    proc = subprocess.run(
        qemu_command(cut, size, qmp_path),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    rounded = math.ceil(size / PAGE) * PAGE
    # QEMU 7.2: "backing store size X does not match 'size' option Y"; QEMU 10
    # (backends/hostmem-file.c, file_backend_memory_alloc -> qemu_ram_alloc_from_fd
    # in system/physmem.c): "backing store size X is too small for 'size' option Y
    # plus 'offset' option Z".
    match = re.search(
        r"backing store size (0x[0-9a-f]+) (?:does not match|is too small for) "
        r"'size' option (0x[0-9a-f]+)",
        proc.stderr,
    )
    assert match, proc.stderr
    assert (int(match[1], 16), int(match[2], 16)) == (size, rounded)


def test_image_untouched(image: Image) -> None:
    with open(image.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        assert hashlib.sha256(mm).hexdigest() == image.sha256
