"""``multifd_zero.tools.scan`` and the ``scan`` command.

- ``scan_file`` (every method and window size, with and without hole skipping)
  and ``scan_buffer`` against a plain reference on generated files: every page
  size from 1 KiB to 2 MiB, trailing partial pages, holes, the empty file;
- the wire-byte formulas, written out again here by hand;
- a sparse file of several GiB, scanned in a child process whose resident
  memory is sampled after every window;
- a block device (a loop device, when this machine lets us make one);
- the command line in subprocesses: text, ``--json``, several paths, bad
  paths and exit codes, and the progress bar on a terminal.
"""

from __future__ import annotations

import doctest
import fcntl
import json
import math
import os
import pty
import select
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import termios
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.qemu_model import ref_page_is_zero

import multifd_zero
from multifd_zero.tools import scan as scan_mod
from multifd_zero.tools.scan import ScanResult, scan_buffer, scan_file

PAGE_SIZES = tuple(1 << k for k in range(10, 22))  # 1 KiB .. 2 MiB
MIB = 1024 * 1024
GIB = 1024 * MIB
KINDS = ("zero", "hole", "first", "last", "middle", "random")


# ---------------------------------------------------------------- the reference


def ref_counts(data: bytes, page_size: int) -> tuple[int, int]:
    """(pages, zero pages) of ``data``; a trailing partial page is padded with zeros."""
    padded = data + bytes(-len(data) % page_size)
    pages = len(padded) // page_size
    zero = sum(ref_page_is_zero(padded, p * page_size, page_size) for p in range(pages))
    return pages, zero


def ref_wire(pages: int, zero: int, page_size: int) -> dict[str, int]:
    """The four wire figures, written out from the module documentation."""
    per_packet = max(1, 524288 // page_size)
    packet = 320 + 8 * per_packet
    normal = pages - zero
    return {
        "multifd": -(-pages // per_packet) * packet + normal * page_size,
        "legacy": 9 * zero + -(-normal // per_packet) * packet + normal * page_size,
        "none": -(-pages // per_packet) * packet + pages * page_size,
        "precopy": 9 * zero + (8 + page_size) * normal,
    }


def check(result: ScanResult, data: bytes, page_size: int) -> None:
    pages, zero = ref_counts(data, page_size)
    assert (result.size, result.page_size) == (len(data), page_size)
    assert (result.pages, result.zero_pages) == (pages, zero)
    assert result.normal_pages == pages - zero
    assert result.partial_page_bytes == len(data) % page_size
    assert result.wire_bytes == ref_wire(pages, zero, page_size)
    assert result.zero_ratio == (zero / pages if pages else 0.0)
    assert result.seconds >= 0


# ------------------------------------------------------------- generated files


def make_page(kind: str, page_size: int, seed: int) -> bytes:
    """A page: zero (written or a hole), one non-zero byte first/last/middle, or random."""
    if kind in ("zero", "hole"):
        return bytes(page_size)
    if kind == "random":
        rng = np.random.default_rng(seed)
        page = rng.integers(0, 256, size=page_size, dtype=np.uint8)
        page[seed % page_size] |= 1
        return page.tobytes()
    where = {"first": 0, "last": page_size - 1, "middle": page_size // 2}[kind]
    page = bytearray(page_size)
    page[where] = 1 + seed % 255
    return bytes(page)


@st.composite
def files(draw: st.DrawFn) -> tuple[int, list[tuple[str, int]], int, bool]:
    """(page size, page kinds and seeds, trailing partial bytes, trailing non-zero)."""
    page_size = draw(st.sampled_from(PAGE_SIZES))
    max_pages = max(1, min(24, (6 * MIB) // page_size))
    specs = draw(
        st.lists(
            st.tuples(st.sampled_from(KINDS), st.integers(0, 2**31)),
            min_size=0,
            max_size=max_pages,
        )
    )
    partial = draw(st.sampled_from([0, 0, 1, page_size // 2, page_size - 1]))
    partial_nonzero = draw(st.booleans())
    return page_size, specs, partial, partial_nonzero


def write_file(path: Path, page_size: int, specs: list[tuple[str, int]], tail: bytes) -> bytes:
    """Write the pages (holes by seeking past them) and the tail; return the contents."""
    chunks = []
    with open(path, "wb") as f:
        for kind, seed in specs:
            page = make_page(kind, page_size, seed)
            if kind == "hole":
                f.seek(page_size, os.SEEK_CUR)
            else:
                f.write(page)
            chunks.append(page)
        f.write(tail)
        f.truncate()
    chunks.append(tail)
    return b"".join(chunks)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mfz-scan-") as name:
        yield Path(name)


@given(spec=files(), data=st.data())
def test_scan_matches_reference(
    workdir: Path, spec: tuple[int, list[tuple[str, int]], int, bool], data: st.DataObject
) -> None:
    """Every method, window size and hole-merge threshold counts what the reference counts."""
    page_size, specs, partial, partial_nonzero = spec
    tail = bytearray(partial)
    if partial and partial_nonzero:
        tail[data.draw(st.integers(0, partial - 1), label="tail byte")] = 7
    path = workdir / "image.bin"
    contents = write_file(path, page_size, specs, bytes(tail))
    assert path.stat().st_size == len(contents)

    windows = data.draw(
        st.lists(st.sampled_from([1, page_size, 3 * page_size, 64 * MIB]), min_size=1, max_size=2),
        label="windows",
    )
    for window in windows:
        for method in ("auto", "mmap", "read"):
            check(
                scan_file(path, page_size=page_size, method=method, window=window),
                contents,
                page_size,
            )
    # Skip every hole, however small, so that SEEK_DATA/SEEK_HOLE decide what is read.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scan_mod, "HOLE_MERGE_BYTES", 0)
        result = scan_file(path, page_size=page_size, method="mmap", window=windows[0])
        check(result, contents, page_size)
        assert result.bytes_read <= len(contents)
    check(scan_buffer(contents, page_size=page_size), contents, page_size)


def test_docstring_examples() -> None:
    """The examples in ``multifd_zero.tools.scan`` run and pass (test_doctests runs the rest)."""
    result = doctest.testmod(scan_mod, report=False, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= 8


@pytest.mark.parametrize("method", ["auto", "mmap", "read"])
def test_empty_file(tmp_path: Path, method: str) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    result = scan_file(path, method=method)  # type: ignore[arg-type]
    assert (result.pages, result.zero_pages, result.size, result.bytes_read) == (0, 0, 0, 0)
    assert result.wire_bytes == {"multifd": 0, "legacy": 0, "none": 0, "precopy": 0}
    assert result.zero_ratio == 0.0
    assert scan_buffer(b"").pages == 0


def test_wire_bytes_known_values() -> None:
    """Figures worked out by hand from QEMU's packet layout (4 KiB pages, 1344-byte packets)."""
    # 1000 zero pages and 24 normal pages: 1024 pages = 8 packets.
    data = bytes(1000 * 4096) + b"\1" * (24 * 4096)
    r = scan_buffer(data)
    assert (r.pages, r.zero_pages, r.packet_pages) == (1024, 1000, 128)
    assert r.wire_bytes == {
        "multifd": 8 * 1344 + 24 * 4096,
        "legacy": 9 * 1000 + 1 * 1344 + 24 * 4096,
        "none": 8 * 1344 + 1024 * 4096,
        "precopy": 9 * 1000 + 24 * (8 + 4096),
    }
    assert scan_mod.multifd_packet_len(4096) == 1344
    # Huge pages: 512 KiB -> 1 page per packet; 2 MiB -> still 1 (never 0).
    assert scan_mod.multifd_packet_len(512 * 1024) == 328
    assert scan_buffer(bytes(4 * MIB), page_size=2 * MIB).wire_bytes["multifd"] == 2 * 328


def test_as_dict_is_json_ready() -> None:
    r = scan_buffer(bytes(4096) + b"x", name="dump")
    d = json.loads(json.dumps(r.as_dict()))
    assert d["path"] == "dump" and d["pages"] == 2 and d["zero_pages"] == 1
    assert d["partial_page_bytes"] == 1 and d["method"] == "buffer"
    assert d["wire_bytes"] == r.wire_bytes
    assert set(d) >= {"size", "page_size", "normal_pages", "zero_ratio", "gb_per_s", "seconds"}


def test_scan_buffer_inputs() -> None:
    arr = np.zeros((4, 1024), dtype=np.uint32)  # 16 KiB, 2-D, 4-byte items
    arr[2, 5] = 9
    r = scan_buffer(arr, page_size=4096)
    assert (r.pages, r.zero_pages) == (4, 3)
    with pytest.raises(ValueError, match="contiguous"):
        scan_buffer(np.zeros((8, 8192), dtype=np.uint8)[:, ::2])
    with pytest.raises(TypeError):
        scan_buffer(12345)
    with pytest.raises(ValueError):
        scan_buffer(bytes(4096), page_size=3000)


def test_progress_reports_every_byte(tmp_path: Path) -> None:
    path = tmp_path / "img"
    with open(path, "wb") as f:
        f.truncate(20 * MIB + 100)
        f.seek(5 * MIB)
        f.write(b"data")
    for method in ("mmap", "read"):
        steps: list[int] = []
        scan_file(path, method=method, window=4 * MIB, progress=steps.append)  # type: ignore[arg-type]
        assert sum(steps) == 20 * MIB + 100
        assert len(steps) > 1 and all(s > 0 for s in steps)


def test_bad_arguments(tmp_path: Path) -> None:
    path = tmp_path / "img"
    path.write_bytes(bytes(4096))
    with pytest.raises(ValueError):
        scan_file(path, page_size=4097)
    with pytest.raises(ValueError, match="method"):
        scan_file(path, method="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window"):
        scan_file(path, window=0)
    with pytest.raises(FileNotFoundError):
        scan_file(tmp_path / "missing")
    with pytest.raises(IsADirectoryError):
        scan_file(tmp_path)


def test_pipe_uses_read_and_mmap_refuses(tmp_path: Path) -> None:
    """A FIFO has no size: auto reads it; mmap is refused with a clear error."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    payload = bytes(8192) + b"\1" + bytes(100)
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"open({str(fifo)!r}, 'wb').write(bytes(8192) + b'\\1' + bytes(100))",
        ]
    )
    try:
        result = scan_file(fifo)
    finally:
        writer.wait(timeout=30)
    check(result, payload, 4096)
    assert result.method == "read"
    writer = subprocess.Popen([sys.executable, "-c", f"open({str(fifo)!r}, 'wb').close()"])
    try:
        with pytest.raises(ValueError, match="size is unknown"):
            scan_file(fifo, method="mmap")
    finally:
        writer.kill()
        writer.wait(timeout=30)


# ------------------------------------------------------- constant memory, huge file

_RSS_CHILD = textwrap.dedent(
    """
    import json, os, sys
    from multifd_zero.tools import scan as scan_mod
    path, method, merge = sys.argv[1], sys.argv[2], int(sys.argv[3])
    page = os.sysconf("SC_PAGE_SIZE")
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page
    scan_mod.HOLE_MERGE_BYTES = merge
    scan_mod.scan_buffer(bytes(1 << 20))          # warm up the imports and kernels
    baseline = rss()
    peak = [baseline]
    def progress(n):
        peak[0] = max(peak[0], rss())
    r = scan_mod.scan_file(path, method=method, window=16 << 20, progress=progress)
    print(json.dumps({"baseline": baseline, "peak": max(peak[0], rss()), "result": r.as_dict()}))
    """
)


def make_sparse(path: Path, size: int) -> int:
    """Truncate ``path`` to ``size`` and write one byte into six pages; return that count.

    The last non-zero page is the partial page at the end (``size`` is not a
    multiple of 4096).
    """
    assert size % 4096
    end_page = size - size % 4096
    offsets = [100, 7 * 4096 + 4095, size // 3, size // 2 + 4096, end_page - 4096, end_page]
    with open(path, "wb") as f:
        f.truncate(size)
        for off in offsets:
            f.seek(off)
            f.write(b"\x5a")
    return len(offsets)


@pytest.fixture(scope="module")
def sparse_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mfz-sparse-") as name:
        yield Path(name)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("size", "method", "merge"),
    [
        (6 * GIB + 1234, "mmap", 1 << 20),
        (1 * GIB + 1234, "read", 1 << 20),
        (1 * GIB + 1234, "mmap", 1 << 62),
    ],
    ids=["6GiB-mmap-skips-holes", "1GiB-readinto", "1GiB-mmap-maps-every-hole"],
)
def test_sparse_constant_memory(sparse_dir: Path, size: int, method: str, merge: int) -> None:
    """A sparse file of several GiB, 16 MiB windows: the child's RSS grows by about one window.

    The default mmap path skips the holes, so it reads only a few pages of the
    6 GiB. The readinto path and a mapping of every hole read all of a 1 GiB
    sparse file (64 windows; ext4 fills a page-cache page for every hole page
    read, at about 0.3 GB/s, so 6 GiB would take 20 s each) and show that what
    is read is not kept.
    """
    path = sparse_dir / f"sparse-{size}.img"
    if not path.exists():
        make_sparse(path, size)
    nonzero = 6
    skips_holes = method == "mmap" and merge < size
    if skips_holes:
        fd = os.open(path, os.O_RDONLY)
        try:
            first_hole = os.lseek(fd, 0, os.SEEK_HOLE)
        finally:
            os.close(fd)
        if first_hole >= size:
            pytest.skip(f"{sparse_dir} does not report holes (SEEK_HOLE)")
    if method == "read" or merge > size:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if avail < 2 * GIB:
            pytest.skip(f"only {avail >> 20} MiB of free memory for the page cache")
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(path), method, str(merge)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=path.parent,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    r = out["result"]
    pages = math.ceil(size / 4096)
    assert (r["size"], r["pages"], r["zero_pages"]) == (size, pages, pages - nonzero)
    assert r["method"] == method
    growth = out["peak"] - out["baseline"]
    # One 16 MiB window mapped at a time (or the 1 MiB read buffer), numpy's mask, slack.
    assert growth < 32 * MIB, f"RSS grew by {growth >> 20} MiB"
    if skips_holes:
        assert r["bytes_read"] < 16 * MIB  # the holes were skipped
    else:
        assert r["bytes_read"] == size


# ---------------------------------------------------------------- block device


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("needs root and losetup to make a loop device")
    contents = bytearray(4 * MIB)
    contents[5 * 4096 + 3] = 1
    contents[700 * 4096] = 2
    backing = tmp_path / "loop.img"
    backing.write_bytes(bytes(contents))
    proc = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot make a loop device here: {proc.stderr.strip()}")
    device = proc.stdout.strip()
    try:
        yield device, bytes(contents)
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)


def test_block_device(loop_device: tuple[str, bytes]) -> None:
    device, contents = loop_device
    assert stat.S_ISBLK(os.stat(device).st_mode)
    for method in ("auto", "mmap", "read"):
        result = scan_file(device, method=method)  # type: ignore[arg-type]
        check(result, contents, 4096)
        assert result.method == ("read" if method == "read" else "mmap")


# --------------------------------------------------------------- command line


def cli(args: list[str], cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """``python -m multifd_zero ARGS`` from ``cwd`` (so the installed package is used)."""
    env = {k: v for k, v in os.environ.items() if k != "MULTIFD_ZERO_SIMD"}
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "multifd_zero", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        **kwargs,
    )


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, Path, bytes, bytes]:
    a = bytes(3 * 4096) + b"\1" * 4096 + bytes(4096)
    b = b"\2" * 8192 + bytes(8192) + b"\3" * 10
    pa, pb = tmp_path / "a.img", tmp_path / "b.img"
    pa.write_bytes(a)
    pb.write_bytes(b)
    return pa, pb, a, b


def test_cli_text(images: tuple[Path, Path, bytes, bytes], tmp_path: Path) -> None:
    pa, pb, _, _ = images
    proc = cli(["scan", str(pa)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert str(pa) in out
    assert "pages:" in out and " 5  (page size 4096)" in out
    assert "zero:" in out and " 4  (80.00%" in out
    for mode in ("multifd", "legacy", "none", "precopy"):
        assert mode in out
    assert f"{ref_wire(5, 4, 4096)['multifd']:,} B" in out
    assert "GB/s" in out and "total" not in out
    assert proc.stderr == ""

    proc = cli(["scan", str(pa), str(pb), "--page-size", "8K", "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "total, 2 files" in proc.stdout
    assert "the last page is partial (10 bytes)" in proc.stdout


def test_cli_json(images: tuple[Path, Path, bytes, bytes], tmp_path: Path) -> None:
    pa, pb, a, b = images
    for page_size, flag in ((4096, "4096"), (1024, "1k"), (2 * MIB, "2MiB"), (4096, "0x1000")):
        proc = cli(["scan", "--json", "--page-size", flag, str(pa), str(pb)], tmp_path)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["page_size"] == page_size and doc["errors"] == []
        assert doc["multifd_zero"] == multifd_zero.__version__
        assert [f["path"] for f in doc["files"]] == [str(pa), str(pb)]
        pages = zero = 0
        for entry, contents in zip(doc["files"], (a, b), strict=True):
            p, z = ref_counts(contents, page_size)
            assert (entry["pages"], entry["zero_pages"], entry["normal_pages"]) == (p, z, p - z)
            assert entry["wire_bytes"] == ref_wire(p, z, page_size)
            pages, zero = pages + p, zero + z
        total = doc["total"]
        assert (total["files"], total["pages"], total["zero_pages"]) == (2, pages, zero)
        assert total["size"] == len(a) + len(b)
        for mode in ("multifd", "legacy", "none", "precopy"):
            assert total["wire_bytes"][mode] == sum(f["wire_bytes"][mode] for f in doc["files"])


def test_cli_errors(images: tuple[Path, Path, bytes, bytes], tmp_path: Path) -> None:
    """Missing files, directories and read errors: exit 1, one line each, no traceback.

    The good path given with them is still scanned.
    """
    pa = images[0]
    missing = tmp_path / "missing.img"
    proc = cli(["scan", str(missing), str(tmp_path), "/proc/self/mem", str(pa)], tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"multifd-zero scan: error: {missing}: No such file or directory",
        f"multifd-zero scan: error: {tmp_path}: Is a directory",
        "multifd-zero scan: error: /proc/self/mem: Input/output error",
    ]
    assert str(pa) in proc.stdout  # the good one was scanned

    proc = cli(["scan", "--json", str(missing), str(pa)], tmp_path)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["errors"] == [{"path": str(missing), "error": "No such file or directory"}]
    assert len(doc["files"]) == 1

    for bad in (
        ["scan"],
        ["scan", "--page-size", "3000", str(pa)],
        ["scan", "--page-size", "x", str(pa)],
    ):
        proc = cli(bad, tmp_path)
        assert proc.returncode == 2, bad
        assert "Traceback" not in proc.stderr and "(see multifd-zero scan --help)" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1

    proc = cli(["scan", "--method", "mmap", "/dev/stdin"], tmp_path, input="")
    assert proc.returncode == 1
    assert "the size is unknown" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_unreadable(images: tuple[Path, Path, bytes, bytes], tmp_path: Path) -> None:
    """A file without read permission: exit 1 and "Permission denied".

    Root reads everything, so as root the command runs under ``setpriv`` without
    the capabilities that bypass file permissions.
    """
    secret = tmp_path / "secret.img"
    secret.write_bytes(bytes(8192))
    secret.chmod(0)
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: every file is readable")
        prefix = [
            setpriv,
            "--inh-caps=-all",
            "--bounding-set=-dac_override,-dac_read_search",
            "--",
        ]
    env = {k: v for k, v in os.environ.items() if k != "MULTIFD_ZERO_SIMD"}
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "multifd_zero", "scan", str(secret), str(images[0])],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if prefix and proc.stderr.startswith("setpriv:"):
        pytest.skip(f"setpriv cannot drop the capabilities here: {proc.stderr.strip()}")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == f"multifd-zero scan: error: {secret}: Permission denied"
    assert str(images[0]) in proc.stdout


def test_cli_closed_stdout(images: tuple[Path, Path, bytes, bytes], tmp_path: Path) -> None:
    """``scan ... | head`` with the reader gone: exit 1, no traceback."""
    pa = images[0]
    proc = subprocess.Popen(
        [sys.executable, "-m", "multifd_zero", "scan", str(pa), str(pa), str(pa)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 1
    assert err == ""


def test_cli_stdin(tmp_path: Path) -> None:
    """``scan /dev/stdin`` reads a pipe to its end."""
    payload = b"\0" * 4096 * 3 + b"\1" * 4096
    proc = subprocess.run(
        [sys.executable, "-m", "multifd_zero", "scan", "--json", "/dev/stdin"],
        input=payload,
        capture_output=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    entry = json.loads(proc.stdout)["files"][0]
    assert (entry["pages"], entry["zero_pages"], entry["method"]) == (4, 3, "read")


def _run_on_tty(args: list[str], cwd: Path, feed_seconds: float) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal and stdin fed slowly from a pipe."""
    try:
        master, slave = pty.openpty()
    except OSError as exc:
        pytest.skip(f"no pseudo-terminal here: {exc}")
    # A pty starts with 0 columns, and tqdm draws nothing in 0 columns.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "multifd_zero", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=slave,
        cwd=cwd,
    )
    os.close(slave)
    assert proc.stdin is not None and proc.stdout is not None
    chunk = bytes(256 * 1024)
    pieces = 16
    terminal = bytearray()
    for _ in range(pieces):
        proc.stdin.write(chunk)
        proc.stdin.flush()
        deadline = time.monotonic() + feed_seconds / pieces
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([master], [], [], left)
            if ready:
                try:
                    terminal += os.read(master, 65536)
                except OSError:
                    break
    proc.stdin.close()
    stdout = proc.stdout.read().decode()
    proc.stdout.close()
    rc = proc.wait(timeout=60)
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        terminal += data
    os.close(master)
    return rc, stdout, terminal.decode(errors="replace")


def test_cli_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    """A scan longer than half a second shows tqdm's bar on a TTY; --no-progress hides it."""
    rc, stdout, terminal = _run_on_tty(["scan", "/dev/stdin"], tmp_path, feed_seconds=2.0)
    assert rc == 0, terminal
    assert "4.00 MiB" in stdout
    assert "B/s" in terminal, terminal  # tqdm's rate column

    rc, stdout, terminal = _run_on_tty(
        ["scan", "--no-progress", "/dev/stdin"], tmp_path, feed_seconds=1.0
    )
    assert rc == 0, terminal
    assert "4.00 MiB" in stdout
    assert terminal.strip() == ""
