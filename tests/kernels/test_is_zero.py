"""``is_zero``: QEMU's unit-test matrix (and more) on every SIMD path, every buffer kind."""

from __future__ import annotations

import array
import ctypes
import functools
import mmap
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.builders import aligned_bytearray
from support.qemu_model import ref_is_zero

import multifd_zero as mz

MATRIX_SIZES = range(1101)  # every size 0..1100 (QEMU walks 1..1023)
MATRIX_ALIGNMENTS = range(1, 65)  # every start alignment 1..64 (QEMU's)

# Sizes around the block boundaries of every path (64, 128 and 256-byte blocks
# plus the 256-byte head and tail), checked at every start residue mod 512.
PHASE_SIZES = (
    255, 256, 257, 319, 320, 383, 384, 447, 448, 511, 512, 513, 767, 768, 769,
    1023, 1024, 1025, 1536, 2047, 2048, 2049, 4095, 4096, 4097,
)  # fmt: skip
PHASE_STARTS = range(512)


def run_matrix(
    sizes: range | tuple[int, ...],
    starts: range,
    positions: object = None,
    is_zero: object = None,
) -> tuple[int, list[tuple[str, int, int, int]]]:
    """QEMU's test_bufferiszero matrix, with every byte outside the range non-zero.

    Starts ``a`` count from a 4096-byte boundary. For each start ``a`` and size
    ``s`` the bytes ``[a, a + s)`` are zero and every other byte of the buffer
    is 0xFF (QEMU puts guard bytes at ``a - 1`` and ``a + s``; here the guard
    is everything outside), and ``is_zero`` of ``[a, a + s)`` must be True;
    then a single 1 at each marker position ``o`` (all of ``[0, s)`` unless
    ``positions(s)`` picks some) must make it False. Returns the number of
    checks and the failures. ``is_zero`` replaces the checker (to test the
    harness).
    """
    top = 4096 + max(starts) + max(sizes) + 4096
    buf, base = aligned_bytearray(top, 4096)
    buf[:] = b"\xff" * len(buf)
    origin = base + 4096
    whole = memoryview(buf)
    is_zero = mz.is_zero if is_zero is None else is_zero
    checks = 0
    failures: list[tuple[str, int, int, int]] = []
    for a in starts:
        start = origin + a
        zeroed = 0  # the window [start, start + zeroed) is zero, the rest 0xFF
        for s in sizes:
            if s > zeroed:
                buf[start + zeroed : start + s] = bytes(s - zeroed)
            elif s < zeroed:
                buf[start + s : start + zeroed] = b"\xff" * (zeroed - s)
            zeroed = s
            end = start + s
            view = whole[start:end]
            if not is_zero(view):
                failures.append(("positive", a, s, -1))
            if positions is None:
                for p in range(start, end):
                    buf[p] = 1
                    if is_zero(view):
                        failures.append(("negative", a, s, p - start))
                    buf[p] = 0
                checks += s + 1
            else:
                marks = positions(s)  # type: ignore[operator]
                for o in marks:
                    buf[start + o] = 1
                    if is_zero(view):
                        failures.append(("negative", a, s, o))
                    buf[start + o] = 0
                checks += len(marks) + 1
            view.release()
            if len(failures) > 20:
                return checks, failures
        buf[start : start + zeroed] = b"\xff" * zeroed
    whole.release()
    assert buf.count(0xFF) == len(buf), "the matrix left a marker behind"
    return checks, failures


def test_qemu_matrix_every_size_alignment_and_marker(simd_path: str) -> None:
    """Sizes 0..1100 x alignments 1..64, non-zero bytes outside, one marker at every offset.

    38,825,664 checks per path (64 x 606,651): a path that reads outside the
    range, skips a head, tail or middle block, or mishandles a length is caught.
    """
    t0 = time.perf_counter()
    checks, failures = run_matrix(MATRIX_SIZES, MATRIX_ALIGNMENTS)
    elapsed = time.perf_counter() - t0
    assert failures == [], f"{simd_path}: {failures[:20]}"
    assert mz.get_simd() == simd_path
    assert checks == 64 * sum(s + 1 for s in MATRIX_SIZES) == 38_825_664
    print(f"{simd_path}: {checks} is_zero checks in {elapsed:.1f} s")


def _skips_last_byte(v: memoryview) -> bool:
    return not any(v[:-1])


def _skips_partial_tail_block(v: memoryview) -> bool:
    return not any(v[: len(v) // 64 * 64])


def _samples_only(v: memoryview) -> bool:
    n = len(v)
    return n == 0 or not (v[0] or v[n - 1] or v[n // 2])


def _reads_one_byte_past(v: memoryview) -> bool:
    if len(v) == 0:
        return True
    whole = np.frombuffer(v.obj, dtype=np.uint8)
    start = np.frombuffer(v, dtype=np.uint8).ctypes.data - whole.ctypes.data
    return not whole[start : start + len(v) + 1].any()


@pytest.mark.parametrize(
    "broken", [_skips_last_byte, _skips_partial_tail_block, _samples_only, _reads_one_byte_past]
)
def test_matrix_harness_catches_broken_checkers(broken: object) -> None:
    """The harness itself can fail: deliberately wrong checkers are caught on a small matrix."""
    _, failures = run_matrix(range(0, 200), range(1, 9), is_zero=broken)
    assert failures


def test_block_boundary_sizes_at_every_start_mod_512(simd_path: str) -> None:
    """Sizes around the 64/128/256-byte block edges at all 512 start residues, every marker."""
    checks, failures = run_matrix(PHASE_SIZES, PHASE_STARTS)
    assert failures == [], f"{simd_path}: {failures[:20]}"
    assert checks == 512 * sum(s + 1 for s in PHASE_SIZES)


@functools.cache
def _ends_and_stride(s: int) -> list[int]:
    """Every position within 600 bytes of either end, and every 17th one between."""
    edge = min(s, 600)
    marks = set(range(edge)) | set(range(s - edge, s)) | set(range(0, s, 17))
    return sorted(marks)


def test_larger_sizes_at_every_alignment(simd_path: str) -> None:
    """Sizes 1101..4224 (every 13th) at alignments 1..64: ends exhaustively, middle sampled."""
    checks, failures = run_matrix(range(1101, 4225, 13), MATRIX_ALIGNMENTS, _ends_and_stride)
    assert failures == [], f"{simd_path}: {failures[:20]}"
    assert checks > 15_000_000


@functools.cache
def _edges_and_samples(s: int) -> list[int]:
    """First, last and middle byte, both sides of the 64-byte edges, and 6 seeded positions."""
    rng = np.random.default_rng(s)
    marks = {0, 1, 63, 64, s // 2, s - 65, s - 64, s - 2, s - 1}
    marks.update(int(x) for x in rng.integers(0, s, size=6))
    return sorted(m for m in marks if 0 <= m < s)


def test_every_size_up_to_8_kib_at_every_alignment(simd_path: str) -> None:
    """Every size 1101..8192 at alignments 0..64: zero with non-zero bytes all around; markers
    at the edges, middle and seeded positions."""
    checks, failures = run_matrix(range(1101, 8193), range(65), _edges_and_samples)
    assert failures == [], f"{simd_path}: {failures[:20]}"
    assert checks > 65 * 7092 * 10


def test_qemu_whole_buffer_checks(simd_path: str) -> None:
    """QEMU's first checks: an 8 MiB zero buffer is zero; with its last byte set it is not."""
    buf = bytearray(8 * 1024 * 1024)
    assert mz.is_zero(buf) is True
    buf[-1] = 1
    assert mz.is_zero(buf) is False
    buf[-1] = 0
    for where in (0, 1, 4095, 4096, len(buf) // 2, len(buf) // 2 + 1, len(buf) - 256):
        buf[where] = 0x80
        assert mz.is_zero(buf) is False, where
        buf[where] = 0
    assert mz.is_zero(buf) is True


def test_large_buffer_markers_after_sampled_bytes(simd_path: str) -> None:
    """A marker in the aligned middle blocks of a 64 MiB buffer is found (not just the samples)."""
    n = 64 * 1024 * 1024
    arr = np.zeros(n + 64, dtype=np.uint8)
    for shift in (0, 3, 63):
        view = arr[shift : shift + n]
        assert mz.is_zero(view)
        for where in (7, 255, 256, 4097, n // 3, n // 2 - 1, n // 2 + 1, n - 257, n - 2):
            view[where] = 1
            assert not mz.is_zero(view), (shift, where)
            view[where] = 0


@pytest.mark.parametrize("value", [1, 0x80, 0xFF])
def test_every_bit_of_a_byte_counts(value: int) -> None:
    """Any non-zero byte value (low bit, high bit, all bits) makes a page non-zero."""
    for size in (1, 2, 3, 4, 8, 9, 255, 256, 4096):
        for where in {0, size // 3, size // 2, size - 1}:
            buf = bytearray(size)
            buf[where] = value
            assert not mz.is_zero(buf), (size, where)


def test_empty_buffers_are_zero() -> None:
    """Length 0 is zero for every kind (QEMU: len == 0 -> true)."""
    for empty in (b"", bytearray(), memoryview(b""), np.zeros(0), np.zeros((0, 5))):
        assert mz.is_zero(empty) is True


def test_returns_real_bool() -> None:
    """The result is a bool, not an int."""
    assert type(mz.is_zero(b"\0")) is bool
    assert type(mz.is_zero(b"\1")) is bool


# ------------------------------------------------------------------ buffer kinds


def _numpy_cases() -> list[tuple[str, np.ndarray]]:
    cases = []
    for dtype in (np.uint8, np.int8, np.int16, np.uint32, np.int64, np.uint64, np.float32,
                  np.float64, np.complex128, np.bool_):  # fmt: skip
        cases.append((np.dtype(dtype).name, np.zeros(1000, dtype=dtype)))
    cases.append(("2-D float64", np.zeros((64, 33), dtype=np.float64)))
    cases.append(("3-D uint16", np.zeros((4, 5, 6), dtype=np.uint16)))
    cases.append(("big-endian int32", np.zeros(300, dtype=">i4")))
    cases.append(("0-d float64", np.array(0.0)))
    return cases


@pytest.mark.parametrize(("label", "arr"), _numpy_cases(), ids=[c[0] for c in _numpy_cases()])
def test_numpy_arrays_of_any_dtype(label: str, arr: np.ndarray) -> None:
    """numpy arrays of any dtype and shape are checked byte by byte, writable or not."""
    assert mz.is_zero(arr)
    raw = arr.reshape(-1).view(np.uint8)
    for where in (0, raw.size // 2, raw.size - 1):
        raw[where] = 4
        assert not mz.is_zero(arr), where
        readonly = arr.view()
        readonly.flags.writeable = False
        assert not mz.is_zero(readonly), where
        raw[where] = 0
    frozen = arr.copy()
    frozen.flags.writeable = False
    assert mz.is_zero(frozen)


def test_negative_zero_and_nan_are_not_zero_bytes() -> None:
    """Bytes, not values: -0.0 equals 0 but has its sign bit set, so it is not a zero buffer."""
    neg = np.zeros(512, dtype=np.float64)
    neg[300] = -0.0
    assert (neg == 0).all()
    assert not mz.is_zero(neg)
    nan = np.zeros(512, dtype=np.float32)
    nan[511] = np.nan
    assert not mz.is_zero(nan)


def test_read_only_buffers() -> None:
    """bytes, read-only memoryviews and numpy views over bytes are fine."""
    data = bytes(5000)
    assert mz.is_zero(data)
    assert mz.is_zero(memoryview(data))
    assert mz.is_zero(memoryview(bytearray(5000)).toreadonly())
    ro = np.frombuffer(data, dtype=np.uint32)
    assert not ro.flags.writeable
    assert mz.is_zero(ro)
    assert not mz.is_zero(data[:4999] + b"\x01")
    assert not mz.is_zero(np.frombuffer(b"\0" * 4000 + b"\0\0\0\x10", dtype=np.uint32))


def test_memoryview_slices_and_casts() -> None:
    """Contiguous memoryview slices at odd offsets and cast formats see exactly their bytes."""
    buf = bytearray(10_000)
    buf[100] = 1
    mv = memoryview(buf)
    assert not mz.is_zero(mv)
    assert mz.is_zero(mv[101:])
    assert mz.is_zero(mv[:100])
    assert not mz.is_zero(mv[100:101])
    assert not mz.is_zero(mv[99:5000])
    assert mz.is_zero(mv[104:].cast("I"))
    assert not mz.is_zero(mv[:8000].cast("Q"))


def test_mmap_buffers() -> None:
    """An anonymous mmap (untouched, zero-filled pages) and a read-only file mmap."""
    size = 1 << 20
    mm = mmap.mmap(-1, size)
    try:
        assert mz.is_zero(mm)
        mm[size - 1] = 1
        assert not mz.is_zero(mm)
        mm[size - 1] = 0
        mm[12345] = 9
        assert not mz.is_zero(mm)
    finally:
        mm.close()


def test_read_only_file_mmap(tmp_path: object) -> None:
    """A read-only (ACCESS_READ) file mapping is accepted."""
    path = tmp_path / "zeros.bin"  # type: ignore[operator]
    path.write_bytes(bytes(3 * 4096) + b"\x00" * 100 + b"\x07")
    with path.open("rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            assert not mz.is_zero(mm)
            assert mz.is_zero(memoryview(mm)[: 3 * 4096])
        finally:
            mm.close()


def test_array_and_ctypes_buffers() -> None:
    """array.array and ctypes arrays (other buffer exporters) work too."""
    arr = array.array("d", [0.0] * 100)
    assert mz.is_zero(arr)
    arr[99] = 1.0
    assert not mz.is_zero(arr)
    carr = (ctypes.c_uint16 * 300)()
    assert mz.is_zero(carr)
    carr[150] = 2
    assert not mz.is_zero(carr)


def test_c_contiguous_views_of_larger_arrays() -> None:
    """A C-contiguous row block of a 2-D array is checked over its own bytes only."""
    arr = np.zeros((10, 4096), dtype=np.uint8)
    arr[3, 0] = 1
    assert mz.is_zero(arr[4:])
    assert mz.is_zero(arr[:3])
    assert not mz.is_zero(arr[3:4])
    assert mz.is_zero(arr[3, 1:])


# ----------------------------------------------------------- hypothesis vs model


@st.composite
def sparse_buffers(draw: st.DrawFn) -> bytearray:
    """Mostly-zero buffers of 0..6000 bytes with a few non-zero bytes anywhere."""
    size = draw(st.integers(0, 6000))
    buf = bytearray(size)
    if size:
        for _ in range(draw(st.integers(0, 3))):
            buf[draw(st.integers(0, size - 1))] = draw(st.integers(0, 255))
    return buf


@given(buf=sparse_buffers(), start=st.integers(0, 70), trim=st.integers(0, 70))
def test_hypothesis_sparse_slices_match_model(buf: bytearray, start: int, trim: int) -> None:
    """Any slice of a sparse buffer: ``is_zero`` agrees with the model."""
    view = memoryview(buf)[start : max(start, len(buf) - trim)]
    assert mz.is_zero(view) == ref_is_zero(view)


@given(data=st.binary(max_size=3000), start=st.integers(0, 64))
def test_hypothesis_binary_matches_model_on_every_path(data: bytes, start: int) -> None:
    """Arbitrary bytes at arbitrary starts, on every path: ``is_zero`` agrees with the model."""
    view = memoryview(data)[start:]
    expected = ref_is_zero(view)
    try:
        for name in mz.simd_paths():
            mz.set_simd(name)
            assert mz.is_zero(view) == expected, name
    finally:
        mz.set_simd("best")


@given(
    dtype=st.sampled_from(["u1", "i2", "u4", "f4", "f8", "c16", "u8"]),
    shape=st.tuples(st.integers(0, 40), st.integers(1, 40)),
    marks=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=2),
)
def test_hypothesis_numpy_matches_model(dtype: str, shape: tuple[int, int], marks: list) -> None:
    """2-D numpy arrays of several dtypes with random bytes set: agrees with the model."""
    arr = np.zeros(shape, dtype=dtype)
    raw = arr.reshape(-1).view(np.uint8)
    for where, value in marks:
        if raw.size:
            raw[where % raw.size] = value
    assert mz.is_zero(arr) == ref_is_zero(arr.tobytes())
