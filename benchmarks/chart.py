"""The chart of ``docs/benchmarks.md``: per-call latency of every variant in
the caller, median and 99th percentile, one panel per broker (matplotlib,
in the ``bench`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .caller import VARIANTS

if TYPE_CHECKING:
    from .bench_log import LatencyResult

#: Markdown labels of the variants, without the backquotes.
LABELS = {variant: label.replace("`", "") for variant, label in VARIANTS.items()}


def draw(results: list[LatencyResult], path: Path, title: str) -> str | None:
    """Write the chart to ``path``; return why it was not drawn, or None."""
    if not results:
        return "no broker was measured"
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(reversed(VARIANTS))  # the first variant at the top
    figure, axes = plt.subplots(
        len(results), 1, figsize=(8, 1.2 + 2.1 * len(results)), squeeze=False, sharex=True
    )
    for axis, result in zip(axes[:, 0], results, strict=True):
        positions = range(len(variants))
        medians, p99s = [], []
        for variant in variants:
            summary = result.figures[variant].summary
            medians.append(summary.median if summary else 0.0)
            p99s.append(summary.p99 if summary else 0.0)
        axis.barh(positions, p99s, height=0.7, color="#c6dbef", label="99th percentile")
        axis.barh(positions, medians, height=0.7, color="#2171b5", label="median")
        for position, median, p99 in zip(positions, medians, p99s, strict=True):
            text, at = ("not available", 1.2) if not p99 else (f"{median:,.0f} / {p99:,.0f}", p99)
            axis.text(at * 1.15, position, text, va="center", fontsize=7, color="#444444")
        axis.set_yticks(list(positions), [LABELS[v] for v in variants], fontsize=8)
        axis.set_xscale("log")
        axis.set_xlim(1, max([*p99s, 100.0]) * 30)  # room for the labels
        axis.set_title(result.broker.label, fontsize=9, loc="left")
        axis.grid(axis="x", which="both", color="#eeeeee")
        axis.set_axisbelow(True)
    axes[-1, 0].set_xlabel(
        "µs per call in the caller (log scale); labels: median / 99th percentile", fontsize=8
    )
    axes[0, 0].legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.55, 1.0), ncol=2)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None
