"""Markdown for an ablation's results: the table, the differences beyond the spread, the grid."""

from __future__ import annotations

from typing import Any

from actreg.lab.experiments.ablations._stats import fmt_mean_std

__all__ = ["comparisons_markdown", "grid_markdown", "table_markdown"]


def table_markdown(results: dict[str, Any], digits: int = 3) -> str:
    """Mean ± std over seeds, one row per variant, one column per metric.

    Example:
        >>> r = {"metrics": ["acc"], "aggregate": {"a": {"acc": {"mean": 0.9, "std": 0.01}}}}
        >>> print(table_markdown(r))
        | variant | acc |
        |---|---|
        | a | 0.900 ± 0.010 |
    """
    metrics = results["metrics"]
    lines = ["| variant | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, cells in results["aggregate"].items():
        values = [fmt_mean_std(cells[m]["mean"], cells[m]["std"], digits) for m in metrics]
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def comparisons_markdown(results: dict[str, Any], digits: int = 3) -> str:
    """The compared pairs whose difference exceeds the spread, grouped by metric.

    Each entry reads ``b - a = diff (2 x pooled std = ..., Welch p = ...)``.
    """
    rows = results["comparisons"]
    n_pairs = len({(r["a"], r["b"]) for r in rows})
    lines = [f"{n_pairs} pairs compared; differences beyond the spread:", ""]
    for metric in results["metrics"]:
        hits = [r for r in rows if r["metric"] == metric and r["exceeds"]]
        if not hits:
            lines.append(f"- {metric}: none")
            continue
        parts = []
        for r in hits:
            p = "–" if r["welch_p"] is None else f"{r['welch_p']:.2g}"
            parts.append(
                f"{r['b']} − {r['a']} = {r['diff']:+.{digits}f} "
                f"(2σ = {2 * r['pooled_std']:.{digits}f}, p = {p})"
            )
        lines.append(f"- {metric}: " + "; ".join(parts))
    return "\n".join(lines)


def grid_markdown(results: dict[str, Any], digits: int = 3) -> str:
    """The which-norm coefficient grid (one seed), the chosen rows in bold."""
    rows = results["grid"]
    keys = ["nmse", "zero_fraction", "near_zero", "dead_fraction", "probe_acc"]
    lines = ["| penalty | coef | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for r in rows:
        cells = [f"{r['coef']:g}"] + [f"{r[k]:.{digits}f}" for k in keys]
        if r.get("chosen"):
            cells = [f"**{c}**" for c in cells]
        lines.append(f"| {r['penalty']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
