"""Build the compiled kernels.

The wheel is compiled for the baseline of its platform (no ``-march=native``);
wider SIMD is selected at run time inside ``multifd_zero/csrc`` (dispatch.h).
"""

import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

if not sys.platform.startswith("linux"):
    # memfd_create, fallocate hole punching, MADV_REMOVE and QEMU as the peer
    # are Linux's; docs/releasing.rst lists the platforms wheels are made for.
    sys.exit(f"multifd-zero builds on Linux only, not on {sys.platform}")

extra_compile_args = ["-O3", "-fno-strict-aliasing"]
if os.environ.get("MULTIFD_ZERO_WERROR"):
    extra_compile_args += ["-Wall", "-Werror", "-Wno-unused-function"]

# The C kernels the .pyx modules include (through _csrc.pxd).
CSRC = [
    f"multifd_zero/csrc/{header}.h"
    for header in (
        "platform", "zero_check", "page_check", "batch", "offsets", "partition", "bitmap",
        "zero_store", "dispatch", "read_limit", "file_guard",
    )
]

extensions = [
    Extension(
        f"multifd_zero.{name}",
        sources=[f"multifd_zero/{name}.pyx"],
        include_dirs=["multifd_zero"],
        depends=[*CSRC, "multifd_zero/_csrc.pxd", f"multifd_zero/{name}.pxd"],
        extra_compile_args=extra_compile_args,
    )
    # _bench_kernels: the benchmark's limit loops, kept out of the kernels module.
    for name in ("_kernels", "_bench_kernels")
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            # Checks are explicit in the code: the functions that index with
            # user data validate it first.
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
            "binding": True,
        },
    ),
)
