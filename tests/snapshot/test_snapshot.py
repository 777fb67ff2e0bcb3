"""``multifd_zero.snapshot`` without QEMU: our source to our destination, hand-made hostile
peers, the manifest, block file names, URIs."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from multifd_zero.errors import SnapshotError, StreamTruncatedError, StreamVersionError, UriError
from multifd_zero.snapshot import (
    FORMAT,
    BlockInfo,
    Manifest,
    SaveResult,
    SnapshotSaver,
    block_file_name,
    load_manifest,
    parse_uri,
    restore,
)
from multifd_zero.snapshot.manifest import manifest_dict
from multifd_zero.wire import (
    MULTIFD_FLAG_SYNC,
    HandshakeError,
    OffsetError,
    RamPacket,
    encode_init,
    encode_packet,
)
from multifd_zero.wire.savevm import MIG_CMD_SWITCHOVER_START, StreamWriter

PAGE = 4096
SID = 3


def device_tail() -> bytes:
    w = StreamWriter()
    desc = json.dumps({"page_size": PAGE, "devices": [{"name": "timer"}]}).encode()
    body = w.section_start(0, "timer", 0, 2, kind=4) + bytes(24) + w.footer(0)
    return body + w.eof() + w.vmdescription(desc)


def guest_blocks(seed: int = 3) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(seed)
    out = []
    for name, pages in (("pc.ram", 700), ("/rom@etc/acpi/tables", 5), ("pc.bios", 3)):
        data = rng.integers(0, 256, (pages, PAGE), dtype=np.uint8)
        data[rng.random(pages) < 0.5] = 0
        data[200:450] = 0 if pages > 450 else data[200:450]  # a long hole
        out.append((name, data.tobytes()))
    return out


def make_snapshot(root: Path, blocks: list[tuple[str, bytes]]) -> Manifest:
    root.mkdir(parents=True)
    infos = []
    for i, (name, data) in enumerate(blocks):
        file = block_file_name(i, name)
        pages = np.frombuffer(data, np.uint8).reshape(-1, PAGE)
        with open(root / file, "wb") as f:
            for p in np.flatnonzero(pages.any(axis=1)).tolist():
                f.seek(p * PAGE)
                f.write(pages[p].tobytes())
            f.truncate(len(data))
        infos.append(BlockInfo(name, len(data), file, int(pages.any(axis=1).sum())))
    tail = device_tail()
    (root / "device-state.bin").write_bytes(tail)
    import hashlib

    manifest = Manifest(
        format=FORMAT,
        version=1,
        machine_type="pc-i440fx-10.0",
        configuration=StreamWriter.configuration("pc-i440fx-10.0"),
        page_size=PAGE,
        blocks=tuple(infos),
        ram_section_id=SID,
        ram_instance_id=0,
        ram_version_id=4,
        device_state_file="device-state.bin",
        device_state_length=len(tail),
        device_state_sha256=hashlib.sha256(tail).hexdigest(),
        commands=("SWITCHOVER_START",),
        normal=0,
        duplicate=0,
        channels=2,
        uuid=bytes(16),
        complete=True,
    )
    (root / "manifest.json").write_text(json.dumps(manifest_dict(manifest)))
    return manifest


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


@pytest.mark.parametrize("channels", [0, 1, 3])
@pytest.mark.parametrize("mode", ["multifd", "legacy", "none"])
def test_restore_then_save_round_trip(tmp_path: Path, channels: int, mode: str) -> None:
    blocks = guest_blocks()
    make_snapshot(tmp_path / "a", blocks)
    with SnapshotSaver(tmp_path / "b", f"unix:{tmp_path}/s.sock", channels, timeout=20) as saver:
        thread, box = in_thread(saver.wait)
        sent = restore(tmp_path / "a", saver.uri, channels, zero_page_detection=mode, timeout=20)
        thread.join(30)
    got = box[0]
    assert isinstance(got, SaveResult), got
    manifest = load_manifest(tmp_path / "b")
    for (name, data), info in zip(blocks, manifest.blocks, strict=True):
        assert info.idstr == name
        assert (tmp_path / "b" / info.file).read_bytes() == data
    assert (tmp_path / "b" / "device-state.bin").read_bytes() == device_tail()
    assert manifest.ram_section_id == SID
    pages = sum(len(d) for _, d in blocks) // PAGE
    nonzero = sum(
        int(np.frombuffer(d, np.uint8).reshape(-1, PAGE).any(axis=1).sum()) for _, d in blocks
    )
    # What one side sent, the other counted.
    assert (got.normal, got.duplicate) == (sent.normal, sent.duplicate)
    assert sent.normal + sent.duplicate == pages
    assert sent.normal == (pages if mode == "none" else nonzero)
    assert got.transferred == sent.transferred
    assert sent.hole_pages >= 250


def test_zero_batches_in_holes_are_announced_like_qemu(tmp_path: Path) -> None:
    """A batch in a hole goes out as the zero offsets partition_zero_pages would give."""
    from multifd_zero import (
        MigrationOptions,
        MigrationStats,
        MultiFDPages,
        RAMBlock,
        send_zero_page_detect,
    )

    blocks = [("pc.ram", bytes(256 * PAGE))]
    make_snapshot(tmp_path / "a", blocks)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "r.sock"))
    server.listen(4)
    got: dict[int, bytes] = {}

    def accept() -> None:
        for i in range(2):
            conn, _ = server.accept()
            data = b""
            while chunk := conn.recv(1 << 16):
                data += chunk
            conn.close()
            got[i] = data

    thread, _ = in_thread(accept)
    try:
        restore(tmp_path / "a", f"unix:{tmp_path}/r.sock", 1, timeout=10)
        thread.join(10)
    finally:
        server.close()
    multifd = got[0] if got[0][:4] != b"QEVM" else got[1]
    block = RAMBlock("pc.ram", bytes(128 * PAGE))
    pages = MultiFDPages(block, np.arange(128, dtype=np.uint64) * np.uint64(PAGE))
    send_zero_page_detect(pages, options=MigrationOptions(), stats=MigrationStats())
    # handshake, setup SYNC packet (1344 bytes, RAM fields zero as QEMU sends it), data
    sync = multifd[64 : 64 + 1344]
    assert sync[:24] == bytes.fromhex("112233440000000100000001") + bytes(12)
    assert sync[32:] == bytes(1344 - 32)
    first = multifd[64 + 1344 : 64 + 2 * 1344]
    slots = np.frombuffer(first, dtype=">u8", count=128, offset=320)
    assert slots.tolist() == pages.zero.tolist() and first[16:20] == bytes(4)


# ---------------------------------------------------------------- hand-made sources


class FakeSource:
    """Connects like a QEMU source; each channel's bytes are sent by the test."""

    def __init__(self, uri: str, channels: int, uuid: bytes = bytes(16)) -> None:
        path = parse_uri(uri)[1]
        self.main = socket.socket(socket.AF_UNIX)
        self.main.connect(path)
        self.channels = []
        for i in range(channels):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(path)
            sock.sendall(encode_init(uuid, i))
            self.channels.append(sock)

    def close(self) -> None:
        for sock in [self.main, *self.channels]:
            sock.close()


BLOCKS = [("pc.ram", 16 * PAGE)]


def setup_section(w: StreamWriter, flush: bool = True) -> bytes:
    out = w.header() + w.configuration("pc-i440fx-10.0") + w.section_start(SID)
    out += w.mem_size(BLOCKS) + (w.multifd_flush() if flush else b"")
    return out + w.eos() + w.footer(SID)


def ending(w: StreamWriter, flush: bool = True) -> bytes:
    out = w.command(MIG_CMD_SWITCHOVER_START) + w.section_part(SID, end=True)
    return out + (w.multifd_flush() if flush else b"") + w.eos() + w.footer(SID) + device_tail()


def sync_packet(num: int) -> bytes:
    return encode_packet(RamPacket(flags=MULTIFD_FLAG_SYNC, pages_alloc=0, packet_num=num), 128)


def page_packet(num: int, normal: list[int], zero: list[int], data: bytes) -> bytes:
    pkt = RamPacket(
        pages_alloc=128,
        normal_pages=len(normal),
        zero_pages=len(zero),
        next_packet_size=len(normal) * PAGE,
        packet_num=num,
        ramblock="pc.ram",
        offsets=np.array(normal + zero, dtype=np.uint64),
    )
    return encode_packet(pkt, 128, data)


def saved_ram(root: Path) -> bytes:
    manifest = load_manifest(root)
    return (root / manifest.blocks[0].file).read_bytes()


def test_dirty_round_main_zero_then_multifd_page(tmp_path: Path) -> None:
    """Round 1 names page 5 zero on the main channel; round 2 sends its data over multifd.

    The channel sends round 2 at once; it must not be applied before the main
    channel's round-1 records (the flush orders them), or the ZERO record would
    wipe the newer data.
    """
    w = StreamWriter()
    data = b"\x5a" * PAGE
    with SnapshotSaver(tmp_path / "s", f"unix:{tmp_path}/s.sock", 1, timeout=10) as saver:
        thread, box = in_thread(saver.wait)
        src = FakeSource(saver.uri, 1)
        src.channels[0].sendall(
            sync_packet(0) + sync_packet(1) + page_packet(2, [5 * PAGE], [], data) + sync_packet(3)
        )
        src.main.sendall(setup_section(w))
        time.sleep(0.3)  # round 2 is waiting in the channel by now
        src.main.sendall(
            w.section_part(SID)
            + w.pages("pc.ram", [5 * PAGE], b"\x01" * PAGE)
            + w.zero_pages("pc.ram", [5 * PAGE])
            + w.multifd_flush()
            + w.eos()
            + w.footer(SID)
            + ending(w)
        )
        src.close()
        thread.join(20)
    assert isinstance(box[0], SaveResult), box[0]
    ram = saved_ram(tmp_path / "s")
    assert ram[5 * PAGE : 6 * PAGE] == data
    assert box[0].normal == 2 and box[0].duplicate == 1


def test_dirty_round_multifd_page_then_multifd_zero(tmp_path: Path) -> None:
    """Round 1: page 7 with data on channel 0 (late); round 2: page 7 zero on channel 1.

    Channel 1 must wait at its SYNC until the main channel's flush, which waits
    for channel 0's SYNC, which follows the data: the page ends up zero.
    """
    w = StreamWriter()
    with SnapshotSaver(tmp_path / "s", f"unix:{tmp_path}/s.sock", 2, timeout=10) as saver:
        thread, box = in_thread(saver.wait)
        src = FakeSource(saver.uri, 2)
        src.channels[1].sendall(
            sync_packet(1) + sync_packet(3) + page_packet(5, [], [7 * PAGE], b"") + sync_packet(7)
        )
        src.main.sendall(
            setup_section(w)
            + w.section_part(SID)
            + w.multifd_flush()
            + w.eos()
            + w.footer(SID)
            + ending(w)
        )
        time.sleep(0.3)
        src.channels[0].sendall(
            sync_packet(0)
            + page_packet(2, [7 * PAGE], [], b"\x33" * PAGE)
            + sync_packet(4)
            + sync_packet(6)
        )
        src.close()
        thread.join(20)
    assert isinstance(box[0], SaveResult), box[0]
    assert saved_ram(tmp_path / "s")[7 * PAGE : 8 * PAGE] == bytes(PAGE)
    assert (box[0].normal, box[0].duplicate) == (1, 1)


def run_hostile(tmp_path: Path, channels: int, send: Callable[[FakeSource], None]) -> Any:
    target = tmp_path / "s"
    with SnapshotSaver(target, f"unix:{tmp_path}/s.sock", channels, timeout=5) as saver:
        thread, box = in_thread(saver.wait)
        src = FakeSource(saver.uri, channels)
        try:
            send(src)
            thread.join(20)
        finally:
            src.close()
    # Nothing was written: no manifest, no image.
    assert not (target / "manifest.json").exists()
    assert not target.exists() or not list(target.iterdir())
    return box[0]


def test_bad_stream_version(tmp_path: Path) -> None:
    err = run_hostile(tmp_path, 0, lambda s: s.main.sendall(b"QEVM\x00\x00\x00\x09"))
    assert isinstance(err, StreamVersionError) and err.offset == 4


def test_truncated_stream(tmp_path: Path) -> None:
    w = StreamWriter()
    data = setup_section(w, flush=False) + w.section_part(SID) + w.zero_pages("pc.ram", [0])

    def send(src: FakeSource) -> None:
        src.main.sendall(data[:-3])
        src.main.shutdown(socket.SHUT_WR)

    err = run_hostile(tmp_path, 0, send)
    assert isinstance(err, StreamTruncatedError)


def test_multifd_offset_past_block(tmp_path: Path) -> None:
    w = StreamWriter()

    def send(src: FakeSource) -> None:
        src.channels[0].sendall(sync_packet(0) + page_packet(1, [], [16 * PAGE], b""))
        src.main.sendall(setup_section(w))

    err = run_hostile(tmp_path, 1, send)
    assert isinstance(err, OffsetError)


def test_multifd_channel_when_multifd_is_off(tmp_path: Path) -> None:
    target = tmp_path / "s"
    with SnapshotSaver(target, f"unix:{tmp_path}/s.sock", 0, timeout=5) as saver:
        thread, box = in_thread(saver.wait)
        src = FakeSource(saver.uri, 1)
        src.main.sendall(setup_section(StreamWriter(), flush=False))
        thread.join(20)
        src.close()
    assert isinstance(box[0], HandshakeError) and "multifd is off" in str(box[0])
    assert not (target / "manifest.json").exists()


def test_channel_id_out_of_range(tmp_path: Path) -> None:
    target = tmp_path / "s"
    with SnapshotSaver(target, f"unix:{tmp_path}/s.sock", 2, timeout=5) as saver:
        thread, box = in_thread(saver.wait)
        main = socket.socket(socket.AF_UNIX)
        main.connect(str(tmp_path / "s.sock"))
        main.sendall(setup_section(StreamWriter()))
        bad = socket.socket(socket.AF_UNIX)
        bad.connect(str(tmp_path / "s.sock"))
        bad.sendall(encode_init(bytes(16), 2))
        thread.join(20)
        main.close()
        bad.close()
    assert isinstance(box[0], HandshakeError)


def test_existing_snapshot_is_not_overwritten(tmp_path: Path) -> None:
    make_snapshot(tmp_path / "a", guest_blocks())
    with pytest.raises(SnapshotError, match="already holds"):
        SnapshotSaver(tmp_path / "a")


# ---------------------------------------------------------------- manifest, names, URIs


def tamper(root: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    path = root / "manifest.json"
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.update(complete=False), "not complete"),
        (lambda m: m.update(format="other"), "format"),
        (lambda m: m["blocks"][0].update(file="../x.img"), "unsafe file name"),
        (lambda m: m["blocks"][0].update(length=4096), "holds"),
        (lambda m: m["blocks"][1].update(file=m["blocks"][0]["file"]), "used twice"),
        (lambda m: m["device_state"].update(sha256="0" * 64), "checksum"),
        (lambda m: m.update(page_size=8192), "page size"),
        (lambda m: m.pop("normal"), "'normal' is missing"),
    ],
)
def test_manifest_validation(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None], match: str
) -> None:
    make_snapshot(tmp_path / "a", guest_blocks())
    load_manifest(tmp_path / "a")
    tamper(tmp_path / "a", edit)
    with pytest.raises(SnapshotError, match=match):
        load_manifest(tmp_path / "a")


def test_no_manifest_means_no_snapshot(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="unfinished save"):
        load_manifest(tmp_path)


def test_block_file_names_are_safe_and_unique() -> None:
    names = ["/rom@etc/acpi/tables", "_rom_etc_acpi_tables", "..", "a/../../b", "pc.ram"]
    files = [block_file_name(i, n) for i, n in enumerate(names)]
    assert len(set(files)) == len(files)
    assert all("/" not in f and not f.startswith(".") for f in files)


def test_parse_uri() -> None:
    assert parse_uri("tcp:127.0.0.1:4444") == ("tcp", ("127.0.0.1", 4444))
    assert parse_uri("tcp::5") == ("tcp", ("127.0.0.1", 5))
    assert parse_uri("tcp:[::1]:7") == ("tcp", ("::1", 7))
    assert parse_uri("unix:/tmp/x") == ("unix", "/tmp/x")
    for bad in ("exec:cat", "tcp:host", "tcp:h:99999", "unix:", "file:/x", "tcp:h:x"):
        with pytest.raises(UriError):
            parse_uri(bad)


def test_saver_reports_the_bound_port() -> None:
    with SnapshotSaver("/nonexistent-not-created", "tcp:127.0.0.1:0", 1) as saver:
        kind, (host, port) = parse_uri(saver.uri)
        assert kind == "tcp" and host == "127.0.0.1" and port > 0
        probe = socket.create_connection((host, port))
        probe.close()


def test_device_state_packet_on_a_multifd_channel(tmp_path: Path) -> None:
    from multifd_zero.wire import MULTIFD_FLAG_DEVICE_STATE, FlagsError

    w = StreamWriter()

    def send(src: FakeSource) -> None:
        raw = bytearray(sync_packet(0))
        raw[8:12] = MULTIFD_FLAG_DEVICE_STATE.to_bytes(4, "big")
        src.channels[0].sendall(bytes(raw))
        src.main.sendall(setup_section(w))

    err = run_hostile(tmp_path, 1, send)
    assert isinstance(err, FlagsError) and "device-state" in str(err)


def test_second_migration_uuid_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "s"
    with SnapshotSaver(target, f"unix:{tmp_path}/s.sock", 2, timeout=5) as saver:
        thread, box = in_thread(saver.wait)
        main = socket.socket(socket.AF_UNIX)
        main.connect(str(tmp_path / "s.sock"))
        main.sendall(setup_section(StreamWriter()))
        chans = []
        for i, uuid in enumerate((bytes(16), b"\x01" * 16)):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(tmp_path / "s.sock"))
            sock.sendall(encode_init(uuid, i))
            chans.append(sock)
        thread.join(20)
        for sock in [main, *chans]:
            sock.close()
    assert isinstance(box[0], HandshakeError) and "belongs to migration" in str(box[0])
    assert not (target / "manifest.json").exists()
