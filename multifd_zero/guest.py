"""The synthetic guest: RAM with a chosen share of zero pages, and the guest running.

One generator for the demo, the ``migrate`` command, the benchmarks and the
tests, so that their figures describe the same memory.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

__all__ = ["dirty_pages", "dirty_rounds", "make_guest_ram"]


def make_guest_ram(
    size: int,
    *,
    page_size: int = 4096,
    zero_ratio: float = 0.5,
    seed: int = 0,
    sparse_share: float = 0.25,
) -> npt.NDArray[np.uint8]:
    """Return ``size`` bytes of synthetic guest RAM, every page allocated.

    A ``zero_ratio`` share of the pages is all zero. Of the rest, a
    ``sparse_share`` holds a single non-zero byte at a random place (the
    hardest page for a zero check: it must be read to its end) and the others
    are random bytes. The zero pages are written too, so that a scan reads
    real memory rather than the kernel's one shared zero page.
    """
    if size <= 0 or size % page_size:
        raise ValueError(f"size must be a positive multiple of page_size {page_size}")
    if not 0.0 <= zero_ratio <= 1.0:
        raise ValueError(f"zero_ratio must be between 0 and 1, got {zero_ratio}")
    rng = np.random.default_rng(seed)
    n = size // page_size
    if not 0.0 <= sparse_share <= 1.0:
        raise ValueError(f"sparse_share must be between 0 and 1, got {sparse_share}")
    ram = np.empty((n, page_size), dtype=np.uint8)
    ram.fill(0)
    nonzero = np.flatnonzero(rng.random(n) >= zero_ratio)
    sparse = rng.random(nonzero.size) < sparse_share
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


def dirty_rounds(
    ram: npt.NDArray[np.uint8], page_size: int, rounds: int, ratio: float, seed: int
) -> Iterator[npt.NDArray[np.uint64]]:
    """The guest between rounds: ``rounds - 1`` times, a ``ratio`` share of pages is dirtied.

    Yields the dirtied pages' byte offsets (see :func:`dirty_pages`); the
    memory is changed just before each yield, so a migration that advances
    the generator only after a round is out sees the guest run between rounds.
    """
    rng = np.random.default_rng(seed + 1)
    for _ in range(rounds - 1):
        yield dirty_pages(ram, page_size, ratio, rng)
