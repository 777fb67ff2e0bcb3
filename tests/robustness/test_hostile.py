"""Hostile input, fuzzed with hypothesis in a child process: errors, never crashes.

Every public function of the package (the facade, the compiled kernels, the
wire format's encoders and decoders, the main-stream reader and the
migration engine's argument checks) is called with arguments drawn from
strategies that mix valid values with hostile ones:

- wrong types (None, str, float, bool, lists, dicts, objects, huge ints);
- buffers of every kind: bytes, bytearray, memoryview (read-only, strided,
  2-D, cast to other formats, released, starting at an odd address), numpy
  arrays (every integer width, big-endian, float, bool, object, 0-d, 2-D,
  Fortran order, strided, read-only), ``array.array``, mmap (read-only,
  closed), and zero-length ones;
- offsets at and past the end of the block, misaligned, negative, huge,
  duplicated, in every dtype and container;
- page sizes 0, negative, 1, not a power of two, 2**21 + 1, 2**64, larger than
  the block, and numpy integers;
- huge counts (pages, page_count, bits, channels);
- packets: valid ones from the encoder, then truncated, extended, with bytes
  flipped, fields set to boundary values, names and offsets corrupted.

A call must return, or raise ``TypeError`` or ``ValueError`` (the wire
module's ``PacketError`` family are ``ValueError`` subclasses, and so
documented); after an error every input (buffers, offset arrays, bitmaps,
batches, stats) must be unchanged. What a call returns is checked where that
is cheap (is_zero and the partition against the model, decoded packets
against the decoder's own promises).

Each target runs in its own child interpreter (``run_child``), so that a
segfault or abort fails the test with the child's output instead of taking
pytest down. ``HYPOTHESIS_PROFILE`` sets the examples per target (``ci``: 100
for the cheap targets; ``release``: 1500).

The decoders are also fuzzed coverage-guided with atheris
(``fuzz/fuzz_decoder.py``), for ``MULTIFD_ZERO_FUZZ_SECONDS`` seconds (30 by
default, 300 with the ``release`` profile); see that file.
"""

from __future__ import annotations

import array
import importlib.util
import mmap
import operator
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.qemu_model import ref_is_zero, ref_partition
from support.receivers import CHECKOUT, check_child

import multifd_zero as mz
from multifd_zero import _kernels

ALLOWED = (TypeError, ValueError)

# ------------------------------------------------------------- hostile values

NOT_BUFFERS = (None, 0, 7, 1.5, "text", b"", [0, 0, 0, 0], (0,), {}, {0: 1}, object(),
               2**70, True, range(3), 1j)
WEIRD = (None, True, False, 4096.0, "4096", b"4096", [4096], (4096,), {}, object(), 1j,
         float("nan"), float("inf"), np.float64(4096), np.bool_(True))
HOSTILE_PAGE_SIZES = (0, -1, -4096, 1, 2, 3, 511, 512, 1000, 1023, 1025, 1536, 3072, 4095,
                      4097, 6144, 2**21 + 1, 2**21 + 2**20, 2**22, 2**31, 2**32, 2**62, 2**63,
                      2**64, 2**100, -(2**63), -(2**64))
NP_INTS = (np.int64(4096), np.uint64(4096), np.int32(1024), np.uint16(4096), np.int8(-1),
           np.uint64(2**64 - 1), np.int64(-(2**63)))
HUGE = (2**31, 2**32, 2**32 + 1, 2**40, 2**48, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64,
        2**100)

VALID_PS = st.sampled_from([1024, 2048, 4096, 8192])


def mostly(valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any],
           percent: int = 75) -> st.SearchStrategy[Any]:
    """``valid`` about ``percent`` % of the time, else ``hostile``."""
    return st.integers(0, 99).flatmap(lambda k: valid if k < percent else hostile)


def page_sizes() -> st.SearchStrategy[Any]:
    """Mostly a valid page size, else anything."""
    return mostly(VALID_PS, st.one_of(
        st.sampled_from(HOSTILE_PAGE_SIZES),
        st.integers(),
        st.sampled_from(WEIRD),
        st.sampled_from(NP_INTS),
    ))


def counts(valid: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    """A count: usually valid, else negative, zero, huge, a numpy int or a wrong type."""
    return st.one_of(
        valid,
        st.sampled_from((0, -1, -(2**63), *HUGE)),
        st.integers(),
        st.sampled_from(WEIRD),
        st.sampled_from(NP_INTS),
    )


FILLS = ("zero", "ones", "last", "first", "random")


def _content(draw: st.DrawFn, size: int) -> bytes:
    fill = draw(st.sampled_from(FILLS))
    if fill == "zero" or size == 0:
        return bytes(size)
    if fill == "ones":
        return b"\x01" * size
    if fill == "random":
        return draw(st.binary(min_size=size, max_size=size)) if size <= 256 else \
            np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    page = bytearray(size)
    page[-1 if fill == "last" else 0] = 0x5A
    return bytes(page)


BUFFER_KINDS = (
    "bytes", "bytearray", "mv", "mv-ro", "mv-strided", "mv-cast-Q", "mv-2d", "mv-released",
    "mv-odd", "np-u8", "np-u64", "np-i16", "np-f64", "np-bool", "np-be-u8", "np-2d", "np-F",
    "np-strided", "np-ro", "np-0d", "np-object", "array-Q", "array-b", "array-d", "mmap",
    "mmap-ro", "mmap-closed", "not-a-buffer",
)


@st.composite
def buffers(
    draw: st.DrawFn, size_hint: int, kinds: tuple[str, ...] = BUFFER_KINDS, exact: bool = False
) -> Any:
    """A buffer (or not) of about ``size_hint`` bytes (exactly, with ``exact``), of any kind."""
    kind = draw(st.sampled_from(kinds))
    size = size_hint if exact else draw(
        st.one_of(st.just(size_hint), st.just(0), st.integers(0, size_hint + 9000)))
    data = _content(draw, size)
    if kind == "bytes":
        return data
    if kind == "bytearray":
        return bytearray(data)
    if kind == "mv":
        return memoryview(bytearray(data))
    if kind == "mv-ro":
        return memoryview(bytearray(data)).toreadonly()
    if kind == "mv-strided":
        return memoryview(bytearray(data + data))[::2]
    if kind == "mv-cast-Q":
        return memoryview(bytearray(data[: size - size % 8])).cast("Q")
    if kind == "mv-2d":
        rows = draw(st.sampled_from([1, 2, 4]))
        cut = size - size % rows
        if cut == 0:
            return memoryview(bytearray(0))
        return memoryview(bytearray(data[:cut])).cast("B", shape=[rows, cut // rows])
    if kind == "mv-released":
        view = memoryview(bytearray(data))
        view.release()
        return view
    if kind == "mv-odd":
        return memoryview(bytearray(b"\x00" + data))[1:]
    if kind.startswith("np-"):
        return _numpy_buffer(draw, kind, data)
    if kind.startswith("array-"):
        code = kind[-1]
        item = array.array(code).itemsize
        arr = array.array(code)
        arr.frombytes(data[: size - size % item])
        return arr
    if kind == "mmap":
        mm = mmap.mmap(-1, max(size, 1))
        mm[: len(data)] = data
        return mm
    if kind == "mmap-ro":
        return _ro_copy(data) if data else mmap.mmap(-1, 1, prot=mmap.PROT_READ)
    if kind == "mmap-closed":
        mm = mmap.mmap(-1, max(size, 1))
        mm.close()
        return mm
    return draw(st.sampled_from(NOT_BUFFERS))


WRITABLE_KINDS = ("bytearray", "np-u8", "np-u64", "mmap", "mv", "mv-odd")


def hosts(size_hint: int) -> st.SearchStrategy[Any]:
    """Mostly a writable C-contiguous buffer of ``size_hint`` bytes; else anything."""
    return mostly(buffers(size_hint, WRITABLE_KINDS, exact=True), buffers(size_hint))


def _ro_copy(data: bytes) -> mmap.mmap:
    """A read-only mapping holding ``data`` (through a temporary file)."""
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        return mmap.mmap(f.fileno(), len(data), prot=mmap.PROT_READ)


def _numpy_buffer(draw: st.DrawFn, kind: str, data: bytes) -> Any:
    raw = np.frombuffer(bytearray(data), dtype=np.uint8).copy()
    if kind == "np-u8":
        return raw
    if kind in ("np-u64", "np-i16", "np-f64", "np-be-u8"):
        dtype = {"np-u64": np.uint64, "np-i16": np.int16, "np-f64": np.float64,
                 "np-be-u8": np.dtype(">u8")}[kind]
        item = np.dtype(dtype).itemsize
        return raw[: raw.size - raw.size % item].view(dtype)
    if kind == "np-bool":
        return raw.astype(bool)
    if kind == "np-2d":
        cols = draw(st.sampled_from([1, 8, 1024]))
        return raw[: raw.size - raw.size % cols].reshape(-1, cols)
    if kind == "np-F":
        cols = draw(st.sampled_from([2, 1024]))
        return np.asfortranarray(raw[: raw.size - raw.size % cols].reshape(-1, cols))
    if kind == "np-strided":
        return np.concatenate([raw, raw])[::2]
    if kind == "np-ro":
        raw.flags.writeable = False
        return raw
    if kind == "np-0d":
        return np.array(draw(st.integers(0, 255)), dtype=np.uint8)
    return np.array(list(data[:16]), dtype=object)


# --------------------------------------------------------------- offsets


def _base_ps(ps: Any) -> int:
    return ps if type(ps) is int and 1024 <= ps <= 2**21 and not ps & (ps - 1) else 4096


OFFSET_FORMS = ("list", "tuple", "u64", "u64", "u64", "i64", "u32", "i32", "u16", "u8",
                ">u8", "f64", "bool", "object", "2d", "strided", "ro", "empty", "not-seq",
                "generator")


@st.composite
def offset_values(draw: st.DrawFn, ps: int, num_pages: int) -> list[int]:
    page = st.integers(0, max(num_pages - 1, 0)).map(lambda p: p * ps)
    bad = st.one_of(
        page.map(lambda o: o + 1),
        st.builds(lambda o, d: o + d, page, st.integers(1, max(ps - 1, 1))),
        st.just(num_pages * ps),  # at the end
        st.integers(num_pages * ps, num_pages * ps + 16 * ps),  # past the end
        st.integers(-(2**64), -1),
        st.sampled_from(HUGE),
        st.sampled_from([2**64 - ps, 2**64 - 1, 2**63 - ps]),
    )
    return draw(mostly(st.lists(page, max_size=24),
                       st.lists(st.one_of(page, page, page, bad), max_size=24), 60))


@st.composite
def offsets(draw: st.DrawFn, ps: Any, num_pages: int, kernel: bool = False) -> Any:
    """Offsets in any container and dtype; ``kernel``: mostly native uint64 arrays."""
    base = _base_ps(ps)
    values = draw(offset_values(base, num_pages))
    form = draw(mostly(st.just("u64" if kernel else "list"), st.sampled_from(OFFSET_FORMS)))
    if form == "list":
        return values
    if form == "tuple":
        return tuple(values)
    if form == "empty":
        return draw(st.sampled_from([[], (), np.zeros(0, np.uint64), np.zeros(0, np.float64)]))
    if form == "not-seq":
        return draw(st.sampled_from((*NOT_BUFFERS, b"\0" * 16, bytearray(16), {1, 2}, "0")))
    if form == "generator":
        return iter(values)
    if form == "object":
        return np.array(values, dtype=object)
    dtypes = {"u64": np.uint64, "i64": np.int64, "u32": np.uint32, "i32": np.int32,
              "u16": np.uint16, "u8": np.uint8, ">u8": np.dtype(">u8"), "f64": np.float64,
              "bool": np.bool_}
    try:
        arr = np.array(values, dtype=dtypes.get(form, np.uint64))
    except (OverflowError, ValueError, TypeError):
        return values
    if form == "2d":
        if arr.size < 2:
            return arr.reshape(1, -1)
        return arr[: arr.size - arr.size % 2].reshape(-1, 2)
    if form == "strided":
        return np.repeat(arr, 2)[::2]
    if form == "ro":
        arr.flags.writeable = False
    return arr


# ------------------------------------------------------------ snapshots


def snap(obj: Any) -> Any:
    """A comparable copy of everything in ``obj`` a call could change."""
    if isinstance(obj, np.ndarray):
        content = repr(obj.tolist()) if obj.dtype == object else obj.tobytes()
        return ("ndarray", obj.dtype.str, obj.shape, content)
    if isinstance(obj, (bytes, bytearray)):
        return (type(obj).__name__, bytes(obj))
    if isinstance(obj, mmap.mmap):
        return ("mmap", None if obj.closed else obj[:])
    if isinstance(obj, memoryview):
        try:
            return ("memoryview", obj.tobytes(), obj.shape, obj.format)
        except ValueError:
            return ("memoryview", "released")
    if isinstance(obj, array.array):
        return ("array", obj.tobytes())
    if isinstance(obj, mz.RAMBlock):
        return ("RAMBlock", snap(obj.host), snap(obj.receivedmap.bitmap), obj.used_length)
    if isinstance(obj, mz.ReceivedMap):
        return ("ReceivedMap", snap(obj.bitmap))
    if isinstance(obj, mz.MultiFDPages):
        return ("MultiFDPages", snap(obj.offset), obj.normal_num, obj.detected,
                snap(obj.block))
    if isinstance(obj, mz.MigrationStats):
        return ("stats", obj.snapshot())
    if isinstance(obj, (list, tuple)):
        return [snap(o) for o in obj]
    if isinstance(obj, dict):
        return {k: snap(v) for k, v in obj.items()}
    return ("other", type(obj).__name__)


# ------------------------------------------------------------- the targets


@dataclass
class Case:
    """One call: the function, its arguments, what must not change on error, a result check."""

    call: Callable[[], Any]
    inputs: list[Any]
    check: Callable[[Any], None] | None = None
    label: str = ""
    memory_ok: bool = False
    """A MemoryError is acceptable: the call asked for a huge but possible allocation."""


TARGETS: dict[str, Callable[[st.DataObject], Case]] = {}


def target(name: str) -> Callable[[Callable[[st.DataObject], Case]], Callable[..., Case]]:
    def register(fn: Callable[[st.DataObject], Case]) -> Callable[..., Case]:
        TARGETS[name] = fn
        return fn

    return register


@st.composite
def blocks(draw: st.DrawFn, writable: bool = True, hostile: bool = True) -> Any:
    """A RAMBlock (usually) over a valid host; sometimes something else entirely."""
    if hostile and draw(st.integers(0, 99)) >= 90:
        return draw(st.sampled_from((*NOT_BUFFERS, bytearray(4096))))
    ps = draw(st.sampled_from([1024, 4096]))
    pages = draw(st.integers(1, 9))
    content = bytearray(pages * ps)
    for p in range(pages):
        if draw(st.booleans()):
            content[p * ps + (p * 131) % ps] = 1 + p
    kind = draw(st.sampled_from(("bytearray", "np-u8", "np-u64", "mmap", "mv")
                                + (() if writable else ("bytes",))))
    if kind == "bytearray":
        host: Any = content
    elif kind == "np-u8":
        host = np.frombuffer(content, dtype=np.uint8).copy()
    elif kind == "np-u64":
        host = np.frombuffer(content, dtype=np.uint64).copy()
    elif kind == "mmap":
        host = mmap.mmap(-1, len(content))
        host[:] = content
    elif kind == "mv":
        host = memoryview(content)
    else:
        host = bytes(content)
    block = mz.RAMBlock("pc.ram", host, ps, on_release=lambda offs: None)
    for p in draw(st.lists(st.integers(0, pages - 1), max_size=3)):
        block.receivedmap.set(p * ps)
    return block


def options_values() -> st.SearchStrategy[Any]:
    return mostly(
        st.builds(mz.MigrationOptions, st.sampled_from(["none", "legacy", "multifd"]),
                  st.booleans(), st.booleans()),
        st.sampled_from((*WEIRD, "multifd", mz.ZeroPageDetection.MULTIFD)),
        90,
    )


def stats_values() -> st.SearchStrategy[Any]:
    return mostly(
        st.builds(mz.MigrationStats, st.integers(0, 10), st.integers(0, 10)),
        st.sampled_from((*WEIRD, (1, 2))),
        90,
    )


def bools() -> st.SearchStrategy[Any]:
    return mostly(st.booleans(), st.sampled_from((0, 1, None, "yes", np.bool_(True))), 90)


def _check_is_zero(buf: Any) -> Callable[[Any], None]:
    def check(result: Any) -> None:
        assert result is True or result is False
        assert result == ref_is_zero(memoryview(buf).tobytes())

    return check


@target("is_zero")
def _is_zero(data: st.DataObject) -> Case:
    buf = data.draw(buffers(4096), label="buf")
    return Case(lambda: mz.is_zero(buf), [buf], _check_is_zero(buf))


@target("zero_page_mask")
def _zero_page_mask(data: st.DataObject) -> Case:
    ps = data.draw(page_sizes(), label="page_size")
    buf = data.draw(buffers(3 * _base_ps(ps)), label="buf")

    def check(mask: Any) -> None:
        raw = memoryview(buf).tobytes()
        assert mask.dtype == bool and mask.size == len(raw) // ps
        assert mask.tolist() == [ref_is_zero(raw[i : i + ps]) for i in range(0, len(raw), ps)]

    return Case(lambda: mz.zero_page_mask(buf, ps), [buf], check)


def _partition_check(host: Any, before: list[int], ps: int, offs: Any) -> Callable[[Any], None]:
    def check(normal: Any) -> None:
        model = ref_partition(memoryview(host).tobytes(), before, ps)
        assert normal == model.normal_num and offs.tolist() == model.offsets

    return check


@target("partition_zero_pages")
def _partition(data: st.DataObject) -> Case:
    ps = data.draw(page_sizes(), label="page_size")
    base = _base_ps(ps)
    host = data.draw(hosts(4 * base), label="host")
    offs = data.draw(offsets(ps, 4, kernel=True), label="offsets")
    before = offs.tolist() if isinstance(offs, np.ndarray) and offs.dtype != object else None
    check = _partition_check(host, before, ps, offs) if before is not None and \
        offs.ndim == 1 else None
    return Case(lambda: mz.partition_zero_pages(host, offs, ps), [host, offs], check)


@target("partition_batches")
def _partition_batches(data: st.DataObject) -> Case:
    ps = data.draw(page_sizes(), label="page_size")
    host = data.draw(hosts(4 * _base_ps(ps)), label="host")
    offs = data.draw(offsets(ps, 4, kernel=True), label="offsets")
    if isinstance(offs, np.ndarray) and offs.ndim == 1 and data.draw(st.booleans()):
        cols = data.draw(st.integers(1, 4))
        offs = offs[: offs.size - offs.size % cols].reshape(-1, cols)
    return Case(lambda: mz.partition_batches(host, offs, ps), [host, offs])


@target("scan_zero_pages")
def _scan(data: st.DataObject) -> Case:
    ps = data.draw(page_sizes(), label="page_size")
    host = data.draw(hosts(4 * _base_ps(ps)), label="host")
    offs = data.draw(offsets(ps, 4, kernel=True), label="offsets")
    return Case(lambda: mz.scan_zero_pages(host, offs, ps), [host, offs])


@target("gather_pages")
def _gather(data: st.DataObject) -> Case:
    ps = data.draw(page_sizes(), label="page_size")
    base = _base_ps(ps)
    host = data.draw(hosts(4 * base), label="host")
    offs = data.draw(offsets(ps, 4, kernel=True), label="offsets")
    n = len(offs) if isinstance(offs, np.ndarray) and offs.ndim == 1 else 1
    out = data.draw(hosts(n * base), label="out")
    return Case(lambda: _kernels.gather_pages(host, offs, out, ps), [host, offs, out])


def _bitmaps(data: st.DataObject, pages: int) -> Any:
    words = (pages + 63) // 64
    return data.draw(
        st.one_of(
            st.builds(lambda w: np.zeros(w, np.uint64), st.sampled_from([words, words, 0,
                                                                         words + 1])),
            buffers(8 * words),
        ),
        label="receivedmap",
    )


@target("recv_zero_pages")
def _recv_zero(data: st.DataObject) -> Case:
    ps = data.draw(page_sizes(), label="page_size")
    host = data.draw(hosts(4 * _base_ps(ps)), label="host")
    rmap = _bitmaps(data, 4)
    offs = data.draw(offsets(ps, 4, kernel=True), label="offsets")
    mode = data.draw(st.one_of(st.sampled_from([0, 1, 2]),
                               st.sampled_from((*WEIRD, 3, -1, 2**64))))
    return Case(lambda: _kernels.recv_zero_pages(host, rmap, offs, ps, mode), [host, rmap, offs])


@target("recv_normal_pages_kernel")
def _recv_normal_kernel(data: st.DataObject) -> Case:
    ps = data.draw(page_sizes(), label="page_size")
    base = _base_ps(ps)
    host = data.draw(hosts(4 * base), label="host")
    rmap = _bitmaps(data, 4)
    offs = data.draw(offsets(ps, 4, kernel=True), label="offsets")
    n = len(offs) if isinstance(offs, np.ndarray) and offs.ndim == 1 else 1
    payload = data.draw(hosts(n * base), label="data")
    return Case(lambda: _kernels.recv_normal_pages(host, rmap, offs, payload, ps),
                [host, rmap, offs, payload])


@target("bitmap_ops")
def _bitmap_ops(data: st.DataObject) -> Case:
    rmap = _bitmaps(data, 128)
    bit = data.draw(counts(st.integers(0, 130)), label="bit")
    op = data.draw(st.sampled_from(["test", "set", "clear", "count"]), label="op")
    fn = getattr(_kernels, f"bitmap_{op}")
    call = (lambda: fn(rmap)) if op == "count" else (lambda: fn(rmap, bit))
    return Case(call, [rmap])


@target("check_page_size")
def _check_page_size(data: st.DataObject) -> Case:
    ps = data.draw(page_sizes(), label="page_size")

    def check(result: Any) -> None:
        assert type(result) is int and 1024 <= result <= 2**21 and not result & (result - 1)

    return Case(lambda: _kernels.check_page_size(ps), [], check)


@target("RAMBlock")
def _ramblock(data: st.DataObject) -> Case:
    idstr = data.draw(st.one_of(st.sampled_from(["pc.ram", "x" * 255, "x" * 256, "", "a\0b",
                                                 "é" * 128, "é" * 127]),
                                st.text(max_size=300), st.sampled_from(WEIRD)), label="idstr")
    ps = data.draw(page_sizes(), label="page_size")
    host = data.draw(hosts(4 * _base_ps(ps)), label="host")
    on_release = data.draw(st.sampled_from([None, lambda offs: None, 5, "f"]),
                           label="on_release")
    offset = data.draw(counts(st.integers(0, 5 * _base_ps(ps))), label="offset")
    offs = data.draw(offsets(ps, 4), label="offsets")
    method = data.draw(st.sampled_from(["init", "page", "release_pages"]))

    def call() -> Any:
        block = mz.RAMBlock(idstr, host, ps, on_release=on_release)
        if method == "page":
            view = block.page(offset)
            assert view.readonly and view.nbytes == block.page_size
            view.release()
        elif method == "release_pages":
            block.release_pages(offs)
        return block

    return Case(call, [host, offs])


@target("ReceivedMap")
def _receivedmap(data: st.DataObject) -> Case:
    num_pages = data.draw(counts(st.integers(0, 200)), label="num_pages")
    ps = data.draw(page_sizes(), label="page_size")
    offset = data.draw(st.one_of(counts(st.integers(0, 300).map(lambda p: p * 4096)),
                                 st.integers(-5, 2**20)), label="offset")
    op = data.draw(st.sampled_from(["test", "set", "clear", "count", "received_offsets"]))

    def call() -> Any:
        rmap = mz.ReceivedMap(num_pages, ps)
        if op in ("count", "received_offsets"):
            return getattr(rmap, op)()
        return getattr(rmap, op)(offset)

    # A map for more memory than a 64-bit process can address describes no
    # block at all: that is a ValueError. Below that, a map too big for this
    # machine may honestly fail to allocate.
    try:
        described = int(num_pages) * int(ps)
    except (TypeError, ValueError, OverflowError):
        described = -1
    return Case(call, [], memory_ok=0 <= described <= sys.maxsize)


@target("MultiFDPages")
def _multifd_pages(data: st.DataObject) -> Case:
    block = data.draw(blocks(writable=False), label="block")
    ps = getattr(block, "page_size", 4096)
    offs = data.draw(offsets(ps, getattr(block, "num_pages", 4)), label="offsets")
    page_count = data.draw(st.one_of(st.none(), counts(st.integers(1, 40))), label="page_count")

    def call() -> Any:
        pages = mz.MultiFDPages(block, offs, page_count=page_count)
        assert pages.num <= pages.page_count
        return pages

    return Case(call, [block, offs])


@target("send_zero_page_detect")
def _send(data: st.DataObject) -> Case:
    block = data.draw(blocks(writable=False, hostile=False), label="block")
    offs = data.draw(st.lists(st.integers(0, block.num_pages - 1), max_size=10), label="pages")
    pages: Any = mz.MultiFDPages(block, [p * block.page_size for p in offs])
    damage = data.draw(st.integers(0, 99), label="damage")
    if damage >= 95:
        pages = data.draw(st.sampled_from((*WEIRD, block)))
    elif damage >= 90:
        pages.offset[:] = np.uint64(2**63)  # damaged after construction
    options = data.draw(options_values(), label="options")
    stats = data.draw(stats_values(), label="stats")
    in_postcopy = data.draw(bools(), label="in_postcopy")
    return Case(
        lambda: mz.send_zero_page_detect(pages, options=options, stats=stats,
                                         in_postcopy=in_postcopy),
        [pages, stats],
    )


@target("save_zero_pages")
def _save(data: st.DataObject) -> Case:
    block = data.draw(blocks(writable=False), label="block")
    offs = data.draw(offsets(getattr(block, "page_size", 4096), getattr(block, "num_pages", 4)),
                     label="offsets")
    options = data.draw(options_values(), label="options")
    stats = data.draw(stats_values(), label="stats")
    in_postcopy = data.draw(bools(), label="in_postcopy")
    return Case(
        lambda: mz.save_zero_pages(block, offs, options=options, stats=stats,
                                   in_postcopy=in_postcopy),
        [block, offs, stats],
    )


@target("recv_zero_page_process")
def _recv_zero_facade(data: st.DataObject) -> Case:
    block = data.draw(blocks(writable=data.draw(st.booleans())), label="block")
    offs = data.draw(offsets(getattr(block, "page_size", 4096), getattr(block, "num_pages", 4)),
                     label="offsets")
    options = data.draw(options_values(), label="options")
    return Case(lambda: mz.recv_zero_page_process(block, offs, options=options), [block, offs])


@target("recv_normal_pages")
def _recv_normal_facade(data: st.DataObject) -> Case:
    block = data.draw(blocks(writable=data.draw(st.booleans())), label="block")
    ps = getattr(block, "page_size", 4096)
    offs = data.draw(offsets(ps, getattr(block, "num_pages", 4)), label="offsets")
    n = len(offs) if hasattr(offs, "__len__") and not isinstance(offs, (str, bytes)) else 1
    payload = data.draw(hosts(max(n, 0) * ps), label="data")
    return Case(lambda: mz.recv_normal_pages(block, offs, payload), [block, offs, payload])


@target("recv_legacy_zero_pages")
def _recv_legacy(data: st.DataObject) -> Case:
    block = data.draw(blocks(writable=data.draw(st.booleans())), label="block")
    offs = data.draw(offsets(getattr(block, "page_size", 4096), getattr(block, "num_pages", 4)),
                     label="offsets")
    return Case(lambda: mz.recv_legacy_zero_pages(block, offs), [block, offs])


@target("small_api")
def _small_api(data: st.DataObject) -> Case:
    which = data.draw(st.sampled_from(["options", "stats", "stats.add", "query_migrate",
                                       "page_count", "set_simd"]), label="function")
    a = data.draw(st.one_of(counts(st.integers(0, 10)), st.sampled_from(
        ["none", "legacy", "multifd", "MULTIFD", "", "best", "portable", "avx9"])), label="a")
    b = data.draw(st.one_of(counts(st.integers(0, 10)), bools()), label="b")
    stats = mz.MigrationStats(3, 4)
    calls: dict[str, Callable[[], Any]] = {
        "options": lambda: mz.MigrationOptions(a, b, b),
        "stats": lambda: mz.MigrationStats(a, b),
        "stats.add": lambda: stats.add(a, b),
        "query_migrate": lambda: stats.query_migrate(a),
        "page_count": lambda: mz.multifd_ram_page_count(a),
        "set_simd": lambda: mz.set_simd(a),
    }
    return Case(calls[which], [stats])


@target("migrate")
def _migrate(data: st.DataObject) -> Case:
    src = data.draw(blocks(writable=False), label="source")
    dst = data.draw(st.one_of(st.none(), blocks()), label="destination")
    channels = data.draw(counts(st.integers(1, 3)), label="channels")
    page_count = data.draw(st.one_of(st.none(), counts(st.integers(1, 8))), label="page_count")
    transport = data.draw(st.sampled_from(["inprocess", "inprocess", "tcp!", "", None, 5]),
                          label="transport")
    ps = getattr(src, "page_size", 4096)
    dirty = data.draw(st.one_of(st.none(), st.lists(offsets(ps, getattr(src, "num_pages", 4)),
                                                    max_size=2), st.sampled_from(WEIRD)),
                      label="dirty")
    timeout = data.draw(st.sampled_from([10.0, 10, 0, -1, float("nan"), "10", None]),
                        label="timeout")
    options = data.draw(st.one_of(st.none(), options_values()), label="options")
    return Case(
        lambda: mz.migrate(src, dst, channels=channels, options=options, page_count=page_count,
                           transport=transport, dirty=dirty, timeout=timeout),
        [src],  # the source never changes; the destination may have been written before an error
        label="migrate",
    )


# ----------------------------------------------------------- the wire format

BLOCKS = {"pc.ram": 64 * 4096, "small": 4096, "é": 8 * 4096}


@st.composite
def ram_packets(draw: st.DrawFn) -> tuple[Any, int, int, dict[str, int]]:
    """A valid packet for (page_count, page_size, blocks), as the encoder writes it."""
    from multifd_zero import wire

    page_size = draw(st.sampled_from([1024, 4096]))
    page_count = draw(st.sampled_from([1, 2, 8, 128, 512]))
    blocks_ = {name: length * page_size // 4096 for name, length in BLOCKS.items()}
    name = draw(st.sampled_from(sorted(blocks_)))
    pages = blocks_[name] // page_size
    num = draw(st.integers(0, page_count))
    normal = draw(st.integers(0, num))
    offs = draw(st.lists(st.integers(0, pages - 1), min_size=num, max_size=num))
    packet = wire.RamPacket(
        flags=draw(st.sampled_from([0, wire.MULTIFD_FLAG_SYNC])),
        pages_alloc=draw(st.integers(num, page_count)),
        normal_pages=normal,
        zero_pages=num - normal,
        next_packet_size=normal * page_size,
        packet_num=draw(st.integers(0, 2**64 - 1)),
        ramblock=name if num else "",
        offsets=np.array([o * page_size for o in offs], dtype=np.uint64),
    )
    return packet, page_count, page_size, blocks_


FIELDS = {  # offset, size of each header field
    "magic": (0, 4), "version": (4, 4), "flags": (8, 4), "pages_alloc": (12, 4),
    "normal_pages": (16, 4), "next_packet_size": (20, 4), "packet_num": (24, 8),
    "zero_pages": (32, 4), "unused32": (36, 4), "unused64": (40, 24),
}


@st.composite
def corrupted(draw: st.DrawFn, raw: bytes, page_count: int) -> tuple[bytes, str]:
    """``raw`` truncated, extended, flipped, or with a field, name or offset set to a bad value."""
    how = draw(st.sampled_from(["none", "truncate", "extend", "flip", "field", "name", "offset",
                                "random"]))
    buf = bytearray(raw)
    if how == "truncate":
        return bytes(buf[: draw(st.integers(0, max(len(buf) - 1, 0)))]), how
    if how == "extend":
        return bytes(buf) + draw(st.binary(min_size=1, max_size=64)), how
    if how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] ^= draw(st.integers(1, 255))
    elif how == "field":
        field = draw(st.sampled_from(sorted(FIELDS)))
        start, size = FIELDS[field]
        value = draw(st.one_of(st.sampled_from([0, 1, page_count, page_count + 1, 2**31,
                                                2**32 - 1, 2**size * 8 - 1]),
                               st.integers(0, 2 ** (8 * size) - 1)))
        buf[start : start + size] = (value % 2 ** (8 * size)).to_bytes(size, "big")
    elif how == "name":
        name = draw(st.one_of(st.binary(max_size=256), st.sampled_from(
            [b"pc.ram", b"pc.ram\0junk", b"\xff\xfe", b"x" * 256, b"", "é".encode()])))
        pad = b"\0" if draw(st.booleans()) else b"x"
        field = name[:256].ljust(256, pad)
        buf[64:320] = field
    elif how == "offset":
        slot = draw(st.integers(0, page_count - 1))
        value = draw(st.one_of(st.integers(0, 2**64 - 1), st.sampled_from(
            [1, 1023, 4095, 4096, 64 * 4096, 2**63, 2**64 - 1, 2**64 - 4096])))
        buf[320 + 8 * slot : 328 + 8 * slot] = value.to_bytes(8, "big")
    elif how == "random":
        return draw(st.binary(max_size=len(buf) + 16)), how
    return bytes(buf), how


def _wrap(data: st.DataObject, raw: bytes) -> Any:
    """The packet bytes in some buffer, or in something that is not one."""
    kind = data.draw(st.sampled_from(["bytes", "bytes", "bytearray", "mv", "mv-ro", "np-u8",
                                      "np-u64", "mv-strided", "mmap", "not-a-buffer",
                                      "np-2d"]), label="packet buffer")
    if kind == "bytes":
        return raw
    if kind == "bytearray":
        return bytearray(raw)
    if kind == "mv":
        return memoryview(bytearray(raw))
    if kind == "mv-ro":
        return memoryview(raw)
    if kind == "np-u8":
        return np.frombuffer(raw, dtype=np.uint8)
    if kind == "np-u64":
        return np.frombuffer(raw[: len(raw) - len(raw) % 8], dtype=np.uint64)
    if kind == "np-2d":
        cut = len(raw) - len(raw) % 4
        return np.frombuffer(raw[:cut], dtype=np.uint8).reshape(4, -1) if cut else raw
    if kind == "mv-strided":
        return memoryview(bytes(b for pair in zip(raw, raw, strict=True) for b in pair))[::2]
    if kind == "mmap":
        mm = mmap.mmap(-1, max(len(raw), 1))
        mm[: len(raw)] = raw
        return mm
    return data.draw(st.sampled_from(NOT_BUFFERS))


def valid_page_size(value: Any) -> bool:
    """A power of two from 1 KiB to 2 MiB, given as an integer (not a bool)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        return False
    number = int(value)
    return 1024 <= number <= 2**21 and not number & (number - 1)


def check_decoded(pkt: Any, page_count: Any, page_size: Any, blocks_: Any) -> None:
    """What every packet the decoder returns must satisfy (its documented checks)."""
    from multifd_zero import wire

    assert isinstance(pkt, wire.RamPacket)
    # A receiver configured with an impossible page size must not accept anything.
    assert valid_page_size(page_size), f"a packet accepted with page_size {page_size!r}"
    num = pkt.normal_pages + pkt.zero_pages
    assert pkt.normal_pages >= 0 and pkt.zero_pages >= 0
    assert num <= pkt.pages_alloc <= page_count
    assert pkt.offsets.dtype == np.uint64 and pkt.offsets.size == num
    assert pkt.next_packet_size == pkt.normal_pages * page_size
    assert pkt.flags & ~wire.MULTIFD_FLAG_SYNC == 0
    if num:
        assert pkt.ramblock in blocks_
        used = blocks_[pkt.ramblock]
        # As a Python int: a page size drawn as np.uint16 would overflow in o + ps.
        ps = operator.index(page_size)
        assert all(o % ps == 0 and o + ps <= used for o in pkt.offsets.tolist())


@target("decode_packet")
def _decode_packet(data: st.DataObject) -> Case:
    from multifd_zero import wire

    packet, page_count, page_size, blocks_ = data.draw(ram_packets(), label="packet")
    raw = wire.encode_packet(packet, page_count)
    mutated, how = data.draw(corrupted(raw, page_count), label="corruption")
    buf = _wrap(data, mutated)
    # The receiver's own configuration, sometimes hostile too.
    pc = data.draw(st.one_of(st.just(page_count), counts(st.integers(1, 600))), label="page_count")
    ps = data.draw(st.one_of(st.just(page_size), page_sizes()), label="page_size")
    known = data.draw(st.one_of(st.just(blocks_), st.sampled_from(
        [{}, {"pc.ram": -4096}, {"pc.ram": 4095}, {"pc.ram": 1.5e6}, {"pc.ram": "big"},
         {"pc.ram": None}, {"pc.ram": 2**70}, [("pc.ram", 4096)], None, "pc.ram"])),
        label="blocks")

    def check(pkt: Any) -> None:
        check_decoded(pkt, pc, ps, known)
        if how == "none" and (pc, ps, known) == (page_count, page_size, blocks_):
            assert pkt[:7] == packet[:7] and pkt.offsets.tolist() == packet.offsets.tolist()

    return Case(lambda: wire.decode_packet(buf, page_count=pc, page_size=ps, blocks=known),
                [buf], check)


@target("check_header")
def _check_header(data: st.DataObject) -> Case:
    from multifd_zero import wire

    packet, page_count, _, _ = data.draw(ram_packets(), label="packet")
    mutated, _ = data.draw(corrupted(wire.encode_packet(packet, page_count)[:16], 1))
    buf = _wrap(data, mutated)
    return Case(lambda: wire.check_header(buf), [buf])


@target("decode_init")
def _decode_init(data: st.DataObject) -> Case:
    from multifd_zero import wire

    uuid = data.draw(st.binary(min_size=16, max_size=16))
    raw = bytearray(wire.encode_init(uuid, data.draw(st.integers(0, 255))))
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, 63))
        raw[i] ^= data.draw(st.integers(1, 255))
    raw = raw[: data.draw(st.integers(0, 70))] if data.draw(st.booleans()) else raw
    buf = _wrap(data, bytes(raw))
    want = data.draw(st.one_of(st.none(), st.just(uuid), st.binary(max_size=20),
                               st.sampled_from(WEIRD)))
    channels = data.draw(st.one_of(st.none(), counts(st.integers(1, 256))))

    def check(init: Any) -> None:
        assert len(init.uuid) == 16 and 0 <= init.id <= 255
        if channels is not None:
            assert isinstance(channels, (int, np.integer)) and init.id < channels

    return Case(lambda: wire.decode_init(buf, uuid=want, channels=channels), [buf], check)


@target("wire_encoders")
def _encoders(data: st.DataObject) -> Case:
    from multifd_zero import wire

    which = data.draw(st.sampled_from(["packet_len", "encode_name", "encode_init",
                                       "encode_packet", "fill_packet"]))
    page_count = data.draw(counts(st.integers(1, 130)), label="page_count")
    name = data.draw(st.one_of(st.text(max_size=300), st.binary(max_size=300),
                               st.sampled_from(WEIRD)), label="name")
    number = data.draw(counts(st.integers(0, 2**64 - 1)), label="number")
    offs = data.draw(offsets(4096, 8, kernel=True), label="offsets")
    buf = data.draw(buffers(1344), label="buf")
    normal = data.draw(counts(st.integers(0, 4)), label="normal_pages")

    def encode_packet() -> Any:
        num = len(offs) if isinstance(offs, np.ndarray) else 0
        packet = wire.RamPacket(0, number, normal, num - normal if isinstance(normal, int) else 0,
                                0, 0, name, offs)
        return wire.encode_packet(packet, page_count)

    calls: dict[str, Callable[[], Any]] = {
        "packet_len": lambda: wire.packet_len(page_count),
        "encode_name": lambda: wire.encode_name(name),
        "encode_init": lambda: wire.encode_init(name, number),
        "encode_packet": encode_packet,
        "fill_packet": lambda: wire.fill_packet(
            buf, page_count, offsets=offs, normal_pages=normal, ramblock=name,
            packet_num=number, next_packet_size=0),
    }
    # fill_packet writes buf by design; it must not change the offsets.
    return Case(calls[which], [offs] if which == "fill_packet" else [buf, offs])


class BytesChannel:
    """A channel over fixed bytes, read in chunks of the given sizes (then 0: end of stream)."""

    def __init__(self, raw: bytes, chunks: list[int]) -> None:
        self.raw = raw
        self.pos = 0
        self.chunks = chunks or [len(raw) or 1]
        self.k = 0

    def recv_into(self, view: memoryview) -> int:
        size = max(1, self.chunks[self.k % len(self.chunks)])
        self.k += 1
        piece = self.raw[self.pos : self.pos + min(size, len(view))]
        view[: len(piece)] = piece
        self.pos += len(piece)
        return len(piece)


@st.composite
def main_streams(draw: st.DrawFn) -> tuple[bytes, int, dict[str, int]]:
    """A valid QEMU 10 main stream (``wire.savevm``): header, configuration, the RAM START
    section with the block list, rounds of zero and page records and flushes in PART
    sections, SWITCHOVER_START, the END section, EOF and the VM description."""
    from multifd_zero.wire import savevm

    page_size = draw(st.sampled_from([1024, 4096]))
    blocks_ = {"pc.ram": 32 * page_size, "vga": 4 * page_size}
    w = savevm.StreamWriter(page_size)
    parts = [w.header(), w.configuration(draw(st.sampled_from(["multifd-zero", "none"]))),
             w.section_start(1), w.mem_size(list(blocks_.items()))]
    if draw(st.booleans()):
        parts.append(w.multifd_flush())
    parts += [w.eos(), w.footer(1)]
    for _ in range(draw(st.integers(0, 3))):
        parts.append(w.section_part(1))
        for name in draw(st.lists(st.sampled_from(sorted(blocks_)), max_size=3)):
            pages = draw(st.lists(st.integers(0, blocks_[name] // page_size - 1), min_size=1,
                                  max_size=6))
            offs = np.array(pages, dtype=np.uint64) * np.uint64(page_size)
            if draw(st.booleans()):
                parts.append(w.zero_pages(name, offs))
            else:
                parts.append(w.pages(name, offs, bytes(range(256)) * (len(pages) * page_size
                                                                       // 256)))
        if draw(st.booleans()):
            parts.append(w.multifd_flush())
        parts += [w.eos(), w.footer(1)]
    parts += [w.command(savevm.MIG_CMD_SWITCHOVER_START), w.section_part(1, end=True),
              w.eos(), w.footer(1), w.eof(), w.vmdescription(b'{"devices": []}')]
    return b"".join(parts), page_size, blocks_


def read_main_stream(raw: bytes, chunks: list[int], page_size: int, blocks_: dict[str, int],
                     magic_read: bool, whole: bool = False) -> list[Any]:
    """Read a whole main stream the way the destination does; return what it held.

    Every page event must be inside a block of the stream's own block list,
    page-aligned, with a page of data per offset; the reader must end with the
    device state. ``whole``: through ``savevm.read_stream`` (all bytes at once).
    """
    from multifd_zero.migration.transport import Channel
    from multifd_zero.wire import savevm

    if whole:
        events: Any = savevm.read_stream(raw, page_size=page_size)
        declared: dict[str, int] = {}
    else:
        channel = BytesChannel(raw[4:] if magic_read else raw, chunks)
        Channel.register(BytesChannel)  # a virtual subclass: the reader only calls recv_into
        reader = savevm.StreamReader(channel, page_size=page_size, magic_read=magic_read)
        events = reader.events()
        declared = reader.blocks
    seen: list[Any] = []
    for event in events:
        assert len(seen) < 10 * len(raw) + 10, "the reader makes no progress"
        seen.append(event)
        if isinstance(event, savevm.MemSize):
            declared = dict(event.blocks)
        if isinstance(event, (savevm.ZeroPages, savevm.Pages)):
            used = declared[event.idstr]
            offs = event.offsets.tolist()
            assert offs and all(o % page_size == 0 and o + page_size <= used for o in offs)
        if isinstance(event, savevm.Pages):
            assert len(event.data) == len(offs) * page_size
    assert seen and isinstance(seen[-1], savevm.DeviceState), "the stream ended unchecked"
    return seen


@target("StreamReader")
def _main_stream(data: st.DataObject) -> Case:
    raw, page_size, blocks_ = data.draw(main_streams(), label="stream")
    mutated, _ = data.draw(corrupted(raw, 1), label="corruption")
    chunks = data.draw(st.lists(st.integers(1, 64), max_size=4), label="chunks")
    magic_read = data.draw(st.booleans(), label="magic_read")
    whole = not magic_read and data.draw(st.booleans(), label="read_stream")
    ps = data.draw(st.one_of(st.just(page_size), VALID_PS), label="page_size")
    return Case(lambda: read_main_stream(mutated, chunks, ps, blocks_, magic_read, whole), [])


def test_every_cut_of_a_main_stream_is_a_truncation() -> None:
    """The engine's main stream cut after any byte (even inside the VM description)
    raises StreamTruncatedError, never returns, never another error."""
    from multifd_zero.errors import StreamTruncatedError
    from multifd_zero.wire import savevm

    w = savevm.StreamWriter(1024)
    offs = np.array([0, 1024, 3072], dtype=np.uint64)
    raw = b"".join([
        w.header(), w.configuration("multifd-zero"), w.section_start(1),
        w.mem_size([("pc.ram", 4 * 1024)]), w.multifd_flush(), w.eos(), w.footer(1),
        w.section_part(1), w.zero_pages("pc.ram", offs), w.pages("pc.ram", offs[:1], bytes(1024)),
        w.eos(), w.footer(1), w.command(savevm.MIG_CMD_SWITCHOVER_START),
        w.section_part(1, end=True), w.multifd_flush(), w.eos(), w.footer(1), w.eof(),
        w.vmdescription(b'{"page_size": 1024, "devices": []}'),
    ])
    assert isinstance(savevm.read_stream(raw, page_size=1024)[-1], savevm.DeviceState)
    for cut in range(len(raw)):
        with pytest.raises(StreamTruncatedError):
            savevm.read_stream(raw[:cut], page_size=1024)


# The decoders of the wire formats, and which target covers each.
DECODERS = {
    "multifd_zero.wire.decode_packet": "decode_packet",
    "multifd_zero.wire.check_header": "check_header",
    "multifd_zero.wire.decode_init": "decode_init",
    "multifd_zero.wire.savevm.StreamReader": "StreamReader",
    "multifd_zero.wire.savevm.read_stream": "StreamReader",
}
# Examples per target, as a multiple of the profile's max_examples: the
# decoders of untrusted bytes get the most; a migration costs the most.
SCALE = {"decode_packet": 5, "check_header": 3, "decode_init": 3, "StreamReader": 5,
         "migrate": 0.25}


# ---------------------------------------------------------------- the child


def child_fuzz(name: str, max_examples: int) -> dict[str, Any]:
    """In a child process: run target ``name``'s property; return the outcome counts."""
    from support.receivers import child_uses_installed_package

    where = child_uses_installed_package()
    outcomes: Counter[str] = Counter()
    make = TARGETS[name]

    @settings(max_examples=max_examples, deadline=None, database=None, print_blob=True,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        case = make(data)
        before = [snap(x) for x in case.inputs]
        try:
            result = case.call()
        except ALLOWED as exc:
            outcomes[type(exc).__name__] += 1
            after = [snap(x) for x in case.inputs]
            assert after == before, f"an input changed although the call raised {exc!r}"
            return
        except MemoryError:
            if not case.memory_ok:
                raise
            outcomes["MemoryError (huge but possible allocation)"] += 1
            return
        outcomes["returned"] += 1
        if case.check is not None:
            case.check(result)

    prop()
    return {"examples": sum(outcomes.values()), "outcomes": dict(outcomes), "package": where}


def _examples(name: str) -> int:
    return max(10, int(settings.default.max_examples * SCALE.get(name, 1)))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_hostile_input(name: str) -> None:
    """Only TypeError/ValueError, inputs unchanged after an error, no crash (child process)."""
    result = check_child("child_fuzz", name, _examples(name), module="robustness.test_hostile")
    print(f"\n{name}: {result['examples']} examples, {result['outcomes']}")
    assert result["examples"] >= 1


def _regression_cases() -> dict[str, tuple[Callable[[], Any], bool]]:
    """Hostile calls the fuzzing above found mishandled: ``name -> (call, success_ok)``.

    Each must raise TypeError or ValueError (or, where ``success_ok``, may
    also succeed); they are kept as plain tests so that they fail every time,
    not only when hypothesis happens to draw them.
    """
    from multifd_zero import wire

    one_zero_page = wire.encode_packet(
        wire.RamPacket(pages_alloc=1, zero_pages=1, ramblock="pc.ram",
                       offsets=np.zeros(1, np.uint64)), 1)
    init = wire.encode_init(bytes(16), 0)

    def decode(**kw: Any) -> Callable[[], Any]:
        args: dict[str, Any] = {"page_count": 1, "page_size": 4096, "blocks": {"pc.ram": 65536}}
        args.update(kw)
        return lambda: wire.decode_packet(one_zero_page, **args)

    return {
        # numpy's MemoryError ("Unable to allocate 2.00 EiB") for a map of 2**74 bytes.
        "ReceivedMap(2**64 - 1 pages)": (lambda: mz.ReceivedMap(2**64 - 1, 1024), False),
        # A receiver set up with an impossible page size accepts the packet.
        "decode_packet(page_size=0)": (decode(page_size=0), False),
        "decode_packet(page_size=-4096)": (decode(page_size=-4096), False),
        "decode_packet(page_size=3000)": (decode(page_size=3000), False),
        # OverflowError: 65536 does not fit the page size's uint16.
        "decode_packet(page_size=np.uint16(4096))": (decode(page_size=np.uint16(4096)), True),
        # AttributeError: 'list' object has no attribute 'get'.
        "decode_packet(blocks=[('pc.ram', 65536)])": (decode(blocks=[("pc.ram", 65536)]), False),
        # AttributeError: 'bool' object has no attribute 'hex'.
        "decode_init(uuid=True)": (lambda: wire.decode_init(init, uuid=True), False),
        "decode_init(uuid='x' * 16)": (lambda: wire.decode_init(init, uuid="x" * 16), False),
        # Was AttributeError: 'list' object has no attribute 'size'; a list may be accepted.
        "encode_packet(offsets=[0])": (lambda: wire.encode_packet(
            wire.RamPacket(pages_alloc=1, zero_pages=1, ramblock="pc.ram", offsets=[0]), 1),
            True),
        # OverflowError: Python integer -1 out of bounds for uint64.
        "encode_packet(offsets=object array [-1])": (lambda: wire.encode_packet(
            wire.RamPacket(pages_alloc=1, zero_pages=1, ramblock="pc.ram",
                           offsets=np.array([-1], dtype=object)), 1), False),
    }


@pytest.mark.parametrize("name", sorted(_regression_cases()))
def test_hostile_regressions(name: str) -> None:
    """Cases found by the fuzzing: TypeError or ValueError, nothing else."""
    call, success_ok = _regression_cases()[name]
    try:
        call()
    except ALLOWED:
        return
    except BaseException as exc:
        pytest.fail(f"{name} raised {type(exc).__name__}: {exc}")
    assert success_ok, f"{name} was accepted"


def test_every_decoder_is_fuzzed() -> None:
    """Each decoder in the wire and stream modules has a target here (and in fuzz/)."""
    from multifd_zero import wire
    from multifd_zero.wire import savevm

    found = {f"multifd_zero.wire.{n}" for n in wire.__all__
             if n.startswith(("decode", "check_", "unfill", "parse", "read"))}
    found |= {f"multifd_zero.wire.savevm.{n}" for n in savevm.__all__
              if n.startswith(("decode", "read", "parse")) or n.endswith("Reader")}
    assert found <= set(DECODERS), f"decoders with no hostile target: {found - set(DECODERS)}"
    assert set(DECODERS.values()) <= set(TARGETS)
    fuzz = (CHECKOUT / "fuzz" / "fuzz_decoder.py")
    if fuzz.exists():
        text = fuzz.read_text()
        # The snapshot manifest's reader too (a file, so atheris only: see
        # tests/robustness/test_small_findings.py for what it found).
        for qualified in [*DECODERS, "multifd_zero.snapshot.manifest.load_manifest"]:
            name = qualified.rsplit(".", 1)[1]
            assert name in text, f"fuzz_decoder.py does not reach {qualified}"


# ------------------------------------------------------------------- atheris

FUZZ_SCRIPT = CHECKOUT / "fuzz" / "fuzz_decoder.py"
ATHERIS_PLATFORM = sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")


def test_atheris_decoder_fuzz(tmp_path: Path) -> None:
    """Coverage-guided fuzzing of the decoders for a bounded time; no crash, no finding."""
    if not FUZZ_SCRIPT.exists():
        pytest.skip(f"{FUZZ_SCRIPT} is not in this tree (a test run from an sdist without fuzz/)")
    if importlib.util.find_spec("atheris") is None:
        if os.environ.get("MULTIFD_ZERO_REQUIRE_ATHERIS") == "1" or (
            ATHERIS_PLATFORM and os.environ.get("CI")
        ):
            pytest.fail("atheris is not installed (pip install atheris), but CI requires it")
        pytest.skip("atheris is not installed: pip install atheris (Linux x86-64 wheels)")
    profile = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    seconds = int(os.environ.get("MULTIFD_ZERO_FUZZ_SECONDS", "300" if profile == "release"
                                 else "30"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    proc = subprocess.run(
        [sys.executable, str(FUZZ_SCRIPT), f"-max_total_time={seconds}", "-timeout=20",
         "-rss_limit_mb=4096", f"-artifact_prefix={artifacts}/", "-print_final_stats=1",
         str(corpus)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=seconds + 300,
        check=False,
    )
    log = proc.stdout + proc.stderr
    crashes = sorted(p.name for p in artifacts.iterdir())
    assert proc.returncode == 0 and not crashes, (
        f"atheris exited {proc.returncode}, artifacts {crashes}\n{log[-8000:]}"
    )
    runs = re.search(r"Done (\d+) runs in (\d+) second", log)
    cov = re.findall(r"cov: (\d+) ft: (\d+)", log)
    assert runs, log[-4000:]
    print(f"\natheris: {runs.group(1)} runs in {runs.group(2)} s, final cov/ft "
          f"{cov[-1] if cov else '?'}, corpus {len(list(corpus.iterdir()))} inputs")
    assert int(runs.group(1)) > 1000
