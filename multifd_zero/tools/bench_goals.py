"""The performance goals, read off a benchmark result: each a ratio measured in the same run.

A goal names the row it is read from, the two contenders it compares (or a
plain figure), and its bound. ``evaluate_goals`` turns a result of
:func:`multifd_zero.tools.bench.run_benchmarks` into one entry per goal, with
the measured value and whether the bound holds; ``format_goals`` prints them.
A goal whose row is missing (a smaller run) is reported as not measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["GOALS", "Goal", "evaluate_goals", "format_goals"]


@dataclass(frozen=True)
class Goal:
    """``row``'s ``who`` divided by its ``base`` (or ``who`` alone), against ``bound``."""

    text: str
    row: str
    who: str
    base: str | None
    bound: float
    at_least: bool = False
    limit: str | None = None


GOALS = (
    Goal(
        "out of cache, 50% zero / 50% random: partition time / read limit",
        "region, 50% zero random mix",
        "partition",
        "read limit",
        0.70,
        limit="zero pages only",
    ),
    Goal(
        "out of cache, all zero: partition time / read limit",
        "region, 100% zero",
        "partition",
        "read limit",
        1.05,
    ),
    Goal(
        "128-page batch in L2, all zero: partition time / L2 read limit",
        "batch partition, 100% zero pages",
        "multifd_zero",
        "read limit",
        1.20,
    ),
    Goal(
        "128-page batch in L2, all random: ns a page, one call per batch",
        "batch partition, all pages random",
        "multifd_zero",
        None,
        1.5,
        limit="heads floor",
    ),
    Goal(
        "128-page batch in L2, all random: ns a page, 64 batches a call",
        "batch partition, all pages random",
        "64 batches a call",
        None,
        1.5,
        limit="heads floor",
    ),
    *(
        Goal(
            f"one page, one call, {label}: is_zero time / page == ZERO",
            f"one 4 KiB page, one Python call: {label}",
            "multifd_zero",
            "bytes ==",
            1.0,
        )
        for label in ("zero", "first byte non-zero", "non-zero only at byte 3800")
    ),
    Goal(
        "2 threads, one 128-page batch a call: speed-up over one thread",
        "in L2, 1 vs 2 threads (partition, 100% zero, one batch a call)",
        "1 thread",
        "2 threads",
        1.8,
        at_least=True,
        limit="GIL ceiling",
    ),
    Goal(
        "(the same machine: two threads of the read-limit loop in L2, speed-up)",
        "L2 ceiling, 1 vs 2 threads",
        "1 thread",
        "2 threads",
        1.8,
        at_least=True,
    ),
)


def _find(rows: list[dict[str, Any]], part: str) -> dict[str, Any] | None:
    return next((r for r in rows if part in r["name"]), None)


def evaluate_goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per goal: its text, the measured value, the bound and whether it is met."""
    rows = result["rows"]
    out: list[dict[str, Any]] = []
    for goal in GOALS:
        row = _find(rows, goal.row)
        entry: dict[str, Any] = {
            "goal": goal.text,
            "bound": goal.bound,
            "at_least": goal.at_least,
            "value": None,
            "met": None,
        }
        ns = row["ns_per_page"] if row else {}
        if goal.who in ns and (goal.base is None or goal.base in ns):
            value = ns[goal.who] / ns[goal.base] if goal.base else ns[goal.who]
            entry["value"] = value
            entry["ratio"] = goal.base is not None
            entry["met"] = value >= goal.bound if goal.at_least else value <= goal.bound
            if goal.limit and goal.limit in ns:
                entry["limit"] = ns[goal.limit] / ns[goal.base] if goal.base else ns[goal.limit]
            elif goal.limit and (ceiling := _find(rows, goal.limit)):
                top = ceiling["ns_per_page"]
                entry["limit"] = top[goal.who] / top[goal.base] if goal.base else top[goal.who]
        out.append(entry)
    out.append(_default_path_goal(rows))
    return out


def _default_path_goal(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The default SIMD path against the fastest one, in every per-path row (within 5%)."""
    worst = 0.0
    counted = 0
    slower: list[str] = []
    for row in rows:
        if not row["name"].startswith("per SIMD path"):
            continue
        default = row["note"].removeprefix("default path: ")
        ns = row["ns_per_page"]
        if default not in ns:
            continue
        ratio = ns[default] / min(ns.values())
        counted += 1
        worst = max(worst, ratio)
        if ratio > 1.05:
            slower.append(row["name"].removeprefix("per SIMD path: "))
    return {
        "goal": "the default SIMD path is the fastest (within 5%) in every per-path row: "
        "worst ratio to the fastest",
        "bound": 1.05,
        "at_least": False,
        "value": worst if counted else None,
        "met": (not slower) if counted else None,
        "slower_in": slower,
    }


def format_goals(goals: list[dict[str, Any]]) -> str:
    """The goals as text, one line each: met or not, the value and the bound."""
    lines = ["Goals (ratios measured in this run):"]
    for g in goals:
        if g["value"] is None:
            lines.append(f"  [not measured] {g['goal']}")
            continue
        sign = ">=" if g["at_least"] else "<="
        status = "met" if g["met"] else "NOT MET"
        line = f"  [{status}] {g['goal']}: {g['value']:.2f} (goal {sign} {g['bound']:.2f})"
        if "limit" in g:
            kind = "ceiling" if g["at_least"] else "floor"
            unit = "" if g.get("ratio", True) else " ns a page"
            line += f"; measured {kind} here: {g['limit']:.2f}{unit}"
        if g.get("slower_in"):
            line += "; slower in: " + ", ".join(g["slower_in"])
        lines.append(line)
    return "\n".join(lines)
