"""The smaller findings of issue 14, and what the manifest's fuzz target found at once.

An input of no bytes that asked for 800 MB, a page view of a host that shrank, and
manifests that escaped SnapshotError (atheris, fuzz/fuzz_decoder.py, within seconds).
Each test failed before its fix."""

from __future__ import annotations

import json
import mmap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import multifd_zero as mz
from multifd_zero.errors import SnapshotError
from multifd_zero.snapshot import load_manifest

PS = 4096


@pytest.mark.parametrize("rows", [10**8, 2**40])
def test_rows_of_no_offsets_are_refused_without_allocating(rows: int) -> None:
    """partition_batches(b"", zeros((rows, 0))): a ValueError (was 800 MB at 10**8 rows and
    MemoryError at 2**40), with less than a megabyte allocated on the way."""
    offsets = np.zeros((rows, 0), np.uint64)  # no bytes at all
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=f"offsets has {rows} rows of no offsets .at most"):
            mz.partition_batches(b"", offsets)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak
    assert mz.partition_batches(b"", np.zeros((0, 0), np.uint64)).size == 0  # no rows: fine
    assert mz.partition_batches(b"", np.zeros((0, 4), np.uint64)).size == 0
    few = mz.partition_batches(b"", np.zeros((1 << 16, 0), np.uint64))  # a few empty batches
    assert few.size == 1 << 16 and not few.any()


def test_page_refuses_a_host_that_shrank() -> None:
    """RAMBlock.page() on a bytearray that lost bytes, or a closed mmap: ValueError, not an
    empty or short view."""
    host = bytearray(4 * PS)
    block = mz.RAMBlock("pc.ram", host)
    assert len(block.page(3 * PS)) == PS
    del host[2 * PS :]
    with pytest.raises(ValueError, match=r"host now holds 8192 bytes, not the block's 16384"):
        block.page(3 * PS)
    with pytest.raises(ValueError, match="now holds"):
        block.page(0)  # even a page still inside: the block is no longer what it was
    mm = mmap.mmap(-1, 2 * PS)
    mapped = mz.RAMBlock("pc.ram", mm)
    mm.close()
    with pytest.raises(ValueError, match="its host is gone"):
        mapped.page(0)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"format": "\xf2"}',  # not UTF-8 (UnicodeDecodeError)
        b"[" * 100_000,  # nested too deep (RecursionError)
        b'{"n": ' + b"9" * 5000 + b"}",  # more digits than int() takes (ValueError)
        json.dumps({"format": "multifd-zero-snapshot", "version": 1, "complete": True,
                    "page_size": 4096, "machine_type": "\ud800", "configuration": "07"},
                   ensure_ascii=True).encode(),  # a lone surrogate (UnicodeEncodeError)
    ],
    ids=["not-utf8", "deep", "digits", "surrogate"],
)
def test_a_hostile_manifest_is_a_snapshot_error(tmp_path: Path, raw: bytes) -> None:
    (tmp_path / "manifest.json").write_bytes(raw)
    with pytest.raises(SnapshotError, match=r"manifest\.json"):
        load_manifest(tmp_path)
