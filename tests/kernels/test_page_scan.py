"""``zero_page_mask`` and ``scan_zero_pages`` against the model, every page size 1 KiB..2 MiB."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.builders import PAGE_SIZES, batches, build_host, page_specs, u64
from support.qemu_model import ref_page_is_zero, ref_zero_page_mask

import multifd_zero as mz


@st.composite
def hosts(draw: st.DrawFn, page_sizes: tuple[int, ...] = PAGE_SIZES) -> tuple[int, bytearray]:
    """A page size and a host of a few pages of random kinds (fewer pages for big sizes)."""
    page_size = draw(st.sampled_from(page_sizes))
    max_pages = max(2, min(24, (1 << 22) // page_size))
    specs = draw(st.lists(page_specs(), min_size=0, max_size=max_pages))
    return page_size, build_host(specs, page_size)


@given(hosts())
def test_zero_page_mask_matches_model(case: tuple[int, bytearray]) -> None:
    """One bool per page, True exactly where the model says the page is all zero."""
    page_size, host = case
    mask = mz.zero_page_mask(host, page_size)
    assert mask.dtype == np.bool_
    assert mask.shape == (len(host) // page_size,)
    assert mask.tolist() == ref_zero_page_mask(host, page_size)


@given(hosts(), st.sampled_from(["bytes", "bytearray", "numpy-u8", "numpy-2d-f8", "memoryview"]))
def test_zero_page_mask_any_buffer_kind(case: tuple[int, bytearray], kind: str) -> None:
    """The mask is the same whatever buffer type holds the bytes (read-only included)."""
    page_size, host = case
    expected = ref_zero_page_mask(host, page_size)
    buf: object
    if kind == "bytes":
        buf = bytes(host)
    elif kind == "bytearray":
        buf = host
    elif kind == "numpy-u8":
        buf = np.frombuffer(bytes(host), dtype=np.uint8)  # read-only
    elif kind == "numpy-2d-f8":
        buf = np.frombuffer(bytes(host), dtype=np.float64).reshape(-1, page_size // 8)
    else:
        buf = memoryview(host).toreadonly()
    assert mz.zero_page_mask(buf, page_size).tolist() == expected


@pytest.mark.parametrize("page_size", PAGE_SIZES)
def test_zero_page_mask_single_byte_at_each_edge(page_size: int) -> None:
    """For each page size: a lone byte at the first, last, middle and a 3/4 position of a page."""
    pages = 4
    host = bytearray(pages * page_size)
    assert mz.zero_page_mask(host, page_size).tolist() == [True] * pages
    for where in (0, page_size - 1, page_size // 2, 3 * page_size // 4 + 1):
        for page in range(pages):
            host[page * page_size + where] = 1
            expected = [p != page for p in range(pages)]
            assert mz.zero_page_mask(host, page_size).tolist() == expected, (where, page)
            host[page * page_size + where] = 0


def test_zero_page_mask_default_page_size_is_4096() -> None:
    """Without ``page_size`` the pages are 4 KiB."""
    host = bytes(4096) + b"\x01" + bytes(4095)
    assert mz.zero_page_mask(host).tolist() == [True, False]


def test_zero_page_mask_empty() -> None:
    """An empty buffer has no pages."""
    mask = mz.zero_page_mask(b"", 1024)
    assert mask.shape == (0,)
    assert mask.dtype == np.bool_


@given(batches(page_sizes=PAGE_SIZES, max_pages=6, max_batch=40))
def test_scan_zero_pages_matches_model(batch: object) -> None:
    """One bool per offset, in offset order, duplicates included; the offsets are not touched."""
    offsets = u64(batch.offsets)  # type: ignore[attr-defined]
    before = offsets.copy()
    mask = mz.scan_zero_pages(batch.host, offsets, batch.page_size)  # type: ignore[attr-defined]
    expected = [ref_page_is_zero(batch.host, o, batch.page_size) for o in batch.offsets]  # type: ignore[attr-defined]
    assert mask.dtype == np.bool_
    assert mask.tolist() == expected
    np.testing.assert_array_equal(offsets, before)


@settings(max_examples=10)
@given(st.data())
def test_scan_zero_pages_read_only_offsets_and_host(data: st.DataObject) -> None:
    """Scanning only reads: read-only offsets and a bytes host are accepted."""
    batch = data.draw(batches(max_pages=8))
    offsets = u64(batch.offsets)
    offsets.flags.writeable = False
    mask = mz.scan_zero_pages(bytes(batch.host), offsets, batch.page_size)
    expected = [ref_page_is_zero(batch.host, o, batch.page_size) for o in batch.offsets]
    assert mask.tolist() == expected


@pytest.mark.parametrize("page_size", PAGE_SIZES)
def test_scan_zero_pages_every_page_size(page_size: int) -> None:
    """Each page size: non-zero pages found by their last byte, in any order, out of place."""
    pages = 3
    host = bytearray(pages * page_size)
    host[2 * page_size - 1] = 0x40  # page 1, last byte
    offsets = u64([2 * page_size, page_size, 0, page_size])
    assert mz.scan_zero_pages(host, offsets, page_size).tolist() == [True, False, True, False]
