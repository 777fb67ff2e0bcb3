#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris / libFuzzer) of multifd_zero's wire decoders.

Targets, chosen by the first byte of each input:

- ``wire.decode_packet``: a multifd RAM packet (320-byte header and name,
  then ``page_count`` offset slots), for one of a few receiver set-ups
  (page_count, page_size, known blocks) chosen by the second byte;
- ``wire.check_header``: the 12-byte packet header;
- ``wire.decode_init``: the 64-byte channel handshake, with or without a
  uuid and channel count to check against;
- ``savevm.StreamReader``: QEMU 10's main stream (file header,
  configuration, sections with their headers and footers, MEM_SIZE, zero and
  page records, flags, commands, the device-state tail), read in chunks
  whose sizes come from the input too, or whole with ``savevm.read_stream``;
- ``snapshot.load_manifest``: a snapshot's ``manifest.json`` (the input's
  bytes), in a folder holding a valid block image and device state, so the
  fuzzer reaches past the file checks.

A decoder may return or raise :class:`multifd_zero.wire.PacketError` (a
``ValueError``; :class:`multifd_zero.errors.SnapshotError` for the
manifest); any other exception, or a returned packet that breaks the
decoder's own promises (counts within ``pages_alloc`` and ``page_count``,
``next_packet_size == normal_pages * page_size``, a known block, every offset
page-aligned and inside it; for the stream, pages inside a block of its own
block list, a page of data each, and the device state last), is a finding:
libFuzzer stops, writes the input to ``crash-*`` and exits non-zero.

Run it::

    pip install atheris
    python fuzz/fuzz_decoder.py -max_total_time=30 [CORPUS_DIR]

A long run (the release check)::

    python fuzz/fuzz_decoder.py -max_total_time=600 -rss_limit_mb=4096 -timeout=20 CORPUS_DIR

``-rss_limit_mb=4096``: libFuzzer's default limit (2048 MB) stops a long run on
the growth of the coverage instrumentation itself (atheris's counters and the
corpus, not a leak of the decoders: peak RSS is flat over 10**5 calls), and
``-malloc_limit_mb`` (default: the RSS limit) still catches a single
allocation a hostile size would make.

(``-atheris_runs=N`` stops after N inputs instead.) A seed corpus of valid
packets, handshakes and streams is generated into the first corpus directory
given (``--seeds-only DIR`` writes the seeds and exits).
``tests/robustness/test_hostile.py::test_atheris_decoder_fuzz`` runs it in CI for 30
seconds (``MULTIFD_ZERO_FUZZ_SECONDS``).
"""

from __future__ import annotations

import os
import sys

import numpy as np  # imported before instrumentation: numpy is not under test

try:
    import atheris
except ImportError:  # pragma: no cover - the script needs atheris; the seeds do not
    atheris = None

if atheris is not None:
    with atheris.instrument_imports(include=["multifd_zero"]):
        from multifd_zero import wire
        from multifd_zero.errors import SnapshotError
        from multifd_zero.snapshot import manifest as snapshot_manifest
        from multifd_zero.wire import savevm
else:  # pragma: no cover
    from multifd_zero import wire
    from multifd_zero.errors import SnapshotError
    from multifd_zero.snapshot import manifest as snapshot_manifest
    from multifd_zero.wire import savevm

SETUPS = [  # (page_count, page_size, blocks)
    (128, 4096, {"pc.ram": 64 * 4096, "vga": 4096}),
    (512, 1024, {"pc.ram": 1024 * 1024}),
    (1, 4096, {"mem0": 2 * 4096}),
    (4, 2 * 1024 * 1024, {"huge": 8 * 1024 * 1024, "é": 2 * 1024 * 1024}),
]
STREAM_SETUPS = [(4096, {"pc.ram": 32 * 4096, "vga": 4 * 4096}), (1024, {"pc.ram": 64 * 1024})]
VMDESC = b'{"devices": []}'  # a VM description without devices


def check_packet(pkt: wire.RamPacket, page_count: int, page_size: int,
                 blocks: dict[str, int]) -> None:
    num = pkt.normal_pages + pkt.zero_pages
    assert 0 <= num <= pkt.pages_alloc <= page_count, pkt
    assert pkt.offsets.dtype == np.uint64 and pkt.offsets.size == num
    assert pkt.next_packet_size == pkt.normal_pages * page_size
    assert pkt.flags & ~wire.MULTIFD_FLAG_SYNC == 0
    if num:
        used = blocks[pkt.ramblock]
        for off in pkt.offsets.tolist():
            assert off % page_size == 0 and off + page_size <= used, (off, used)


class _BytesChannel:
    """The part of a Channel the reader uses: ``recv_into`` over fixed bytes, in chunks."""

    def __init__(self, raw: bytes, chunks: list[int]) -> None:
        self.raw, self.pos, self.chunks, self.k = raw, 0, chunks or [4096], 0

    def recv_into(self, view: memoryview) -> int:
        size = self.chunks[self.k % len(self.chunks)]
        self.k += 1
        piece = self.raw[self.pos : self.pos + min(size, len(view))]
        view[: len(piece)] = piece
        self.pos += len(piece)
        return len(piece)


def read_main_stream(raw: bytes, chunks: list[int], page_size: int, magic_read: bool,
                     whole: bool) -> int:
    if whole:  # savevm.read_stream: the whole stream from memory
        events = iter(savevm.read_stream(raw, page_size=page_size))
        declared: dict[str, int] = {}
    else:
        reader = savevm.StreamReader(
            _BytesChannel(raw, chunks),  # type: ignore[arg-type]
            page_size=page_size, magic_read=magic_read,
        )
        events = reader.events()
        declared = reader.blocks
    count = 0
    last = None
    for event in events:
        count += 1
        assert count <= 4 * len(raw) + 4, "the reader makes no progress"
        last = event
        if isinstance(event, savevm.MemSize):
            declared = dict(event.blocks)
        if isinstance(event, (savevm.ZeroPages, savevm.Pages)):
            used = declared[event.idstr]
            offs = event.offsets.tolist()
            assert offs, event
            for off in offs:
                assert off % page_size == 0 and off + page_size <= used, (off, used)
            if isinstance(event, savevm.Pages):
                assert len(event.data) == len(offs) * page_size
    assert isinstance(last, savevm.DeviceState), "the stream ended unchecked"
    return count


class _SnapshotFolder:
    """A folder with one block image and a device state; the manifest is the input."""

    def __init__(self) -> None:
        import subprocess
        import tempfile

        self.root = tempfile.mkdtemp(prefix="fuzz-manifest-")
        # libFuzzer ends the process with C's exit(), past Python's atexit: a
        # watcher removes the folder when this process's end closes its stdin.
        self._watcher = subprocess.Popen(
            [sys.executable, "-c", "import shutil, sys; sys.stdin.buffer.read(); "
             "shutil.rmtree(sys.argv[1], ignore_errors=True)", self.root],
            stdin=subprocess.PIPE,
        )
        w = savevm.StreamWriter()
        self.tail = (
            w.section_start(0, "timer", 0, 2, kind=savevm.QEMU_VM_SECTION_FULL)
            + bytes(24) + w.footer(0) + w.eof() + w.vmdescription(VMDESC)
        )
        self.image = snapshot_manifest.block_file_name(0, "pc.ram")
        with open(os.path.join(self.root, self.image), "wb") as f:
            f.truncate(4 * 4096)
        with open(os.path.join(self.root, "device-state.bin"), "wb") as f:
            f.write(self.tail)
        self.path = os.path.join(self.root, snapshot_manifest.MANIFEST)

    def valid(self) -> bytes:
        import hashlib
        import json

        manifest = snapshot_manifest.Manifest(
            format=snapshot_manifest.FORMAT, version=snapshot_manifest.FORMAT_VERSION,
            machine_type="pc-i440fx-10.0",
            configuration=savevm.StreamWriter.configuration("pc-i440fx-10.0"),
            page_size=4096,
            blocks=(snapshot_manifest.BlockInfo("pc.ram", 4 * 4096, self.image, 1),),
            ram_section_id=3, ram_instance_id=0, ram_version_id=4,
            device_state_file="device-state.bin", device_state_length=len(self.tail),
            device_state_sha256=hashlib.sha256(self.tail).hexdigest(),
            commands=("SWITCHOVER_START",), normal=1, duplicate=3, channels=2,
            uuid=bytes(16), complete=True,
        )
        return json.dumps(snapshot_manifest.manifest_dict(manifest)).encode()

    def load(self, text: bytes) -> snapshot_manifest.Manifest:
        with open(self.path, "wb") as f:
            f.write(text)
        return snapshot_manifest.load_manifest(self.root)


_FOLDER: _SnapshotFolder | None = None


def _folder() -> _SnapshotFolder:
    global _FOLDER
    if _FOLDER is None:
        _FOLDER = _SnapshotFolder()
    return _FOLDER


def one_input(data: bytes) -> None:
    """Decode ``data`` with the decoder its first byte selects."""
    if len(data) < 2:
        return
    which, setup, body = data[0] % 5, data[1], data[2:]
    if which == 4:
        try:
            manifest = _folder().load(body)
        except SnapshotError:
            return
        assert manifest.blocks and manifest.page_size == 4096, manifest
        return
    try:
        if which == 0:
            page_count, page_size, blocks = SETUPS[setup % len(SETUPS)]
            pkt = wire.decode_packet(body, page_count=page_count, page_size=page_size,
                                     blocks=blocks)
            check_packet(pkt, page_count, page_size, blocks)
        elif which == 1:
            flags = wire.check_header(body)
            assert flags & ~wire.MULTIFD_FLAG_SYNC == 0
        elif which == 2:
            uuid = bytes(range(16)) if setup & 1 else None
            channels = (setup >> 1) % 8 + 1 if setup & 2 else None
            init = wire.decode_init(body, uuid=uuid, channels=channels)
            assert len(init.uuid) == 16 and (channels is None or init.id < channels)
        else:
            page_size, _ = STREAM_SETUPS[setup % len(STREAM_SETUPS)]
            chunks = [1 + (b % 64) for b in body[:3]]
            magic_read = bool(setup & 4)
            read_main_stream(body[3:], chunks, page_size, magic_read,
                             whole=bool(setup & 8) and not magic_read)
    except wire.PacketError:
        pass


def seeds() -> list[bytes]:
    """Valid inputs for every target, so the fuzzer starts past the magic checks."""
    out = []
    for k, (page_count, page_size, blocks) in enumerate(SETUPS):
        name = sorted(blocks)[0]
        pages = blocks[name] // page_size
        num = min(page_count, pages, 3)
        offs = np.arange(num, dtype=np.uint64) * np.uint64(page_size)
        for normal in range(num + 1):
            pkt = wire.RamPacket(
                flags=wire.MULTIFD_FLAG_SYNC if normal == 0 else 0, pages_alloc=page_count,
                normal_pages=normal, zero_pages=num - normal,
                next_packet_size=normal * page_size, packet_num=normal, ramblock=name,
                offsets=offs,
            )
            out.append(bytes([0, k]) + wire.encode_packet(pkt, page_count))
        out.append(bytes([1, 0]) + wire.encode_packet(wire.RamPacket(pages_alloc=1), 1)[:12])
    for setup in (0, 1, 2, 3):
        out.append(bytes([2, setup]) + wire.encode_init(bytes(range(16)), 0))
    for k, (page_size, blocks) in enumerate(STREAM_SETUPS):
        name = sorted(blocks)[-1]
        offs = np.array([0, page_size, 3 * page_size], dtype=np.uint64)
        w = savevm.StreamWriter(page_size)
        stream = b"".join([
            w.header(), w.configuration("multifd-zero"), w.section_start(1),
            w.mem_size(list(blocks.items())), w.multifd_flush(), w.eos(), w.footer(1),
            w.section_part(1), w.zero_pages(name, offs), w.zero_pages(name, offs[1:]),
            w.pages(name, offs[:2], bytes(range(256)) * (2 * page_size // 256)),
            w.multifd_flush(), w.eos(), w.footer(1),
            w.command(savevm.MIG_CMD_SWITCHOVER_START), w.section_part(1, end=True),
            w.multifd_flush(), w.eos(), w.footer(1), w.eof(), w.vmdescription(VMDESC),
        ])
        out.append(bytes([3, k]) + bytes([7, 64, 1]) + stream)
        out.append(bytes([3, k | 4]) + bytes([64, 64, 64]) + stream[4:])
        out.append(bytes([3, k | 8]) + bytes([1, 1, 1]) + stream)
    out.append(bytes([4, 0]) + _folder().valid())
    return out


def write_seeds(directory: str) -> int:
    os.makedirs(directory, exist_ok=True)
    for i, seed in enumerate(seeds()):
        with open(os.path.join(directory, f"seed-{i:03d}"), "wb") as f:
            f.write(seed)
    return len(seeds())


def main(argv: list[str]) -> None:
    if len(argv) >= 3 and argv[1] == "--seeds-only":
        print(f"wrote {write_seeds(argv[2])} seeds to {argv[2]}")
        return
    for seed in seeds():  # every seed must decode cleanly before fuzzing starts
        one_input(seed)
    corpora = [a for a in argv[1:] if not a.startswith("-")]
    if corpora:
        write_seeds(corpora[0])
    if atheris is None:
        sys.exit("atheris is not installed: pip install atheris")
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
