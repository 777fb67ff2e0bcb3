"""The examples in the installed package's docstrings run and pass."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import multifd_zero
from multifd_zero import _kernels


def _modules() -> list[str]:
    """Every module of the installed package, the compiled ones included."""
    names = ["multifd_zero"]
    for info in pkgutil.walk_packages(multifd_zero.__path__, "multifd_zero."):
        if not info.name.endswith("__main__"):  # importing it runs the command line
            names.append(info.name)
    return names


MODULES = _modules()


def test_doctests_of_every_module() -> None:
    """doctest.testmod on each installed module: no failure, and examples were run."""
    attempted = {}
    for name in MODULES:
        module = importlib.import_module(name)
        result = doctest.testmod(module, report=False, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} failed"
        attempted[name] = result.attempted
    assert sum(attempted.values()) > 0
    assert attempted["multifd_zero._kernels"] > 0, "the compiled kernels' examples were not found"


KERNEL_FUNCTIONS = ("is_zero", "zero_page_mask", "partition_zero_pages")


@pytest.mark.parametrize("name", KERNEL_FUNCTIONS)
def test_kernel_examples_are_self_contained(name: str) -> None:
    """Each kernel example imports what it uses, so it runs in an empty namespace as written.

    (These examples start with ``from multifd_zero import ...``; one that
    relies on the module's own globals would fail for a user who copies it.)
    """
    func = getattr(_kernels, name)
    tests = doctest.DocTestFinder(recurse=False).find(func, name, globs={})
    assert tests and tests[0].examples, f"{name} has no example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test, clear_globs=True)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
