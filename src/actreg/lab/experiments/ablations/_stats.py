"""Mean ± std over seeds, and which differences are larger than the seed-to-seed spread.

The rule used by every ablation: two variants differ beyond the spread when
``|mean_a - mean_b| > 2 * pooled_std``, ``pooled_std = sqrt((std_a**2 + std_b**2) / 2)``
with sample standard deviations (``ddof=1``). A Welch t-test p-value (scipy) is reported
next to it as a second opinion; with three seeds it has little power, so the tables use
the 2-sigma rule.

Example:
    >>> mean_std([1.0, 2.0, 3.0])
    (2.0, 1.0)
    >>> exceeds_spread([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
    True
    >>> exceeds_spread([1.0, 1.5, 0.5], [1.4, 1.9, 0.9])
    False
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from actreg._errors import ActregError

__all__ = [
    "SPREAD_FACTOR",
    "aggregate",
    "all_pairs",
    "compare",
    "exceeds_spread",
    "fmt_mean_std",
    "mean_std",
    "pooled_std",
    "welch_p",
]

SPREAD_FACTOR = 2.0
"""A difference counts when it exceeds this many pooled standard deviations."""


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for a single value).

    Raises:
        ActregError: for an empty sequence.
    """
    if len(values) == 0:
        raise ActregError("mean_std needs at least one value")
    n = len(values)
    mean = math.fsum(values) / n
    if n == 1:
        return mean, 0.0
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var)


def pooled_std(std_a: float, std_b: float) -> float:
    """``sqrt((std_a**2 + std_b**2) / 2)``: the spread of two equally sized groups.

    Example:
        >>> round(pooled_std(3.0, 4.0) ** 2, 6)
        12.5
    """
    return math.sqrt((std_a**2 + std_b**2) / 2)


def exceeds_spread(a: Sequence[float], b: Sequence[float], factor: float = SPREAD_FACTOR) -> bool:
    """Whether ``|mean(a) - mean(b)| > factor * pooled_std`` (strictly).

    Identical constant groups never differ; two different constants always do.
    """
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    return abs(ma - mb) > factor * pooled_std(sa, sb)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided Welch t-test p-value (scipy), or None without scipy, < 2 values or no spread."""
    if len(a) < 2 or len(b) < 2:
        return None
    if mean_std(a)[1] == 0 and mean_std(b)[1] == 0:
        return None
    try:
        from scipy import stats
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        return None
    with warnings.catch_warnings():  # nearly identical groups: scipy warns, p is still usable
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_ind(list(a), list(b), equal_var=False).pvalue)
    return p if math.isfinite(p) else None


def fmt_mean_std(mean: float | None, std: float | None, digits: int = 4) -> str:
    """``"0.1234 ± 0.0012"``; ``"–"`` when missing.

    Example:
        >>> fmt_mean_std(0.5, 0.01, 3)
        '0.500 ± 0.010'
    """
    if mean is None or std is None:
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def aggregate(
    per_seed: Mapping[str, Sequence[Mapping[str, float | None]]], metrics: Sequence[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{variant: {metric: {mean, std, n, values}}}`` from per-seed metric dicts.

    Missing (None) values are skipped; a metric with no value gets mean and std None.

    Example:
        >>> agg = aggregate({"a": [{"acc": 0.9}, {"acc": 0.8}]}, ["acc"])
        >>> round(agg["a"]["acc"]["mean"], 6), agg["a"]["acc"]["n"]
        (0.85, 2)
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for variant, rows in per_seed.items():
        out[variant] = {}
        for metric in metrics:
            values = [float(v) for r in rows if (v := r.get(metric)) is not None]
            mean, std = mean_std(values) if values else (None, None)
            out[variant][metric] = {"mean": mean, "std": std, "n": len(values), "values": values}
    return out


def all_pairs(variants: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair of variants, in order.

    Example:
        >>> all_pairs(["a", "b", "c"])
        [('a', 'b'), ('a', 'c'), ('b', 'c')]
    """
    return list(itertools.combinations(variants, 2))


def compare(
    agg: Mapping[str, Mapping[str, Mapping[str, Any]]],
    pairs: Sequence[tuple[str, str]],
    metrics: Sequence[str],
    factor: float = SPREAD_FACTOR,
) -> list[dict[str, Any]]:
    """For each pair and metric: the difference ``b - a``, pooled std, the rule, Welch's p.

    Pairs where either side lacks values for a metric are skipped.
    """
    rows: list[dict[str, Any]] = []
    for a, b in pairs:
        for metric in metrics:
            va, vb = agg[a][metric]["values"], agg[b][metric]["values"]
            if not va or not vb:
                continue
            (ma, sa), (mb, sb) = mean_std(va), mean_std(vb)
            rows.append(
                {
                    "a": a,
                    "b": b,
                    "metric": metric,
                    "diff": mb - ma,
                    "pooled_std": pooled_std(sa, sb),
                    "exceeds": exceeds_spread(va, vb, factor),
                    "welch_p": welch_p(va, vb),
                }
            )
    return rows
