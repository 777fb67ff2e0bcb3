"""Shared fixtures and the hypothesis profiles.

Profiles (select with ``HYPOTHESIS_PROFILE``):

- ``ci`` (default): modest example counts, so the whole suite runs in a few
  minutes on two cores;
- ``release``: long runs before a release.

With ``MULTIFD_ZERO_REQUIRE_INSTALLED=1`` every test fails unless
``multifd_zero`` was imported from an installed copy, not from this checkout.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import multifd_zero

CHECKOUT = Path(__file__).resolve().parent.parent

# The profiles differ only in how many examples each property tries: "matrix"
# is .ci/run's wheel matrix, which proves each Python's wheel after its stage a
# has run every property with "ci"'s 100 examples on the same code.
for _profile, _examples in (("matrix", 20), ("ci", 100), ("release", 1500)):
    settings.register_profile(
        _profile,
        max_examples=_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _imported_from_checkout() -> bool:
    package_dir = Path(multifd_zero.__file__).resolve().parent
    return package_dir.is_relative_to(CHECKOUT)


@pytest.fixture(autouse=True, scope="session")
def _require_installed() -> None:
    """Fail every test when the package under test is the source tree, if so required."""
    if os.environ.get("MULTIFD_ZERO_REQUIRE_INSTALLED") == "1":
        assert not _imported_from_checkout(), (
            f"MULTIFD_ZERO_REQUIRE_INSTALLED=1 but multifd_zero was imported from "
            f"{multifd_zero.__file__}, inside the checkout {CHECKOUT}"
        )


@pytest.fixture(autouse=True)
def _best_simd_around_each_test() -> Iterator[None]:
    """Every test starts and ends on the best zero-check path."""
    multifd_zero.set_simd("best")
    yield
    multifd_zero.set_simd("best")


@pytest.fixture(params=multifd_zero.simd_paths())
def simd_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once per zero-check path this CPU has (restored to "best" after)."""
    name = request.param
    assert multifd_zero.set_simd(name) == name
    try:
        yield name
    finally:
        multifd_zero.set_simd("best")
