"""The one exception type of actreg."""

from __future__ import annotations

import math
from typing import Any


class ActregError(ValueError):
    """Raised when actreg is given input it cannot use.

    The message says what was wrong and how to fix it. It subclasses
    :class:`ValueError`, so ``except ValueError`` catches it too.
    """


def finite_number(value: Any, name: str, example: str) -> float:
    """``value`` as a float if it is a finite real number (a one-element tensor too), else an
    :class:`ActregError` naming ``name`` and an ``example``; its range is the caller's to
    check (a bound such as ">= 0" here would contradict the caller's stricter one).

    Example:
        >>> finite_number(3, "target", "e.g. 0.9")
        3.0
    """
    if hasattr(value, "numel") and hasattr(value, "item") and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ActregError(f"{name} must be a finite number ({example}), got {value!r}")
    return float(value)
