"""The benchmark's goals: read off a result, never timed here.

``evaluate_goals`` turns rows of ns per page into ratios against bounds; these
tests feed it results made by hand, so a wrong ratio, a bound read the wrong
way round or a missing row reported as met would fail.
"""

from __future__ import annotations

from typing import Any

from multifd_zero.tools.bench import format_table
from multifd_zero.tools.bench_goals import GOALS, evaluate_goals, format_goals


def _row(name: str, note: str = "", **ns: float) -> dict[str, Any]:
    return {"name": name, "pages": 1, "note": note, "ns_per_page": ns,
            "gb_per_s": {k: 4096 / v for k, v in ns.items()}}  # fmt: skip


def _result(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"cpu": "Test CPU", "vendor": "GenuineTest", "family": "6", "cpus": 2,
            "simd": "avx2", "simd_paths": ["portable", "avx2"], "numpy": "2",
            "python": "3.11", "repeats": 1, "rows": rows}  # fmt: skip


def _by_text(goals: list[dict[str, Any]], start: str) -> dict[str, Any]:
    return next(g for g in goals if g["goal"].startswith(start))


def test_ratios_and_bounds_both_ways() -> None:
    """A ratio at most its bound is met, above it not; a speed-up must be at least its bound."""
    rows = [
        _row("1024 MiB region, 50% zero random mix", partition=90.0, **{"read limit": 135.0}),
        _row("1024 MiB region, 100% zero", partition=150.0, **{"read limit": 135.0}),
        _row(
            "in L2, 1 vs 2 threads (partition, 100% zero, one batch a call)",
            **{"1 thread": 40.0, "2 threads": 21.0},
        ),
    ]
    goals = evaluate_goals(_result(rows))
    mixed = _by_text(goals, "out of cache, 50% zero")
    assert mixed["value"] == 90.0 / 135.0 and mixed["met"] is True
    zero = _by_text(goals, "out of cache, all zero")
    assert zero["value"] == 150.0 / 135.0 and zero["met"] is False
    threads = _by_text(goals, "2 threads")
    assert threads["value"] == 40.0 / 21.0 and threads["met"] is True
    assert "limit" not in threads


def test_the_threads_goal_carries_the_gil_ceiling_of_the_same_run() -> None:
    """Two threads below the goal are shown next to what a no-work call reaches."""
    rows = [
        _row(
            "in L2, 1 vs 2 threads (partition, 100% zero, one batch a call)",
            **{"1 thread": 40.0, "2 threads": 25.0},
        ),
        _row("GIL ceiling, 1 vs 2 threads (a no-work call)", **{"1 thread": 40, "2 threads": 23}),
    ]
    goals = evaluate_goals(_result(rows))
    threads = _by_text(goals, "2 threads")
    assert threads["met"] is False and threads["limit"] == 40 / 23
    assert "measured ceiling here: 1.74" in format_goals(goals)


def test_missing_rows_are_not_measured_never_met() -> None:
    """A smaller run lacks rows: those goals say so instead of passing."""
    goals = evaluate_goals(_result([]))
    assert len(goals) == len(GOALS) + 1
    assert all(g["value"] is None and g["met"] is None for g in goals)
    assert format_goals(goals).count("[not measured]") == len(goals)


def test_plain_figures_carry_their_measured_floor() -> None:
    """The all-random goal is a plain ns figure, printed next to the floor of the same run."""
    row = _row(
        "batch partition, all pages random (the first byte decides)",
        multifd_zero=4.0,
        **{"64 batches a call": 3.1, "heads floor": 2.7},
    )
    goals = evaluate_goals(_result([row]))
    one = _by_text(goals, "128-page batch in L2, all random: ns a page, one call")
    assert one["value"] == 4.0 and one["met"] is False and one["limit"] == 2.7
    assert "measured floor here: 2.70 ns a page" in format_goals(goals)


def test_default_path_goal_names_the_rows_where_another_path_wins() -> None:
    """The default path within 5% of the fastest everywhere, or the rows where it is not."""
    rows = [
        _row("per SIMD path: a", "default path: avx2", avx2=10.0, portable=10.4),
        _row("per SIMD path: b", "default path: avx2", avx2=12.0, portable=10.0),
    ]
    goal = evaluate_goals(_result(rows))[-1]
    assert goal["met"] is False and goal["slower_in"] == ["b"]
    assert goal["value"] == 12.0 / 10.0
    table = format_table(_result(rows))
    assert "x1.20 the fastest" in table and "slower in: b" in table
