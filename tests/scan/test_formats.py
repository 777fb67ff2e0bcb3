"""What ``scan`` reads: ELF core dumps by guest address, containers refused, stdin,
unbounded devices, ``--map``; ``sparsify``; files that shrink under a reader.

The command-line cases run the installed command in a subprocess and check
the exit status and the one line printed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from multifd_zero.errors import FileFormatError
from multifd_zero.tools.scan import scan_buffer, scan_file
from multifd_zero.tools.sparsify import sparsify

PS = 4096


def cli(args: list[str], cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MULTIFD_ZERO_SIMD"}
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "multifd_zero", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False, **kwargs,
    )  # fmt: skip


def pages(spec: str, seed: int = 0) -> bytes:
    """``"0z1"`` -> a zero page, a random page, then a page with one byte set at its end."""
    rng = np.random.default_rng(seed)
    out = []
    for kind in spec:
        if kind == "0":
            out.append(bytes(PS))
        elif kind == "1":
            out.append(bytes(PS - 1) + b"\1")
        else:
            out.append(rng.integers(1, 256, PS, dtype=np.uint8).tobytes())
    return b"".join(out)


def write_elf_core(path: Path, segments: list[tuple[int, bytes, int]]) -> None:
    """An ELF64 little-endian core file: ``(paddr, file bytes, memsz)`` per PT_LOAD.

    As QEMU's dump-guest-memory does, a PT_NOTE comes first and the first
    segment's data starts at a file offset that is not page-aligned (0x480 here).
    """
    phnum = len(segments) + 1
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, phnum, 0, 0, 0)
    notes = b"\0" * 24
    offset = 0x480
    table = struct.pack("<IIQQQQQQ", 4, 0, 0x460, 0, 0, len(notes), len(notes), 0)
    body = b""
    for paddr, data, memsz in segments:
        table += struct.pack("<IIQQQQQQ", 1, 7, offset + len(body), 0, paddr, len(data), memsz, 0)
        body += data
    blob = header + table
    blob += bytes(0x460 - len(blob)) + notes + bytes(0x480 - 0x460 - len(notes)) + body
    path.write_bytes(blob)


def test_elf_core_dump_is_scanned_by_guest_address(tmp_path: Path) -> None:
    """Counts equal the raw memory's; extents are at guest addresses with file offsets."""
    low = pages("0z00z1")  # guest 0 .. 6 pages
    high = pages("z0", seed=1)  # guest 1 MiB, memsz 4 pages: 2 more zero pages
    dump = tmp_path / "vm.elf"
    write_elf_core(dump, [(0, low, len(low)), (1 << 20, high, 4 * PS)])
    result = scan_file(dump, extents=True)
    raw = scan_buffer(low + high + bytes(2 * PS))
    assert result.format == "elf"
    assert (result.pages, result.zero_pages) == (raw.pages, raw.zero_pages) == (10, 6)
    assert result.size == len(low) + 4 * PS
    assert result.extents is not None
    got = [(e.start, e.length, e.zero, e.offset) for e in result.extents]
    assert got == [
        (0, PS, True, 0x480),
        (PS, PS, False, 0x480 + PS),
        (2 * PS, 2 * PS, True, 0x480 + 2 * PS),
        (4 * PS, 2 * PS, False, 0x480 + 4 * PS),  # a random page, then one byte set
        ((1 << 20), PS, False, 0x480 + 6 * PS),
        ((1 << 20) + PS, PS, True, 0x480 + 7 * PS),
        ((1 << 20) + 2 * PS, 2 * PS, True, None),  # memsz past filesz: not in the file
    ]
    # What scanning the file's bytes as they lie gives: every page boundary shifted.
    assert scan_file(dump, method="read").pages == 10
    proc = cli(["scan", "--json", "--map", str(dump)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    entry = json.loads(proc.stdout)["files"][0]
    assert (entry["format"], entry["pages"], entry["zero_pages"]) == ("elf", 10, 6)
    assert entry["map"][-1] == {
        "start": (1 << 20) + 2 * PS, "length": 2 * PS, "depth": 0, "present": True,
        "zero": True, "data": False, "compressed": False,
    }  # fmt: skip


def test_elf_unaligned_and_truncated(tmp_path: Path) -> None:
    """A segment starting inside a page is padded with zeros; one past the file is refused."""
    dump = tmp_path / "odd.elf"
    write_elf_core(dump, [(PS + 100, b"\1" + bytes(PS), PS + 1)])
    r = scan_file(dump)
    assert (r.pages, r.zero_pages) == (2, 1)  # guest page 1 holds the 1; page 2 is zero
    with dump.open("r+b") as f:
        f.truncate(0x480 + 10)
    with pytest.raises(FileFormatError, match=r"does not fit in the file.*truncated dump"):
        scan_file(dump)
    proc = cli(["scan", str(dump)], tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "PT_LOAD segment 1" in proc.stderr


CONTAINERS = [
    (0, b"QFI\xfb", "a qcow2 disk image", "qemu-img convert -O raw"),
    (0, b"KDMV", "a VMDK disk image (sparse extent)", "qemu-img convert -O raw"),
    (0x40, b"\x7f\x10\xda\xbe", "a VDI disk image", "qemu-img convert -O raw"),
    (0, b"vhdxfile", "a VHDX disk image", "qemu-img convert -O raw"),
    (0, b"QED\x00", "a QED disk image", "qemu-img convert -O raw"),
    (0, b"KDUMP   ", "a kdump-compressed dump", "dump-guest-memory without 'format'"),
    (0, b"makedumpfile", "a flattened makedumpfile dump", "dump-guest-memory without"),
    (0, b"QEVM", "a QEMU migration stream", "dump-guest-memory"),
]


@pytest.mark.parametrize(
    ("at", "magic", "what", "hint"), CONTAINERS, ids=[c[2] for c in CONTAINERS]
)
def test_containers_are_refused_with_a_hint(
    tmp_path: Path, at: int, magic: bytes, what: str, hint: str
) -> None:
    path = tmp_path / "image"
    path.write_bytes(bytes(at) + magic + bytes(3 * PS))
    proc = cli(["scan", str(path)], tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"multifd-zero scan: error: {path}: {what}, not raw memory; ")
    assert hint in line and line.count(str(path)) >= 1


@pytest.mark.qemu
def test_real_disk_images_are_refused(tmp_path: Path) -> None:
    """Images made by qemu-img itself, in each format it writes; the hint's command works."""
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        if os.environ.get("MULTIFD_ZERO_REQUIRE_QEMU") == "1":
            pytest.fail("MULTIFD_ZERO_REQUIRE_QEMU=1 but qemu-img is not installed (qemu-utils)")
        pytest.skip("no qemu-img (Debian: qemu-utils)")
    refused = []
    for fmt, what in (("qcow2", "qcow2"), ("vmdk", "VMDK"), ("vdi", "VDI"), ("vhdx", "VHDX"),
                      ("qed", "QED"), ("vpc", "VHD")):  # fmt: skip
        image = tmp_path / f"disk.{fmt}"
        made = subprocess.run([qemu_img, "create", "-q", "-f", fmt, str(image), "64M"],
                              capture_output=True, check=False)  # fmt: skip
        if made.returncode:
            continue  # a qemu-img built without that format
        with pytest.raises(FileFormatError, match=what) as info:
            scan_file(image)
        refused.append(fmt)
        if fmt == "qcow2":
            # The way out the message gives, run as it is written.
            command = str(info.value).split("; ", 1)[1]
            assert command == f"qemu-img convert -O raw {image} {image}.raw"
            subprocess.run(command.split(), check=True)
            raw = scan_file(f"{image}.raw")
            assert (raw.size, raw.zero_pages, raw.format) == (64 << 20, 16384, "raw")
    assert "qcow2" in refused and len(refused) >= 4, refused


def test_stdin_and_unbounded_devices(tmp_path: Path) -> None:
    proc = cli(["scan", "--json", "-"], tmp_path, input=("\0" * 3 * PS + "\1" * PS))
    assert proc.returncode == 0, proc.stderr
    entry = json.loads(proc.stdout)["files"][0]
    assert (entry["path"], entry["pages"], entry["zero_pages"]) == ("<stdin>", 4, 3)
    proc = cli(["scan", "/dev/zero"], tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "multifd-zero scan: error: /dev/zero: a character device has no end; give the length to "
        "scan (--length on the command line)"
    )
    proc = cli(["scan", "--json", "--length", "1M", "/dev/zero"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    entry = json.loads(proc.stdout)["files"][0]
    assert (entry["pages"], entry["zero_pages"]) == (256, 256)
    proc = cli(["scan", "--length", "8K", "-"], tmp_path, input=pages("zz0").decode("latin-1"))
    assert proc.returncode == 0


def test_hole_only_file_reports_no_speed(tmp_path: Path) -> None:
    holes = tmp_path / "holes.img"
    with holes.open("wb") as f:
        f.truncate(64 << 20)
    proc = cli(["scan", str(holes)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "holes only, nothing read" in proc.stdout and "GB/s" not in proc.stdout


def test_map_matches_the_pages(tmp_path: Path) -> None:
    data = pages("00zz0z1000") + b"\2"
    path = tmp_path / "a.img"
    path.write_bytes(data)
    proc = cli(["scan", "--json", "--map", str(path)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    extents = json.loads(proc.stdout)["files"][0]["map"]
    assert [(e["start"], e["length"], e["zero"], e["data"], e["offset"]) for e in extents] == [
        (0, 2 * PS, True, False, 0),
        (2 * PS, 2 * PS, False, True, 2 * PS),
        (4 * PS, PS, True, False, 4 * PS),
        (5 * PS, 2 * PS, False, True, 5 * PS),
        (7 * PS, 3 * PS, True, False, 7 * PS),
        (10 * PS, 1, False, True, 10 * PS),
    ]
    assert sum(e["length"] for e in extents) == len(data)
    text = cli(["scan", "--map", str(path)], tmp_path)
    assert text.returncode == 0 and "      0x2000             0x2000  data" in text.stdout


def _data_map(path: Path) -> list[tuple[int, int]]:
    """The file's data extents, from SEEK_DATA/SEEK_HOLE: its allocation."""
    out, fd = [], os.open(path, os.O_RDONLY)
    try:
        size, pos = os.fstat(fd).st_size, 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end))
            pos = end
    finally:
        os.close(fd)
    return out


def test_sparsify_copy_and_in_place(tmp_path: Path) -> None:
    """Same bytes; a hole exactly where a page is zero; the command as a user runs it."""
    data = pages("z00z1z000zz0") + b"\3\0"
    src = tmp_path / "src.img"
    src.write_bytes(data)
    want = [(0, PS), (3 * PS, 6 * PS), (9 * PS, 11 * PS), (12 * PS, len(data))]
    proc = cli(["sparsify", "--json", str(src), str(tmp_path / "dst.img")], tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["pages"], doc["zero_pages"], doc["bytes_written"]) == (13, 6, 7 * PS - PS + 2)
    dst = tmp_path / "dst.img"
    assert dst.read_bytes() == data
    assert _data_map(dst) == want
    assert cli(["sparsify", str(src), str(src)], tmp_path).returncode == 1
    proc = cli(["sparsify", "--in-place", "--json", str(src)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["holes_punched"] == 3
    assert src.read_bytes() == data
    assert _data_map(src) == want
    text = cli(["sparsify", "--in-place", str(src)], tmp_path)
    assert text.returncode == 0 and "zero pages (now holes): 6" in text.stdout
    r = sparsify(src, tmp_path / "again.img", page_size=1024)
    assert (r.pages, r.zero_pages) == (4 * 12 + 1, 4 * 6 + 3)


# ------------------------------------------------------------ shrinking files

_SHRINK = textwrap.dedent(
    """
    import mmap, os, sys
    from multifd_zero.tools import scan, sparsify
    path, how, when = sys.argv[1:]
    real_mmap = mmap.mmap
    def shrink(*_args):
        os.truncate(path, 4096)
    def mapped_then_shrunk(*args, **kwargs):
        # Another process truncates the file just after this window is mapped.
        window = real_mmap(*args, **kwargs)
        if len(window) > 4096:  # not the probe of the first page
            shrink()
        return window
    if when == "mapped":
        mmap.mmap = mapped_then_shrunk
    progress = shrink if when == "between" else None
    try:
        if how in ("mmap", "read"):
            scan.scan_file(path, method=how, window=1 << 20, progress=progress)
        elif how == "sparsify":
            sparsify.sparsify(path, path + ".copy", progress=progress)
        elif how == "in-place":
            sparsify.sparsify(path, progress=progress)
        else:
            scan.read_image(path, 4096, progress=progress)
    except OSError as exc:
        print(type(exc).__name__, exc)
    """
)


@pytest.mark.parametrize(
    ("how", "when"),
    [
        ("mmap", "mapped"),
        ("mmap", "between"),
        ("read", "between"),
        ("sparsify", "mapped"),
        ("in-place", "mapped"),
        ("migrate-image", "between"),
    ],
)
def test_a_file_that_shrinks_is_an_error_not_sigbus(tmp_path: Path, how: str, when: str) -> None:
    """Truncated under a mapped window or between two: FileChangedError, never signal 7.

    Run in a child, which SIGBUS would kill. Before the guard, "mapped" ended
    the child with SIGBUS (status -7) for ``scan`` and ``sparsify``, and
    ``migrate --image`` (then a copy-on-write mapping of the image) the same way.
    """
    path = tmp_path / "ram.img"
    path.write_bytes(b"\1" * (8 << 20))
    proc = subprocess.run([sys.executable, "-c", _SHRINK, str(path), how, when], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert proc.stdout.startswith("FileChangedError "), proc.stdout
    assert "shrank" in proc.stdout and str(path) in proc.stdout


def test_file_kernels_refuse_bad_arguments(tmp_path: Path) -> None:
    """The compiled write/punch loops check everything before any system call."""
    from multifd_zero import _kernels

    path = tmp_path / "f"
    path.write_bytes(b"\1" * 3 * PS)
    mask = np.array([False, True, False])
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(ValueError, match="not one per page"):
            _kernels.write_data_pages(fd, bytes(2 * PS), mask)
        with pytest.raises(TypeError, match="numpy bool array"):
            _kernels.punch_zero_pages(fd, [True], PS)
        with pytest.raises(ValueError, match="fd must be from 0"):
            _kernels.punch_zero_pages(-1, mask, 3 * PS)
        with pytest.raises(ValueError, match="file_offset must be from 0"):
            _kernels.write_data_pages(fd, bytes(3 * PS), mask, file_offset=-4096)
        with pytest.raises(TypeError):
            _kernels.punch_hole(fd, 0, 1.5)
        with pytest.raises(OSError) as info:  # read-only: EBADF, nothing changed
            _kernels.punch_zero_pages(fd, mask, 3 * PS)
        assert info.value.errno == errno.EBADF
        with pytest.raises(OSError) as info:
            _kernels.write_data_pages(fd, bytes(3 * PS), mask)
        assert info.value.errno == errno.EBADF
    finally:
        os.close(fd)
    assert path.read_bytes() == b"\1" * 3 * PS
    assert _kernels.mapped_page_mask(b"") is not None
    assert _kernels.write_data_pages(0, b"", np.zeros(0, dtype=bool)) == 0
