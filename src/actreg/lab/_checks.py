"""Checks of config fields, shared by every config dataclass of the lab (and the two
checks of the experiments' settings that need more than a type: the sparsity targets,
and whether ``out_dir`` can hold run folders).

Each config's ``__post_init__`` calls them, so a bad setting is refused when the config is
built (``--set`` parsing included), before any data loads or any folder is made.

Design: one generic pass over the annotated types (:func:`check_fields`: the right type,
numbers finite and not negative, the counts and widths a config lists in its ``POSITIVE``
class attribute >= 1, strings not empty) plus a few named checks for what types cannot
say (:func:`check_choice`, :func:`check_fraction`, and each config's own rules). The
alternative, a hand-written check per field, is what let ``code=0`` and negative widths
through to a crash deep inside PyTorch: a new field is covered by the generic pass the day
it is added. A negative number is reported as negative, not with a bound such as ">= 0"
that a stricter rule of the field (``target_l0 > 0``) would contradict.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     epochs: int = 1
    >>> check_fields(C(epochs=2.5))
    Traceback (most recent call last):
    ...
    actreg._errors.ActregError: epochs must be a whole number, got 2.5 (float)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from actreg._errors import ActregError

__all__ = [
    "check_choice",
    "check_fields",
    "check_fraction",
    "check_out_dir",
    "check_targets",
    "kind",
    "suggest",
]


def suggest(value: str, choices: Iterable[str]) -> str:
    """`` (did you mean X?)`` for a close match among ``choices``, else ``""``."""
    close = difflib.get_close_matches(str(value), list(choices), n=2)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def kind(hint: Any) -> tuple[Any, bool]:
    """The type under ``X | None`` and whether None is allowed."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        inner = [a for a in args if a is not type(None)]
        return (inner[0] if len(inner) == 1 else hint), type(None) in args
    return hint, False


def _check_value(name: str, value: Any, hint: Any, positive: bool) -> None:
    if hint is bool:
        if not isinstance(value, bool):
            raise ActregError(f"{name} must be true or false, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ActregError(
                f"{name} must be a whole number, got {value!r} ({type(value).__name__})"
            )
        if positive and value < 1:
            raise ActregError(f"{name} must be >= 1, got {value!r}")
        if value < 0:
            raise ActregError(f"{name} must not be negative, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ActregError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
        if not math.isfinite(value):
            raise ActregError(f"{name} must be a finite number, got {value!r}")
        if value < 0:
            raise ActregError(f"{name} must not be negative, got {value!r}")
    elif hint is str:
        if not isinstance(value, str):
            raise ActregError(f"{name} must be a string, got {value!r} ({type(value).__name__})")
        if not value.strip():
            raise ActregError(f"{name} must not be empty")


def check_fields(config: Any) -> None:
    """Every field of dataclass ``config`` has its annotated type; numbers are finite and not
    negative (no setting of the lab is); strings are not empty; the fields named in the
    ``POSITIVE`` class attributes of its class and bases (counts, widths) are >= 1.

    ``X | None`` fields may be None; ``tuple[X, ...]`` fields are tuples of ``X``.

    Raises:
        ActregError: naming the first field that is wrong.
    """
    hints = typing.get_type_hints(type(config))
    positive = {n for k in type(config).__mro__ for n in vars(k).get("POSITIVE", ())}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        hint, optional = kind(hints[f.name])
        if value is None:
            if not optional:
                raise ActregError(f"{f.name} must be set, got None")
            continue
        if typing.get_origin(hint) is tuple:
            if not isinstance(value, tuple):
                raise ActregError(
                    f"{f.name} must be a comma-separated list, got {value!r}; e.g. {f.name}=1,2"
                )
            item = (typing.get_args(hint) or (str,))[0]
            for v in value:
                _check_value(f"{f.name} (each item)", v, item, f.name in positive)
        else:
            _check_value(f.name, value, hint, f.name in positive)


def check_fraction(
    config: Any, name: str, *, low_open: bool = False, high_open: bool = True
) -> None:
    """``name`` lies in [0, 1) (or (0, 1) with ``low_open``, [0, 1] without ``high_open``)."""
    value = getattr(config, name)
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (low_ok and high_ok):
        span = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ActregError(f"{name} must lie in {span}, got {value!r}")


def check_choice(name: str, value: str, choices: Iterable[str]) -> None:
    """``value`` is one of ``choices``; otherwise name the close matches and all choices."""
    options = list(choices)
    if value not in options:
        raise ActregError(
            f"unknown {name} {value!r}{suggest(value, options)}; use one of {', '.join(options)}"
        )


def check_out_dir(out_dir: str) -> None:
    """Refuse an ``out_dir`` that cannot hold run folders, before any data loads.

    The nearest existing folder on the way to ``out_dir`` must be a folder we may write in
    (a read-only file system counts as not writable). :func:`make_run_dir` still handles
    what changes in between (a full disk, a race).
    """
    path = Path(out_dir).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ActregError(
            f"out_dir {out_dir}: {existing} exists and is not a folder; choose another "
            "out_dir (--out PATH or --set out_dir=PATH)"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ActregError(
            f"out_dir {out_dir}: cannot write in {existing} (read-only or no permission); "
            "choose a writable out_dir (--out PATH or --set out_dir=PATH)"
        )


def check_targets(target_sparsity: float | None, target_l0: float | None) -> None:
    """The two target settings: at most one, each in its range."""
    for name, value in (("target_sparsity", target_sparsity), ("target_l0", target_l0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ActregError(f"{name} must be a number or none, got {value!r}")
    if target_sparsity is not None and target_l0 is not None:
        raise ActregError(
            "set target_sparsity (a zero fraction) or target_l0 (active units), not both"
        )
    if target_sparsity is not None and not 0 < target_sparsity < 1:
        raise ActregError(
            f"target_sparsity is a zero fraction strictly between 0 and 1 (e.g. 0.9), "
            f"got {target_sparsity!r}"
        )
    if target_l0 is not None and not target_l0 > 0:
        raise ActregError(f"target_l0 is a number of active units > 0, got {target_l0!r}")
