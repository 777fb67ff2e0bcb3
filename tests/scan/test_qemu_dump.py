"""``scan`` of a real QEMU 10 ``dump-guest-memory`` ELF dump, against the guest RAM itself.

The guest's RAM is a file (``memory-backend-file``, ``tests/support/qemu_vm.py``)
filled with random and zero pages at known places; QMP ``dump-guest-memory``
(no format: ELF) writes the dump. Scanned as ELF, each guest physical page
from 1 MiB to the end of RAM (``pc.ram`` maps there one to one) must have the
content the RAM file has at that address; scanned as raw bytes the same pages
would be shifted by the segment's file offset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.qemu_vm import fill_ram, migrate, require_qemu, running, set_migration, wait_migration

from multifd_zero.tools.scan import scan_buffer

pytestmark = pytest.mark.qemu

PS = 4096
SIZE = 32 << 20
LOW = 1 << 20  # below: VGA hole, option ROMs and the BIOS shadow, not pc.ram one to one


def _zero_pages_in(extents: list[dict[str, object]], lo: int, hi: int) -> np.ndarray:
    """One bool per page of [lo, hi): True where the dump's map says zero."""
    zero = np.zeros((hi - lo) // PS, dtype=bool)
    seen = np.zeros_like(zero)
    for e in extents:
        start, length = int(e["start"]), int(e["length"])  # type: ignore[call-overload]
        a, b = max(start, lo), min(start + length, hi)
        if a < b:
            zero[(a - lo) // PS : (b - lo) // PS] = bool(e["zero"])
            seen[(a - lo) // PS : (b - lo) // PS] = True
    assert seen.all(), "the dump does not cover guest RAM from 1 MiB to its end"
    return zero


def test_dump_guest_memory_elf_is_scanned_by_guest_address(tmp_path: Path) -> None:
    require_qemu()
    ram = tmp_path / "ram.img"
    data = fill_ram(ram, SIZE, zero_fraction=0.5, seed=13)
    dump = tmp_path / "vm.elf"
    with running(ram, SIZE, machine="pc") as vm:
        vm.cmd("dump-guest-memory", paging=False, protocol=f"file:{dump}")
    proc = subprocess.run(
        [sys.executable, "-m", "multifd_zero", "scan", "--json", "--map", str(dump)],
        cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "MULTIFD_ZERO_SIMD"},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    entry = json.loads(proc.stdout)["files"][0]
    assert entry["format"] == "elf"
    zero = _zero_pages_in(entry["map"], LOW, SIZE)
    assert np.array_equal(zero, ~data[LOW // PS :])
    # The same bytes scanned as they lie (what scan did before it read ELF):
    # the segments start off page boundaries, so a data page straddles two.
    raw = scan_buffer(dump.read_bytes())
    assert raw.normal_pages > entry["normal_pages"] >= int(data[LOW // PS :].sum())


def test_kdump_and_migration_stream_from_qemu_are_refused(tmp_path: Path) -> None:
    """What QEMU writes in the formats scan cannot read: one line each, with the way out."""
    require_qemu()
    ram = tmp_path / "ram.img"
    fill_ram(ram, SIZE, zero_fraction=0.5, seed=14)
    made: dict[str, Path] = {}
    with running(ram, SIZE, machine="pc") as vm:
        formats = vm.cmd("query-dump-guest-memory-capability")["formats"]
        for fmt in ("kdump-zlib", "kdump-raw-zlib"):
            if fmt in formats:
                made[fmt] = tmp_path / f"vm.{fmt}"
                vm.cmd("dump-guest-memory", paging=False, protocol=f"file:{made[fmt]}",
                       format=fmt)  # fmt: skip
        stream = tmp_path / "vm.stream"
        set_migration(vm, 0, None)
        migrate(vm, f"file:{stream}")
        wait_migration(vm)
    assert made, f"this QEMU writes no kdump format: {formats}"
    expected = {
        "kdump-zlib": "a flattened makedumpfile dump",
        "kdump-raw-zlib": "a kdump-compressed dump",
    }
    cases = [(path, expected[fmt], "dump-guest-memory without 'format'")
             for fmt, path in made.items()]  # fmt: skip
    cases.append((stream, "a QEMU migration stream", "dump-guest-memory"))
    env = {k: v for k, v in os.environ.items() if k != "MULTIFD_ZERO_SIMD"}
    for path, what, hint in cases:
        proc = subprocess.run([sys.executable, "-m", "multifd_zero", "scan", str(path)],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip
        assert proc.returncode == 1, (path, proc.stderr)
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith(f"multifd-zero scan: error: {path}: {what}, not raw memory; "), line
        assert hint in line
