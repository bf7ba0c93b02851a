"""The one exception type of actreg."""

from __future__ import annotations


class ActregError(ValueError):
    """Raised when actreg is given input it cannot use.

    The message says what was wrong and how to fix it. It subclasses
    :class:`ValueError`, so ``except ValueError`` catches it too.
    """
