"""Turning user input into checked ``uint64`` offset arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from . import _kernels

OffsetArray = npt.NDArray[np.uint64]
_U64 = np.dtype(np.uint64)


def as_offsets(offsets: Any, name: str = "offsets") -> OffsetArray:
    """Return a new contiguous 1-D ``uint64`` array holding ``offsets``.

    Accepts integer sequences and integer numpy arrays; refuses floats, bools,
    strings, negative values and more than one dimension.
    """
    if type(offsets) is np.ndarray and offsets.dtype == _U64 and offsets.ndim == 1:
        # The common case, kept cheap: the generic conversions cost more than
        # detecting a whole batch does.
        copied: OffsetArray = offsets.copy()
        return copied
    if isinstance(offsets, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be a sequence of ints, not {type(offsets).__name__}")
    try:
        arr = np.asarray(offsets)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"{name} must be a sequence of ints: {exc}") from None
    if arr.ndim == 0:
        raise TypeError(f"{name} must be a sequence of ints, not {type(offsets).__name__}")
    if arr.dtype == object and arr.ndim == 1:
        raise TypeError(f"{name} must hold integers that fit in uint64, got dtype object")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got {arr.ndim} dimensions")
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "i" and (arr < 0).any():
        index = int(np.flatnonzero(arr < 0)[0])
        raise ValueError(f"{name}[{index}] = {int(arr[index])} is negative")
    out: OffsetArray = np.ascontiguousarray(arr, dtype=np.uint64).copy()
    return out


def check_offsets(
    offsets: OffsetArray, used_length: int, page_size: int, name: str = "offsets"
) -> None:
    """Raise ValueError unless every offset is page-aligned with its page inside the block."""
    _kernels.check_offsets(offsets, used_length, page_size, name)
