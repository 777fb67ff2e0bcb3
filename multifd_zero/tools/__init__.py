"""Tools built on the kernels: the file scanner and the benchmark runner.

Neither is part of the migration model; the command line uses both.
"""
