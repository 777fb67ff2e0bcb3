"""A real peer: QEMU migrates a RAM image, and ``scan`` must count its pages the same.

The test builds a deterministic guest RAM image (128 MiB of 4 KiB pages: zero
pages, some of them holes, and pages with one non-zero byte at the start, the
end, the middle or anywhere, or random data), starts Debian's
``qemu-system-x86_64`` (QEMU 7.2, package qemu-system-x86) on it::

    qemu-system-x86_64 -machine none -nodefaults -no-user-config -display none -S
        -object memory-backend-file,id=mem,size=SIZE,mem-path=IMAGE,share=on,readonly=on
        -machine memory-backend=mem -qmp unix:SOCKET,server=on,wait=off

and migrates it twice, each time from a fresh QEMU, through a small QMP client:

1. plain precopy to ``exec:cat > /dev/null``;
2. multifd with 2 channels to a Unix socket served by this test, which keeps
   what every channel sends and parses the multifd packets.

What QEMU 7.2 does (read in its ``migration/ram.c`` and ``multifd.c``):
zero-page detection runs on the main migration thread for every page
(``save_zero_page``: ``duplicate += 1`` and a 9-byte record on the main
stream); the other pages are ``normal``: sent on the main stream with an 8-byte
header, or queued to multifd (``normal += 1`` per queued page). With
``-machine none`` the memory backend is the only RAM block (no firmware, ROM or
video RAM blocks; ``-machine pc`` would add five: pc.bios, pc.rom and three
ACPI ``/rom@etc/...`` blocks, 130 pages), which the test checks with
``info ramblock`` and ``query-migrate``'s ``ram.total``. So ``duplicate`` and
``normal`` must equal ``scan``'s zero and normal pages **exactly**, and they do.

Bytes, exactly, from the same sources:

- precopy: ``transferred = 9 * zero + (8 + 4096) * normal + (1 + len("mem"))
  + 8 * k``: the block name goes with the first page header only, and every
  ``ram_save_iterate`` call ends with an 8-byte EOS counted in ``transferred``
  (k >= 1, timing-dependent). That is ``scan``'s ``precopy`` figure + 4 + 8k.
- multifd (QEMU 7.2 = ``legacy`` detection with multifd): the main stream
  carries ``9 * zero + 4 + 8 * k`` RAM bytes; ``multifd-bytes`` is the sum over
  the packets on the channels of ``1344 + 4096 * normal_pages`` (checked against
  the bytes received). Two QEMU 7.2 quirks make the packet count differ from
  ``scan``'s ``ceil(normal / 128)``: a SYNC packet per channel at setup, after
  each iteration and at completion; and a race in ``multifd_queue_page`` (fixed
  in later QEMU) that, when a channel finishes a full batch before the main
  thread looks at it again, queues the batch's last page once more as the first
  page of the next batch. Such a page goes on the wire twice but is counted once
  in ``normal``. The test identifies every resent page by that pattern and
  accounts for every byte.

A trailing partial page: QEMU rounds a RAM block up to whole pages and refuses
a backing file shorter than that; the test checks the refusal and that
``scan`` of the image cut 3096 bytes short (its last page partial) counts
what QEMU counts for the full image, whose last page is those bytes padded
with zeros.

With ``MULTIFD_ZERO_REQUIRE_QEMU=1`` (CI) a missing or broken QEMU fails the
test; otherwise it is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
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

from multifd_zero.tools.scan import ScanResult, scan_file

QEMU = "qemu-system-x86_64"
REQUIRE = os.environ.get("MULTIFD_ZERO_REQUIRE_QEMU") == "1"
PAGE = 4096
IMAGE_PAGES = 32768  # 128 MiB
BLOCK = "mem"  # the memory backend's id is the RAM block's idstr
SEED = 20240311

# QEMU 7.2's multifd packet (migration/multifd.h): 12 big-endian u32/u64 fields
# and reserved words in 64 bytes, the 256-byte block name, 128 offsets.
MULTIFD_MAGIC = 0x11223344
PACKET_LEN = 320 + 8 * 128
INIT_LEN = 64
FLAG_SYNC = 1
QEMU_VM_FILE_MAGIC = 0x5145564D  # "QEVM": the main migration stream


def unavailable(reason: str) -> NoReturn:
    """Skip, or fail when the environment requires QEMU."""
    if REQUIRE:
        pytest.fail(f"MULTIFD_ZERO_REQUIRE_QEMU=1 but {reason}")
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
    """``info ramblock``: block name -> used length."""
    blocks = {}
    for line in qmp.hmp("info ramblock").splitlines()[1:]:
        fields = line.split()
        if fields:
            # Block Name, PSize ("4 KiB"), Offset, Used, Total
            blocks[fields[0]] = int(fields[-2], 16)
    return blocks


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


@dataclass
class Packet:
    channel: int
    flags: int
    pages_alloc: int
    normal_pages: int
    next_packet_size: int
    packet_num: int
    block: str
    offsets: list[int]
    data_at: int  # index of the payload in the channel's stream


def parse_multifd_channel(channel: int, stream: bytearray) -> list[Packet]:
    """Parse a QEMU 7.2 multifd channel: the 64-byte handshake, then packets."""
    magic, version = struct.unpack_from(">II", stream, 0)
    assert (magic, version) == (MULTIFD_MAGIC, 1)
    pos = INIT_LEN
    packets = []
    while pos < len(stream):
        assert len(stream) - pos >= PACKET_LEN, "truncated packet"
        magic, version, flags, alloc, normal, next_size, num = struct.unpack_from(
            ">IIIIIIQ", stream, pos
        )
        assert (magic, version, alloc) == (MULTIFD_MAGIC, 1, 128)
        name = bytes(stream[pos + 64 : pos + 320]).split(b"\0", 1)[0].decode()
        offsets = list(struct.unpack_from(f">{normal}Q", stream, pos + 320))
        # The payload is normal_pages pages. QEMU 7.2 leaves next_packet_size at its
        # previous value in a SYNC packet without pages, but sends no data after it.
        packets.append(
            Packet(channel, flags, alloc, normal, next_size, num, name, offsets, pos + PACKET_LEN)
        )
        pos += PACKET_LEN + normal * PAGE
    assert pos == len(stream), "trailing bytes after the last packet"
    return packets


# ---------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def qemu_version() -> str:
    path = shutil.which(QEMU)
    if path is None:
        unavailable(
            f"{QEMU} is not installed (Debian: apt-get install qemu-system-x86, "
            "or run .ci/install-qemu.sh)"
        )
    proc = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        unavailable(f"{QEMU} --version failed: {proc.stderr.strip()}")
    return proc.stdout.splitlines()[0]


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


def test_qemu_precopy_counts_and_bytes(image: Image, workdir: Path) -> None:
    """Plain precopy: duplicate/normal equal scan's counts; transferred is precopy + 4 + 8k."""
    r = image.scan
    with start_qemu(image.path, workdir) as guest:
        check_guest(guest, image)
        info = migrate(guest, "exec:cat > /dev/null")
    ram = info["ram"]
    assert ram["total"] == image.size  # every migratable RAM block: only the image
    assert ram["page-size"] == PAGE
    assert ram["duplicate"] == r.zero_pages
    assert ram["normal"] == r.normal_pages
    assert ram["normal-bytes"] == r.normal_pages * PAGE
    assert ram["multifd-bytes"] == 0
    extra = ram["transferred"] - r.wire_bytes["precopy"] - (1 + len(BLOCK))
    assert extra >= 8 and extra % 8 == 0, (ram, r.wire_bytes)  # k >= 1 EOS markers
    assert extra <= 8 * 1000, "more iterations than a stopped guest can need"
    assert hashlib.sha256(image.path.read_bytes()).hexdigest() == image.sha256


def test_qemu_multifd_counts_and_stream(image: Image, workdir: Path) -> None:
    """multifd, 2 channels: counts equal scan's; every byte on the channels accounted for."""
    r = image.scan
    channels = 2
    sink = Sink(workdir / "migrate.sock")
    try:
        with start_qemu(image.path, workdir) as guest:
            check_guest(guest, image)
            info = migrate(guest, f"unix:{sink.path}", multifd_channels=channels)
    finally:
        sink.close()
    ram = info["ram"]
    assert ram["total"] == image.size
    assert ram["duplicate"] == r.zero_pages
    assert ram["normal"] == r.normal_pages

    mains = [s for s in sink.streams if struct.unpack_from(">I", s, 0)[0] == QEMU_VM_FILE_MAGIC]
    multifd = [s for s in sink.streams if struct.unpack_from(">I", s, 0)[0] == MULTIFD_MAGIC]
    assert len(mains) == 1 and len(multifd) == channels, [bytes(s[:8]) for s in sink.streams]
    packets = [p for i, s in enumerate(multifd) for p in parse_multifd_channel(i, s)]
    packets.sort(key=lambda p: (p.packet_num, -p.normal_pages))

    # Every byte the channels carried is in multifd-bytes (plus the handshakes).
    assert ram["multifd-bytes"] == sum(PACKET_LEN + p.normal_pages * PAGE for p in packets)
    assert sum(len(s) for s in multifd) == ram["multifd-bytes"] + INIT_LEN * channels

    # One SYNC job per channel at setup, after each iteration and at completion.
    # QEMU 7.2 races here too: multifd_send_sync_main can overwrite the number and
    # flags of a data packet still waiting for its channel, so that packet goes out
    # with the SYNC flag and the sync's number, and the empty packet after it with
    # neither. The numbers are then not all distinct, but the flags and the empty
    # packets still add up.
    data = [p for p in packets if p.normal_pages]
    empty = [p for p in packets if not p.normal_pages]
    assert all(p.flags in (0, FLAG_SYNC) for p in packets)
    assert sum(1 for p in packets if p.flags & FLAG_SYNC) == len(empty)
    assert len(empty) % channels == 0 and len(empty) >= 2 * channels
    assert all(p.block == BLOCK for p in data)

    # Pages on the wire: the image's normal pages, each with its data, some twice.
    mapped = np.memmap(image.path, dtype=np.uint8, mode="r").reshape(-1, PAGE)
    streams = {i: s for i, s in enumerate(multifd)}
    sent: Counter[int] = Counter()
    for p in data:
        payload = np.frombuffer(
            streams[p.channel], dtype=np.uint8, count=p.normal_pages * PAGE, offset=p.data_at
        ).reshape(-1, PAGE)
        pages = np.array(p.offsets, dtype=np.int64) // PAGE
        assert all(o % PAGE == 0 for o in p.offsets)
        assert np.array_equal(payload, mapped[pages]), f"packet {p.packet_num}: data differ"
        sent.update(p.offsets)
    del mapped
    normal_offsets = {int(i) * PAGE for i in np.flatnonzero(~image.zero_mask)}
    assert set(sent) == normal_offsets  # no zero page on the channels, no normal page missing

    # The QEMU 7.2 requeue race: a resent page is the last page of a full batch and
    # the first page of the batch queued right after it.
    resent = {o: c for o, c in sent.items() if c > 1}
    assert all(c == 2 for c in resent.values())
    for earlier, later in itertools.pairwise(data):
        if earlier.offsets[-1] == later.offsets[0]:
            assert earlier.normal_pages == 128
            assert resent.pop(earlier.offsets[-1]) == 2
    assert resent == {}, "a page was sent twice outside the requeue pattern"
    on_wire = sum(sent.values())
    assert on_wire - r.normal_pages == sum(c - 1 for c in sent.values() if c > 1)
    assert len(data) >= math.ceil(on_wire / 128)

    # The main stream: 9 bytes per zero page, the block name once, k EOS markers.
    main_ram = ram["transferred"] - ram["multifd-bytes"]
    extra = main_ram - 9 * r.zero_pages - (1 + len(BLOCK))
    assert extra >= 8 and extra % 8 == 0, ram
    # So QEMU's total is scan's "legacy" figure plus exactly these overheads.
    assert ram["transferred"] == (
        r.wire_bytes["legacy"]
        + PACKET_LEN * (len(data) - math.ceil(r.normal_pages / 128))
        + PACKET_LEN * len(empty)
        + PAGE * (on_wire - r.normal_pages)
        + (1 + len(BLOCK))
        + extra
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
    match = re.search(
        r"backing store size (0x[0-9a-f]+) does not match 'size' option (0x[0-9a-f]+)", proc.stderr
    )
    assert match, proc.stderr
    assert (int(match[1], 16), int(match[2], 16)) == (size, rounded)


def test_image_untouched(image: Image) -> None:
    with open(image.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        assert hashlib.sha256(mm).hexdigest() == image.sha256
