"""The demo: a synthetic guest migrated batch by batch, checked page for page."""

from __future__ import annotations

import hashlib
import mmap
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .options import MigrationOptions, ZeroPageDetection
from .pages import MultiFDPages, multifd_ram_page_count
from .ramblock import RAMBlock
from .recv import recv_legacy_zero_pages, recv_normal_pages, recv_zero_page_process
from .send import save_zero_pages, send_zero_page_detect
from .stats import MigrationStats

__all__ = ["DemoResult", "dirty_pages", "make_guest_ram", "run_demo"]


def make_guest_ram(
    size: int, *, page_size: int = 4096, zero_ratio: float = 0.5, seed: int = 0
) -> npt.NDArray[np.uint8]:
    """Return ``size`` bytes of synthetic guest RAM.

    A ``zero_ratio`` share of the pages is all zero. Of the rest, three in four
    are random bytes and one in four holds a single non-zero byte at a random
    place (the hardest page for a zero check: it must be read to its end).
    """
    if size <= 0 or size % page_size:
        raise ValueError(f"size must be a positive multiple of page_size {page_size}")
    if not 0.0 <= zero_ratio <= 1.0:
        raise ValueError(f"zero_ratio must be between 0 and 1, got {zero_ratio}")
    rng = np.random.default_rng(seed)
    n = size // page_size
    ram = np.zeros((n, page_size), dtype=np.uint8)
    nonzero = np.flatnonzero(rng.random(n) >= zero_ratio)
    sparse = rng.random(nonzero.size) < 0.25
    dense_pages = nonzero[~sparse]
    ram[dense_pages] = rng.integers(0, 256, size=(dense_pages.size, page_size), dtype=np.uint8)
    # A random page can contain no non-zero byte only with negligible odds; force one.
    ram[dense_pages, page_size // 3] |= 1
    sparse_pages = nonzero[sparse]
    ram[sparse_pages, rng.integers(0, page_size, size=sparse_pages.size)] = rng.integers(
        1, 256, size=sparse_pages.size, dtype=np.uint8
    )
    return ram.reshape(-1)


def dirty_pages(
    ram: npt.NDArray[np.uint8], page_size: int, ratio: float, rng: np.random.Generator
) -> npt.NDArray[np.uint64]:
    """The guest runs between rounds: a ``ratio`` share of pages is dirtied.

    Half of the dirtied pages are zeroed, the other half get a non-zero byte at
    a random place. Returns the dirtied pages' byte offsets.
    """
    pages = ram.reshape(-1, page_size)
    dirty = np.flatnonzero(rng.random(pages.shape[0]) < ratio)
    to_zero = rng.random(dirty.size) < 0.5
    pages[dirty[to_zero]] = 0
    written = dirty[~to_zero]
    pages[written, rng.integers(0, page_size, size=written.size)] = rng.integers(
        1, 256, size=written.size, dtype=np.uint8
    )
    offsets: npt.NDArray[np.uint64] = dirty.astype(np.uint64) * np.uint64(page_size)
    return offsets


@dataclass
class DemoResult:
    """What a demo run measured."""

    size: int
    page_size: int
    rounds: int
    options: MigrationOptions
    stats: MigrationStats
    pages_sent: int = 0
    batches: int = 0
    zero_pages_written: int = 0
    detect_seconds: float = 0.0
    total_seconds: float = 0.0
    verified: bool = False
    source_sha256: str = ""
    destination_sha256: str = ""
    received_pages: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Return the result as plain JSON-ready data."""
        scanned = self.pages_sent * self.page_size
        return {
            "size_bytes": self.size,
            "page_size": self.page_size,
            "rounds": self.rounds,
            "zero_page_detection": str(self.options.zero_page_detection),
            "postcopy_ram": self.options.postcopy_ram,
            "batches": self.batches,
            "pages_sent": self.pages_sent,
            "query_migrate": self.stats.query_migrate(self.page_size),
            "zero_pages_written_on_destination": self.zero_pages_written,
            "received_pages": self.received_pages,
            "detect_seconds": self.detect_seconds,
            "detect_gb_per_s": scanned / self.detect_seconds / 1e9 if self.detect_seconds else 0,
            "total_seconds": self.total_seconds,
            "total_gb_per_s": scanned / self.total_seconds / 1e9 if self.total_seconds else 0,
            "verified": self.verified,
            "source_sha256": self.source_sha256,
            "destination_sha256": self.destination_sha256,
        }


def run_demo(
    *,
    size: int = 256 * 1024 * 1024,
    page_size: int = 4096,
    zero_ratio: float = 0.5,
    seed: int = 0,
    rounds: int = 2,
    dirty_ratio: float = 0.1,
    options: MigrationOptions | None = None,
) -> DemoResult:
    """Migrate a synthetic RAM block to a fresh destination and verify it.

    Round 1 sends every page; each later round first lets the "guest" dirty a
    ``dirty_ratio`` share of pages (half zeroed, half written) and then sends
    just those, as QEMU's dirty-bitmap rounds do. Batches are
    :func:`multifd_ram_page_count` pages in queue (ascending) order. The
    destination is fresh anonymous memory, so first-time zero pages in
    precopy are never written.
    """
    options = options or MigrationOptions()
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    start = time.perf_counter()
    ram = make_guest_ram(size, page_size=page_size, zero_ratio=zero_ratio, seed=seed)
    rng = np.random.default_rng(seed + 1)
    src = RAMBlock("pc.ram", ram, page_size)
    dst_mem = mmap.mmap(-1, size)
    dst = RAMBlock("pc.ram", dst_mem, page_size)
    stats = MigrationStats()
    result = DemoResult(size, page_size, rounds, options, stats)
    batch = multifd_ram_page_count(page_size)
    legacy = options.zero_page_detection is ZeroPageDetection.LEGACY
    t0 = time.perf_counter()
    for round_no in range(rounds):
        if round_no == 0:
            dirty = np.arange(size // page_size, dtype=np.uint64) * np.uint64(page_size)
        else:
            dirty = dirty_pages(ram, page_size, dirty_ratio, rng)
        for first in range(0, dirty.size, batch):
            queued = dirty[first : first + batch]
            d0 = time.perf_counter()
            if legacy:
                queued, zero = save_zero_pages(src, queued, options=options, stats=stats)
            pages = MultiFDPages(src, queued)
            send_zero_page_detect(pages, options=options, stats=stats)
            result.detect_seconds += time.perf_counter() - d0
            if legacy:
                result.zero_pages_written += recv_legacy_zero_pages(dst, zero)
            data = pages.normal_data()
            result.zero_pages_written += recv_zero_page_process(dst, pages.zero, options=options)
            recv_normal_pages(dst, pages.normal, data)
            result.batches += 1
        result.pages_sent += int(dirty.size)
    result.total_seconds = time.perf_counter() - t0
    dst_view = np.frombuffer(dst_mem, dtype=np.uint8)
    result.verified = bool(np.array_equal(dst_view, ram))
    result.source_sha256 = hashlib.sha256(ram.data).hexdigest()
    result.destination_sha256 = hashlib.sha256(dst_mem).hexdigest()
    result.received_pages = dst.receivedmap.count()
    result.extra["wall_seconds"] = time.perf_counter() - start
    del dst_view
    dst_mem.close()
    return result
