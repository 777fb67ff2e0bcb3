"""Checks that .ci/run makes on the built distributions and on the README.

Usage::

    python .ci/check_dist.py sdist DIST.tar.gz
    python .ci/check_dist.py wheel DIST.whl
    python .ci/check_dist.py compile-flags BUILD.log
    python .ci/check_dist.py simd-symbols _kernels.so
    python .ci/check_dist.py readme README.md

Each prints what it found and exits non-zero with a message on failure. Only
the standard library is used (plus ``objdump`` for ``simd-symbols``), so any
Python can run it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path


class CheckError(Exception):
    pass


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckError(message)


def check_sdist(path: str) -> None:
    """The sdist holds the sources a wheel is built from, and the tests; no build products."""
    with tarfile.open(path) as tar:
        names = tar.getnames()
    _require(bool(names), f"{path} is empty")
    root = names[0].split("/")[0]
    files = {n[len(root) + 1 :] for n in names if n.startswith(root + "/")}
    required = [
        "pyproject.toml",
        "setup.py",
        "MANIFEST.in",
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "PKG-INFO",
        "multifd_zero/__init__.py",
        "multifd_zero/_kernels.pyx",
        "multifd_zero/_kernels.pyi",
        "multifd_zero/_csrc.pxd",
        "multifd_zero/_bench_kernels.pyx",
        "multifd_zero/_bench_kernels.pxd",
        "multifd_zero/_bench_kernels.pyi",
        "multifd_zero/csrc/platform.h",
        "multifd_zero/csrc/zero_check.h",
        "multifd_zero/csrc/page_check.h",
        "multifd_zero/csrc/file_guard.h",
        "multifd_zero/csrc/batch.h",
        "multifd_zero/csrc/offsets.h",
        "multifd_zero/csrc/partition.h",
        "multifd_zero/csrc/bitmap.h",
        "multifd_zero/csrc/zero_store.h",
        "multifd_zero/csrc/dispatch.h",
        "multifd_zero/csrc/read_limit.h",
        "multifd_zero/py.typed",
        "tests/conftest.py",
        "tests/README.md",
        "tests/support/qemu_model.py",
        "tests/c/test_portable.c",
        "docs/conf.py",
        "docs/index.rst",
    ]
    missing = [f for f in required if f not in files]
    _require(not missing, f"sdist lacks {missing}")
    tests = sorted(f for f in files if re.fullmatch(r"tests/[a-z_]+/test_[^/]*\.py", f))
    _require(bool(tests), "sdist holds no tests/LAYER/test_*.py")
    unwanted = sorted(
        f for f in files if f.endswith((".so", ".pyd", ".pyc", ".o")) or f.endswith("_kernels.c")
    )
    _require(not unwanted, f"sdist holds build products: {unwanted}")
    print(f"sdist {Path(path).name}: {len(files)} files, {len(tests)} test modules, "
          "sources (.pyx, .h, .pyi) present, no build products")


def check_wheel(path: str) -> None:
    """The wheel holds the extension, the stub and py.typed, and no source it does not need."""
    with zipfile.ZipFile(path) as whl:
        names = whl.namelist()
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = whl.read(metadata_name).decode()
    ext = [n for n in names if re.fullmatch(r"multifd_zero/_kernels\..*(\.so|\.pyd)", n)]
    _require(len(ext) == 1, f"expected one compiled _kernels module, found {ext}")
    bench = [n for n in names if re.fullmatch(r"multifd_zero/_bench_kernels\..*(\.so|\.pyd)", n)]
    _require(len(bench) == 1, f"expected one compiled _bench_kernels module, found {bench}")
    for needed in (
        "multifd_zero/_kernels.pyi", "multifd_zero/_bench_kernels.pyi", "multifd_zero/py.typed"
    ):
        _require(needed in names, f"wheel lacks {needed}")
    _require(
        any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "wheel lacks LICENSE"
    )
    sources = [n for n in names if n.endswith((".pyx", ".pxd", ".c", ".h", ".cpp"))]
    _require(not sources, f"wheel holds sources it does not need: {sources}")
    _require("License-Expression: MIT" in metadata, "METADATA has no License-Expression: MIT")
    version = re.search(r"^Version: (.+)$", metadata, re.M)
    _require(version is not None, "METADATA has no Version")
    size = Path(path).stat().st_size
    print(f"wheel {Path(path).name}: {size / 1024:.0f} KiB, {len(names)} files, "
          f"version {version.group(1) if version else '?'}, {ext[0]} + .pyi + py.typed, "
          "no .pyx/.pxd/.c/.h")


COMPILERS = re.compile(r"^\s*(\S*/)?(\S+-)?(gcc|cc|clang|c\+\+|g\+\+)(-\d+)?\s")


def check_compile_flags(log: str) -> None:
    """Every compiler command of the build targets the baseline: no -march, no -mavx*."""
    commands = [
        line for line in Path(log).read_text(errors="replace").splitlines()
        if COMPILERS.match(line)
    ]
    _require(bool(commands), f"no compiler command found in {log} (is the build log verbose?)")
    bad = [c for c in commands if re.search(r"\s-(march|mtune|mcpu)=|\s-mavx|\s-msse4", c)]
    _require(not bad, "compiler commands with CPU-specific flags:\n" + "\n".join(bad))
    print(f"{len(commands)} compiler command(s) in the build log, none with -march/-mtune/-mavx")


def check_simd_symbols(so: str) -> None:
    """AVX registers appear only in functions compiled for them (named *avx2* / *avx512*).

    The module is built for the x86-64 baseline; wide instructions are allowed
    only inside the per-function targets that are chosen at run time after a
    CPU check. A ymm/zmm register anywhere else could crash an older CPU.
    """
    objdump = shutil.which("objdump")
    if objdump is None:
        print("SKIP simd-symbols: objdump not found")
        return
    out = subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", so], check=True, capture_output=True, text=True
    ).stdout
    function = "?"
    seen: dict[str, set[str]] = {}
    for line in out.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if header:
            function = header.group(1)
            continue
        for reg in re.findall(r"%([yz]mm)\d+", line):
            seen.setdefault(function, set()).add(reg)
    bad = []
    for fn, regs in sorted(seen.items()):
        if "zmm" in regs and "avx512" not in fn:
            bad.append(f"{fn}: zmm")
        if "ymm" in regs and "avx2" not in fn and "avx512" not in fn:
            bad.append(f"{fn}: ymm")
    _require(not bad, "wide SIMD outside the run-time-selected functions: " + ", ".join(bad))
    summary = ", ".join(f"{fn} ({'/'.join(sorted(r))})" for fn, r in sorted(seen.items()))
    print(f"AVX registers only in: {summary or 'no function'}")


def check_readme(path: str) -> None:
    """Run the README's Python example and compare what it prints with the README."""
    text = Path(path).read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S)
    expected = re.search(r"\nprints\s*\n+```text\n(.*?)```", text, re.S)
    _require(code is not None, "README has no ```python block")
    _require(expected is not None, "README has no ```text block after 'prints'")
    assert code is not None and expected is not None
    result = subprocess.run(
        [sys.executable, "-c", code.group(1)], capture_output=True, text=True, cwd="/"
    )
    _require(result.returncode == 0, f"README example failed:\n{result.stderr}")
    _require(
        result.stdout == expected.group(1),
        f"README example printed:\n{result.stdout}\nbut the README says:\n{expected.group(1)}",
    )
    print("README example runs and prints what the README says")


def main(argv: list[str]) -> int:
    checks = {
        "sdist": check_sdist,
        "wheel": check_wheel,
        "compile-flags": check_compile_flags,
        "simd-symbols": check_simd_symbols,
        "readme": check_readme,
    }
    if len(argv) != 2 or argv[0] not in checks:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        checks[argv[0]](argv[1])
    except CheckError as exc:
        print(f"FAIL {argv[0]}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
