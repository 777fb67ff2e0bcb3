"""A small user program, type-checked by .ci/run with ``mypy --strict``.

It uses the installed package the way a migration tool would, so a stub or
annotation that is too loose (Any leaking out) or too strict (a buffer type
that rejects bytes, mmap or numpy arrays) fails CI. It also runs.
"""

from __future__ import annotations

import array
import mmap

import numpy as np
import numpy.typing as npt

import multifd_zero as mz
from multifd_zero import _kernels

PAGE = 4096


def main() -> int:
    source = bytearray(8 * PAGE)
    source[3 * PAGE] = 1
    block = mz.RAMBlock("pc.ram", bytes(source))
    pages = mz.MultiFDPages(block, [i * PAGE for i in range(8)])
    stats = mz.MigrationStats()
    options = mz.MigrationOptions(zero_page_detection=mz.ZeroPageDetection.MULTIFD)
    normal_num: int = mz.send_zero_page_detect(pages, options=options, stats=stats)
    zero: npt.NDArray[np.uint64] = pages.zero
    counters: dict[str, int] = stats.query_migrate(PAGE)

    dest = mz.RAMBlock("pc.ram", mmap.mmap(-1, 8 * PAGE))
    written: int = mz.recv_zero_page_process(dest, zero, options=options)
    mz.recv_normal_pages(dest, pages.normal, pages.normal_data())
    received: bool = dest.receivedmap.test(3 * PAGE)

    # Every kind of buffer the kernels take must type-check.
    checks: list[bool] = [
        mz.is_zero(b""),
        mz.is_zero(bytearray(3)),
        mz.is_zero(memoryview(b"\0")),
        mz.is_zero(array.array("Q", [0, 0])),
        mz.is_zero(np.zeros((2, 3), dtype=np.float32)),
        mz.is_zero(mmap.mmap(-1, PAGE)),
    ]
    mask: npt.NDArray[np.bool_] = mz.zero_page_mask(bytes(2 * PAGE), PAGE)
    offsets = np.arange(8, dtype=np.uint64) * np.uint64(PAGE)
    kept: int = mz.partition_zero_pages(bytes(source), offsets, page_size=PAGE)
    paths: tuple[str, ...] = mz.simd_paths()
    active: str = mz.get_simd()
    mode: int = _kernels.ZERO_ALWAYS
    version: str = mz.__version__

    assert normal_num == 1 and kept == 1 and counters["duplicate"] == 7
    assert written == 0 and received and all(checks) and bool(mask.all())
    assert active in paths and mode == 1 and version
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
