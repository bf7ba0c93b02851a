"""Dataclass configs: ``key=value`` overrides typed by the fields, and JSON round trips."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
import types
import typing
from collections.abc import Iterable
from typing import Any, TypeVar

from actreg._errors import ActregError
from actreg.lab._checks import kind

C = TypeVar("C")

__all__ = ["apply_overrides", "describe", "from_dict", "parse_value", "to_dict"]


def _convert(text: str, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null", "") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(text, inner[0], key)
    if origin is tuple:
        item = args[0] if args else str
        parts = [p for p in text.replace(" ", "").split(",") if p]
        return tuple(_convert(p, item, key) for p in parts)
    if hint is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ActregError(f"{key} expects true or false, got {text!r}")
    if hint in (int, float):
        try:
            number = float(text)
        except ValueError:
            kind = "a whole number" if hint is int else "a number"
            raise ActregError(f"{key} expects {kind}, got {text!r}") from None
        if hint is float:
            return number
        if not number.is_integer():  # 2.9e0 is refused, not cut to 2; 1e-1 is not 0
            near = max(round(number), 1) if math.isfinite(number) else 1
            raise ActregError(
                f"{key} expects a whole number, got {text!r} (= {number:g}); e.g. {key}={near}"
            )
        return int(number)
    return text


def parse_value(cls: type, key: str, text: str) -> Any:
    """Convert ``text`` to the type of field ``key`` of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return _convert(text, hints[key], key)


def apply_overrides(config: C, overrides: Iterable[str]) -> C:
    """Return a copy of dataclass ``config`` with ``key=value`` strings applied.

    Raises:
        ActregError: for a malformed override or an unknown key (listing the valid keys).

    Example:
        >>> from actreg.lab.train import TrainConfig
        >>> apply_overrides(TrainConfig(), ["epochs=3", "lr=1e-2"]).epochs
        3
    """
    names = [f.name for f in dataclasses.fields(config)]  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ActregError(f"expected key=value, got {item!r} (e.g. --set epochs=5)")
        key, text = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if not key:
            raise ActregError(f"expected key=value, got {item!r} (no key; e.g. --set epochs=5)")
        if key not in names:
            close = difflib.get_close_matches(key, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ActregError(
                f"unknown key {key!r} for {type(config).__name__}{hint}; "
                f"valid keys: {', '.join(names)}"
            )
        changes[key] = parse_value(type(config), key, text.strip())
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a dataclass (tuples become lists)."""
    return dataclasses.asdict(config)


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Rebuild a dataclass from :func:`to_dict` output (unknown keys are an error)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise ActregError(f"unknown keys for {cls.__name__}: {sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    values = {
        k: tuple(v) if isinstance(v, list) and typing.get_origin(kind(hints[k])[0]) is tuple else v
        for k, v in data.items()
    }  # a ``tuple[X, ...] | None`` field too
    return cls(**values)


# A field, its default, then its comment; a type checker's "# type: ignore[...]" before the
# comment is skipped.
_FIELD_LINE = re.compile(
    r"^\s+(\w+)\s*:\s*[^=#]+?(?:=\s*[^#]*)?#\s*(?:type:\s*ignore\[[^\]]*\]\s*#\s*)?(.+?)\s*$"
)


def _comments(cls: type) -> dict[str, str]:
    """Each field's trailing ``# comment`` in the class bodies (the subclass's wins)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):  # no source (e.g. a frozen build): no comments
            continue
        for line in lines:
            match = _FIELD_LINE.match(line)
            if match:
                out[match.group(1)] = match.group(2)
    return out


def describe(cls: type) -> list[dict[str, str]]:
    """Every field of config dataclass ``cls``: name, type, default and meaning.

    The meaning is the field's trailing comment in the class body, the convention of every
    config here (one comment per setting).

    Example:
        >>> from actreg.lab.train import TrainConfig
        >>> row = describe(TrainConfig)[0]
        >>> row["key"], row["type"], row["default"]
        ('epochs', 'int', '10')
    """
    hints = typing.get_type_hints(cls)
    comments = _comments(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        if isinstance(default, tuple):
            default = ",".join(str(v) for v in default) or "(empty)"
        hint = hints[f.name]
        plain = typing.get_origin(hint) is None and hasattr(hint, "__name__")
        type_name = hint.__name__ if plain else str(hint).replace("typing.", "")
        rows.append(
            {
                "key": f.name,
                "type": type_name,
                "default": str(default),
                "meaning": comments.get(f.name, ""),
            }
        )
    return rows
