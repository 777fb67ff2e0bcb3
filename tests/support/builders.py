"""Test helpers: aligned buffers, synthetic pages and hypothesis strategies."""

from __future__ import annotations

import ctypes
import mmap
import sys
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

import multifd_zero as mz

PAGE_SIZES = tuple(1 << k for k in range(10, 22))  # 1 KiB .. 2 MiB
SMALL_PAGE_SIZES = tuple(1 << k for k in range(10, 17))  # 1 KiB .. 64 KiB

# The kinds of page a batch is built from. The single-byte kinds are the
# hardest for a zero check that samples (first, last, middle) or works in blocks.
KINDS = ("zero", "random", "first", "last", "middle", "pos")


def address_of(buf: bytearray) -> int:
    """The address of a bytearray's first byte."""
    return int(np.frombuffer(buf, dtype=np.uint8).ctypes.data)


def aligned_bytearray(size: int, alignment: int = 4096) -> tuple[bytearray, int]:
    """Return ``(buf, base)``: ``buf[base:base + size]`` starts on an ``alignment`` boundary."""
    buf = bytearray(size + alignment)
    base = (-address_of(buf)) % alignment
    return buf, base


def ctypes_address(obj: object) -> int:
    """The address of a writable buffer (mmap, bytearray) via ctypes."""
    holder = ctypes.c_char.from_buffer(obj)  # type: ignore[arg-type]
    try:
        return ctypes.addressof(holder)
    finally:
        del holder


LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
if LIBC is not None:
    LIBC.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    LIBC.mincore.restype = ctypes.c_int


def resident(mm: mmap.mmap, pages: int, page_size: int = mmap.PAGESIZE) -> list[int]:
    """mincore(2): 1 for each ``page_size`` page of ``mm`` whose first host page is resident."""
    assert LIBC is not None
    host_page = mmap.PAGESIZE
    vec = (ctypes.c_ubyte * (pages * page_size // host_page))()
    rc = LIBC.mincore(ctypes_address(mm), pages * page_size, vec)
    assert rc == 0, ctypes.get_errno()
    return [vec[p * page_size // host_page] & 1 for p in range(pages)]


def make_page(kind: str, page_size: int, value: int, position: int, seed: int) -> bytes:
    """One page of the given kind; ``value`` (1..255) is the non-zero byte of single-byte kinds."""
    if kind == "zero":
        return bytes(page_size)
    if kind == "random":
        rng = np.random.default_rng(seed)
        page = rng.integers(0, 256, size=page_size, dtype=np.uint8)
        return page.tobytes()
    where = {
        "first": 0,
        "last": page_size - 1,
        "middle": page_size // 2,
        "pos": position % page_size,
    }[kind]
    page = bytearray(page_size)
    page[where] = value
    return bytes(page)


@st.composite
def page_specs(draw: st.DrawFn) -> tuple[str, int, int, int]:
    """A page description: (kind, non-zero value, position, seed)."""
    kind = draw(st.sampled_from(KINDS))
    value = draw(st.integers(1, 255))
    position = draw(st.integers(0, (1 << 21) - 1))
    seed = draw(st.integers(0, 2**32 - 1))
    return kind, value, position, seed


@dataclass
class Batch:
    """A host block built from page specs and a queue of offsets into it."""

    page_size: int
    host: bytearray
    kinds: list[str]
    offsets: list[int]

    @property
    def num_pages(self) -> int:
        return len(self.kinds)


def build_host(specs: list[tuple[str, int, int, int]], page_size: int) -> bytearray:
    """Concatenate the pages described by ``specs``."""
    return bytearray(
        b"".join(make_page(kind, page_size, value, pos, seed) for kind, value, pos, seed in specs)
    )


@st.composite
def batches(
    draw: st.DrawFn,
    page_sizes: tuple[int, ...] = SMALL_PAGE_SIZES,
    max_pages: int = 24,
    max_batch: int | None = None,
    min_batch: int = 0,
) -> Batch:
    """A block of 1..max_pages pages of random kinds and a batch over it.

    The batch is a random sequence of page offsets: random order, duplicates
    allowed, at most the packet's page count.
    """
    page_size = draw(st.sampled_from(page_sizes))
    specs = draw(st.lists(page_specs(), min_size=1, max_size=max_pages))
    capacity = mz.multifd_ram_page_count(page_size)
    limit = capacity if max_batch is None else min(capacity, max_batch)
    indexes = draw(
        st.lists(st.integers(0, len(specs) - 1), min_size=min(min_batch, limit), max_size=limit)
    )
    host = build_host(specs, page_size)
    return Batch(page_size, host, [s[0] for s in specs], [i * page_size for i in indexes])


def u64(values: list[int]) -> np.ndarray:
    """A fresh ``uint64`` array."""
    return np.array(values, dtype=np.uint64)


def bitmap_bools(rmap: mz.ReceivedMap) -> list[bool]:
    """A receivedmap as one bool per page, read through its public ``test``."""
    return [rmap.test(i * rmap.page_size) for i in range(rmap.num_pages)]


def expected_best_simd() -> str:
    """The path "best" should pick here, worked out from /proc/cpuinfo, not from the kernels.

    The widest path the CPU has, except AVX2 on AMD family 19h (Zen 4 runs
    AVX-512 as two halves; csrc/dispatch.h says why).
    """
    paths = mz.simd_paths()
    vendor = family = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id" and not vendor:
                    vendor = value.strip()
                elif key.strip() == "cpu family" and not family:
                    family = value.strip()
    except OSError:
        pass
    if vendor == "AuthenticAMD" and family == "25" and "avx2" in paths:
        return "avx2"
    return paths[-1]
