"""Pictures of an ablation: mean ± std over seeds per variant, one panel per metric.

Drawn on matplotlib's Agg canvas without ``pyplot`` (like :mod:`actreg.lab.plots`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["grid_plot", "metric_panels"]


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def metric_panels(
    agg: Mapping[str, Mapping[str, Mapping[str, Any]]],
    metrics: Sequence[str],
    path: Path,
    title: str,
) -> Path:
    """One panel per metric: a dot per seed and the mean with a ±1 std bar, per variant."""
    names = list(agg)
    fig = _figure(2.6 * len(metrics), 3.2 + 0.06 * max(len(n) for n in names))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        for i, name in enumerate(names):
            cell = agg[name][metric]
            if cell["mean"] is None:
                continue
            ax.plot([i] * len(cell["values"]), cell["values"], ".", color="0.6", ms=4)
            ax.errorbar(i, cell["mean"], yerr=cell["std"], fmt="o", color="tab:blue", capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_title(metric, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=80)
    return path


def grid_plot(rows: Sequence[Mapping[str, Any]], path: Path, min_zeros: float) -> Path:
    """which-norm grid: probe accuracy against near-zero fraction, a line per penalty."""
    fig = _figure(5.5, 4.0)
    ax = fig.subplots()
    penalties = list(dict.fromkeys(r["penalty"] for r in rows))
    for pen in penalties:
        sub = [r for r in rows if r["penalty"] == pen]
        xs = [r["near_zero"] for r in sub]
        ys = [r["probe_acc"] for r in sub]
        (line,) = ax.plot(xs, ys, "o-", label=pen, ms=4)
        for r in sub:
            ax.annotate(f"{r['coef']:g}", (r["near_zero"], r["probe_acc"]), fontsize=6)
            if r.get("chosen"):
                ax.plot(r["near_zero"], r["probe_acc"], "*", ms=14, color=line.get_color())
    ax.axvline(min_zeros, color="0.5", ls="--", lw=1)
    ax.set_xlabel("near-zero fraction of the code (test)")
    ax.set_ylabel("linear probe accuracy (test)")
    ax.set_title("coefficient grid, seed 0 (star: chosen)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=80)
    return path
