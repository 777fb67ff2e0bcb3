"""Sentinel destinations, receiver variants for the state machine, child processes, memory.

Pieces:

- *sentinel pages*: a destination page that was never written holds a page
  made of ``0xA5`` bytes with the page index in its first 8 bytes. No guest
  write the tests make can produce it, so "this page still holds its sentinel"
  proves "the receiver never wrote this page". Read through :func:`logical`,
  a sentinel page counts as zero, which is what an unpopulated anonymous page
  reads as: the sentinel stands for "fresh, never populated memory".
- *receivers*: the package's own receive path and two deliberately broken
  ones that reproduce bugs QEMU shipped (see ``test_state_machine.py``). Every
  receiver applies a packet in two steps, ``begin`` and ``finish``, so that a
  state machine can interleave other channels between them.
- :func:`run_child`: run a function of this module in a fresh interpreter, so
  that a crash (a signal, an abort) fails the calling test instead of killing
  pytest, and report what it printed.
- :func:`statm`: the process's size and resident memory from ``/proc/self/statm``.

The reliability suite and its budget
------------------------------------
``model/test_state_machine.py``, ``model/test_sparse.py`` and ``robustness/``
(threads, big memory, and hostile input with ``fuzz/fuzz_decoder.py``).
With the default ``ci`` hypothesis profile they take about two minutes on two
cores, half of it the 30-second atheris run:

=================================  ===============================  ==========================
part                               ``ci`` (default)                 ``HYPOTHESIS_PROFILE=release``
=================================  ===============================  ==========================
migration state machine            300 examples x 40 steps          4500 examples x 100 steps
QEMU bug hunts (2 broken receivers) up to 3000 examples, stop at     the same, and the
                                   the first counterexample         counterexample is shrunk
hostile input, per target          100 examples (decoders 300-500)  1500 (decoders 4500-7500)
atheris on the decoders            30 s                             300 s
threads, big memory, sparse        fixed sizes (no hypothesis)      the same
=================================  ===============================  ==========================

``MULTIFD_ZERO_FUZZ_SECONDS`` overrides the atheris time. A release check is::

    HYPOTHESIS_PROFILE=release pytest tests/model/test_state_machine.py tests/robustness \
        tests/model/test_sparse.py

(about 15 to 20 minutes on two cores, most of it the state machine and the
5-minute atheris run). No test here asserts anything about time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

import multifd_zero as mz
from multifd_zero import _kernels

TESTS_DIR = Path(__file__).resolve().parent.parent
CHECKOUT = TESTS_DIR.parent
SENTINEL_BYTE = 0xA5


# ------------------------------------------------------------------ sentinels


def sentinel_pages(num_pages: int, page_size: int) -> np.ndarray:
    """``num_pages`` sentinel pages as a ``(num_pages, page_size)`` uint8 array."""
    pages = np.full((num_pages, page_size), SENTINEL_BYTE, dtype=np.uint8)
    index = np.arange(num_pages, dtype="<u8").view(np.uint8).reshape(num_pages, 8)
    pages[:, :8] = index
    return pages


def sentinel_mask(memory: np.ndarray, sentinel: np.ndarray) -> np.ndarray:
    """One bool per page: True where the page still holds its sentinel (never written)."""
    return (memory == sentinel).all(axis=1)


def logical(memory: np.ndarray, sentinel: np.ndarray) -> np.ndarray:
    """The memory as a guest would read it: sentinel (unpopulated) pages read as zero."""
    out = memory.copy()
    out[sentinel_mask(memory, sentinel)] = 0
    return out


# --------------------------------------------------------------- the packets


@dataclass
class Packet:
    """One packet in flight on a channel, with what the model expects of it.

    ``kind`` is ``"multifd"`` (normal pages with their data, then zero
    pages) or ``"legacy"`` (zero-page records of the main channel).
    """

    channel: str
    kind: str
    normal: np.ndarray
    data: bytes
    zero: np.ndarray
    versions: dict[int, int]
    state: str = "queued"  # "queued", then "delivering" between begin and finish
    private: dict[str, Any] = field(default_factory=dict)

    @property
    def pages(self) -> list[int]:
        return sorted(self.versions)


# ----------------------------------------------------------------- receivers


class PackageReceiver:
    """The package's receive path: the whole packet is applied in ``begin``.

    The order is QEMU's: the multifd zero pages first
    (``multifd_recv_zero_page_process``), then the normal pages; a legacy
    packet holds ``RAM_SAVE_FLAG_ZERO`` records (``ram_handle_zero``).
    """

    name = "package"

    def __init__(self, block: mz.RAMBlock, options: mz.MigrationOptions) -> None:
        self.block = block
        self.options = options
        self.zero_writes = 0

    def begin(self, packet: Packet) -> None:
        if packet.kind == "legacy":
            self.zero_writes += mz.recv_legacy_zero_pages(self.block, packet.zero)
            return
        self.zero_writes += mz.recv_zero_page_process(
            self.block, packet.zero, options=self.receive_options()
        )
        mz.recv_normal_pages(self.block, packet.normal, packet.data)

    def finish(self, packet: Packet) -> None:
        """Nothing left to do: the package sets each bit atomically inside ``begin``."""

    def receive_options(self) -> mz.MigrationOptions:
        return self.options


class SkipPostcopyWriteReceiver(PackageReceiver):
    """QEMU before 10.1 (commit 249543d0c0): the zero-page rule ignores postcopy-ram.

    A zero page arriving for the first time is only marked received, never
    written, even with postcopy-ram: in postcopy a vCPU touching it faults, the
    fault handler sees the page as received, never asks the source for it, and
    the faulting thread can hang.
    """

    name = "skip-postcopy-write"

    def receive_options(self) -> mz.MigrationOptions:
        return replace(self.options, postcopy_ram=False)


class SplitBitSetReceiver(PackageReceiver):
    """A receiver whose receivedmap set is a plain read-modify-write, split in two.

    ``begin`` does the page writes (deciding "received before?" from the shared
    map, as QEMU's test does) and the *load* of every bitmap word the packet
    touches; ``finish`` *stores* ``loaded | new bits``. A state machine that
    lets another channel store into the same 64-bit word between the two loses
    that channel's bit: QEMU's ``receivedmap`` needs ``set_bit_atomic`` because
    several multifd receive threads set neighbouring bits of one word.
    """

    name = "split-bit-set"

    def begin(self, packet: Packet) -> None:
        shared = self.block.receivedmap.bitmap
        before = shared.copy()
        private = shared.copy()
        host, ps = self.block.host, self.block.page_size
        if packet.kind == "legacy":
            self.zero_writes += _kernels.recv_zero_pages(
                host, private, packet.zero, ps, _kernels.ZERO_IF_NONZERO
            )
        else:
            mode = _kernels.ZERO_ALWAYS if self.options.postcopy_ram else _kernels.ZERO_IF_RECEIVED
            self.zero_writes += _kernels.recv_zero_pages(host, private, packet.zero, ps, mode)
            _kernels.recv_normal_pages(host, private, packet.normal, packet.data, ps)
        new_bits = private & ~before
        words = np.flatnonzero(new_bits)
        # The load step: each word as it is now, to be or-ed and stored later.
        packet.private["loads"] = [(int(w), int(shared[w]), int(new_bits[w])) for w in words]

    def finish(self, packet: Packet) -> None:
        shared = self.block.receivedmap.bitmap
        for word, loaded, bits in packet.private.pop("loads"):
            shared[word] = np.uint64(loaded | bits)  # the store step


RECEIVERS = {r.name: r for r in (PackageReceiver, SkipPostcopyWriteReceiver, SplitBitSetReceiver)}


# ------------------------------------------------------------ child processes


@dataclass
class ChildResult:
    returncode: int
    stdout: str
    stderr: str
    result: Any

    def describe(self) -> str:
        return (
            f"child exited with {self.returncode}"
            + (f" (signal {-self.returncode})" if self.returncode < 0 else "")
            + f"\n--- stdout ---\n{self.stdout[-6000:]}\n--- stderr ---\n{self.stderr[-6000:]}"
        )


_CHILD_MAIN = """
import json, sys
sys.path.insert(0, {tests!r})
import {module} as _m
_r = _m.{function}(*json.loads(sys.argv[1]))
print("\\n@@RESULT@@" + json.dumps(_r))
"""


def run_child(
    function: str,
    *args: Any,
    module: str = "support.receivers",
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> ChildResult:
    """Run ``module.function(*args)`` in a new interpreter; return what happened.

    The child runs with the faulthandler on, from a temporary directory (so the
    checkout is not on ``sys.path`` and the installed package is imported), with
    this tests directory on its path. ``args`` and the return value go through
    JSON.
    """
    code = _CHILD_MAIN.format(tests=str(TESTS_DIR), module=module, function=function)
    child_env = dict(os.environ)
    child_env.pop("PYTHONPATH", None)
    child_env["PYTHONFAULTHANDLER"] = "1"
    if env:
        child_env.update(env)
    with tempfile.TemporaryDirectory(prefix="mfz-child-") as cwd:
        proc = subprocess.run(
            [sys.executable, "-X", "faulthandler", "-c", code, json.dumps(list(args))],
            cwd=cwd,
            env=child_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    result = None
    marker = "\n@@RESULT@@"
    if marker in proc.stdout:
        result = json.loads(proc.stdout.rsplit(marker, 1)[1])
    return ChildResult(proc.returncode, proc.stdout, proc.stderr, result)


def check_child(function: str, *args: Any, **kwargs: Any) -> Any:
    """:func:`run_child`, failing with the child's output unless it exited cleanly."""
    res = run_child(function, *args, **kwargs)
    assert res.returncode == 0 and res.result is not None, res.describe()
    return res.result


def child_uses_installed_package() -> str:
    """In a child: where multifd_zero comes from (it must not be the checkout)."""
    here = Path(mz.__file__).resolve()
    if os.environ.get("MULTIFD_ZERO_REQUIRE_INSTALLED") == "1":
        assert not here.is_relative_to(CHECKOUT), f"child imported {here} from the checkout"
    return str(here)


# --------------------------------------------------------------------- memory


def statm() -> dict[str, int]:
    """``/proc/self/statm`` in bytes: size, resident, shared (file and shmem)."""
    fields = Path("/proc/self/statm").read_text().split()
    page = os.sysconf("SC_PAGE_SIZE")
    size, resident, shared = (int(v) * page for v in fields[:3])
    return {"size": size, "resident": resident, "shared": shared}


MiB = 1024 * 1024
