"""Benchmark multifd_zero's kernels against numpy and ``bytes ==`` in one run.

Usage: ``python benchmarks/bench_kernels.py [--quick] [--json FILE] [--simd PATH]``
(the same as ``python -m multifd_zero bench``).
"""

import sys

from multifd_zero.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
