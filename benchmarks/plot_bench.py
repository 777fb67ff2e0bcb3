"""Turn a ``multifd-zero bench --json`` result into the docs' table and plot.

Usage::

    multifd-zero bench --json bench.json
    python benchmarks/plot_bench.py bench.json --out docs/_static

writes ``benchmark.txt`` (the table the command prints) and ``benchmark.png``
(ns per page of each contender, row by row, log scale). Needs matplotlib,
which the package itself does not depend on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from multifd_zero.tools.bench import format_table


def plot(result: dict, path: Path) -> None:
    """Draw one group of bars per benchmark row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [r for r in result["rows"] if "multifd_zero" in r["ns_per_page"]]
    contenders = ["multifd_zero", "numpy", "bytes ==", "read limit", "write limit"]
    colours = ["#1b6ca8", "#e07b39", "#7a7a7a", "#4caf50", "#8e44ad"]
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(rows) + 1.8))
    height = 0.8 / len(contenders)
    for k, (who, colour) in enumerate(zip(contenders, colours, strict=True)):
        ys, xs = [], []
        for i, row in enumerate(rows):
            if who in row["ns_per_page"]:
                ys.append(i + k * height)
                xs.append(row["ns_per_page"][who])
        ax.barh(ys, xs, height=height, color=colour, label=who)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(rows))])
    ax.set_yticklabels([r["name"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("ns per 4 KiB page (log scale; shorter is faster)")
    ax.set_title(f"multifd_zero {result['simd']} path on {result['cpu']} ({result['cpus']} CPUs)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """Read the JSON file, write the table and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/_static"))
    args = parser.parse_args()
    result = json.loads(args.json_file.read_text(encoding="utf-8"))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.txt").write_text(format_table(result) + "\n", encoding="utf-8")
    plot(result, args.out / "benchmark.png")
    print(f"wrote {args.out / 'benchmark.txt'} and {args.out / 'benchmark.png'}")


if __name__ == "__main__":
    main()
