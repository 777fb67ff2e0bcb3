"""The argument checks of the facade, one function per rule, each naming the argument.

Data is checked once, where it enters from the user; internal calls pass the
checked values on. The compiled kernels check their buffers again, in C: that
check is what keeps C from ever touching memory outside a buffer, whoever
calls it, and it is the only one on the hot path (a single branch-free pass).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from . import _kernels

OffsetArray = npt.NDArray[np.uint64]
_U64 = np.dtype(np.uint64)


def check_type(name: str, value: object, cls: type) -> None:
    """Raise TypeError unless ``value`` is a ``cls``."""
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be a {cls.__name__}, not {type(value).__name__}")


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a bool; raise TypeError otherwise (1 and 0 are not bools)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return value


def check_int(name: str, value: object, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` if it is an int (not a bool) in ``[low, high]``.

    Raises
    ------
    TypeError
        Not an int, or a bool.
    ValueError
        Out of range; the message gives the bounds.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    number = int(value)
    if low is not None and high is not None and not low <= number <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {number}")
    if low == 0 and number < 0:
        raise ValueError(f"{name} must not be negative, got {number}")
    if low is not None and number < low:
        raise ValueError(f"{name} must be at least {low}, got {number}")
    if high is not None and number > high:
        raise ValueError(f"{name} must be at most {high}, got {number}")
    return number


def as_offsets(offsets: Any, name: str = "offsets", *, copy: bool = True) -> OffsetArray:
    """Return a contiguous 1-D ``uint64`` array holding ``offsets``.

    Accepts integer sequences and integer numpy arrays; refuses floats, bools,
    strings, negative values and more than one dimension. With ``copy`` (the
    default) the result is always a new array that the caller may keep and
    reorder; without, a ``uint64`` array is passed on as it is, for a kernel
    that copies the offsets itself.
    """
    if type(offsets) is np.ndarray and offsets.dtype == _U64 and offsets.ndim == 1:
        # The common case, kept cheap: the generic conversions cost more than
        # detecting a whole batch does.
        if not copy and offsets.flags.c_contiguous:
            return offsets
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
