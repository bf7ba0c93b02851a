"""The coefficient grid: a coarse pass over decades, then a finer pass inside the best one.

``refine=3`` puts 3 log-spaced points strictly inside the decade between the best coarse
value and its better neighbour; ``refine=(2, 5)`` puts ``2 * lo`` and ``5 * lo`` there
(1-2-5 steps). A target search (``--target 0.8,0.9,0.95``) runs the targets it is given,
one trial each (:func:`target_grid`), and is not refined. Pure functions of numbers: no
experiment, no storage.

Example:
    >>> coarse_grid("1e-1,1e-2,1e-3")
    (0.1, 0.01, 0.001)
    >>> refine_grid((0.1, 0.01, 0.001), [0.5, 0.2, 0.3], (2, 5))  # best 0.01, then 0.001
    [0.002, 0.005]
    >>> refine_grid((0.1, 0.01, 0.001), [0.5, 0.2, 0.3], 1)
    [0.00316228]
    >>> target_grid("0.95,0.8,0.9")
    (0.8, 0.9, 0.95)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from actreg._errors import ActregError

__all__ = ["check_refine", "coarse_grid", "refine_grid", "target_grid"]


def _sig(value: float) -> float:
    return float(f"{value:.6g}")


def coarse_grid(coefs: str | Sequence[float]) -> tuple[float, ...]:
    """Parse and check the coarse grid: positive, finite, duplicates dropped.

    Raises:
        ActregError: for an empty grid or a value that is not a positive number.
    """
    items = [c for c in coefs.replace(" ", "").split(",") if c] if isinstance(coefs, str) else coefs
    grid: list[float] = []
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError):
            msg = f"coefficient {item!r} is not a number; e.g. --coef 1e-2,1e-3"
            raise ActregError(msg) from None
        if not (math.isfinite(value) and value > 0):
            raise ActregError(f"coefficients must be positive and finite, got {item!r}")
        if _sig(value) not in grid:
            grid.append(_sig(value))
    if not grid:
        raise ActregError("the coefficient grid is empty; e.g. --coef 1e-1,1e-2,1e-3,1e-4")
    return tuple(grid)


def target_grid(targets: str | Sequence[float]) -> tuple[float, ...]:
    """Parse and check the zero-fraction targets of a target search: each strictly between
    0 and 1, duplicates dropped, ascending.

    Raises:
        ActregError: for an empty grid or a value that is not a zero fraction.
    """
    items = (
        [t for t in targets.replace(" ", "").split(",") if t]
        if isinstance(targets, str)
        else targets
    )
    grid: set[float] = set()
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise ActregError(f"target {item!r} is not a number; e.g. --target 0.8,0.9") from None
        if not 0 < value < 1:
            raise ActregError(
                f"a target is a zero fraction strictly between 0 and 1 (e.g. 0.9), got {item!r}"
            )
        grid.add(_sig(value))
    if not grid:
        raise ActregError("the target grid is empty; e.g. --target 0.8,0.9,0.95")
    return tuple(sorted(grid))


def check_refine(refine: int | Sequence[float]) -> int | tuple[float, ...]:
    """``refine`` as an int >= 0 (log-spaced points) or a tuple of mantissas in [1, 10)."""
    if isinstance(refine, bool):
        raise ActregError(f"refine must be a count or mantissas such as 1,2,5, got {refine!r}")
    if isinstance(refine, int):
        if refine < 0:
            raise ActregError(f"refine must be >= 0, got {refine}")
        return refine
    steps = tuple(float(m) for m in refine)
    if not steps or any(not 1 <= m < 10 for m in steps):
        raise ActregError(f"refine mantissas must lie in [1, 10), e.g. 1,2,5; got {refine!r}")
    return steps


def refine_grid(
    coarse: Sequence[float], values: Sequence[float | None], refine: int | Sequence[float]
) -> list[float]:
    """New points inside the decade between the best coarse value and its better neighbour.

    Args:
        coarse: the coarse coefficients.
        values: their objective values (``None`` for a failed trial); lower is better.
        refine: a count of log-spaced points, or mantissas (``(1, 2, 5)``) of that decade.

    Returns:
        The new coefficients (not already in ``coarse``), ascending.
    """
    refine = check_refine(refine)
    done = sorted((c, v) for c, v in zip(coarse, values, strict=True) if v is not None)
    if not done or refine == 0:
        return []
    best = min(range(len(done)), key=lambda i: done[i][1])
    c_best = done[best][0]
    below = done[best - 1] if best > 0 else None
    above = done[best + 1] if best + 1 < len(done) else None
    if above is not None and (below is None or above[1] <= below[1]):
        lo, hi = c_best, min(above[0], 10 * c_best)
    elif below is not None:
        lo, hi = max(below[0], c_best / 10), c_best
    else:
        lo, hi = c_best, 10 * c_best
    if isinstance(refine, int):
        ratio = math.log10(hi / lo)
        points = [lo * 10 ** (ratio * k / (refine + 1)) for k in range(1, refine + 1)]
    else:
        decade = 10 ** math.floor(math.log10(lo) + 1e-9)
        points = [m * decade * 10**e for e in (0, 1) for m in refine]
        points = [p for p in points if lo * (1 + 1e-9) < p < hi * (1 - 1e-9)]
    have = set(coarse)
    return sorted({_sig(p) for p in points} - have)
