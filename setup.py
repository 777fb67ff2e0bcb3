"""Build the compiled kernels.

The wheel is compiled for the baseline of its platform (no ``-march=native``);
wider SIMD is selected at run time inside ``_simd.h``.
"""

import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

if sys.platform == "win32":
    extra_compile_args = ["/O2"]
else:
    extra_compile_args = ["-O3", "-fno-strict-aliasing"]
    if os.environ.get("MULTIFD_ZERO_WERROR"):
        extra_compile_args += ["-Wall", "-Werror", "-Wno-unused-function"]

extensions = [
    Extension(
        "multifd_zero._kernels",
        sources=["multifd_zero/_kernels.pyx"],
        include_dirs=["multifd_zero"],
        depends=["multifd_zero/_simd.h"],
        extra_compile_args=extra_compile_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            # Checks are explicit in the code; these are off per module and the
            # functions that index with user data validate first.
            "boundscheck": False,
            "wraparound": False,
            "initializedcheck": False,
            "cdivision": True,
            "nonecheck": False,
            "embedsignature": True,
            "binding": True,
        },
    ),
)
